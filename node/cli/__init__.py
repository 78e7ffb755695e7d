"""The `shoal` command line: click commands over `node.client.ShoalClient`.

`main.py` holds the group, the global options and the error handling; one module per
command group renders through `output.py`. Commands get their client from the
`Settings` object that the group stores on the click context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from node.client import ShoalClient


@dataclass
class Settings:
    """The global options; the client is made on first use and closed with the context."""

    addr: str
    timeout: float
    _client: ShoalClient | None = field(default=None, repr=False)

    def client(self) -> ShoalClient:
        if self._client is None:
            self._client = ShoalClient(self.addr, self.timeout)
            click.get_current_context().call_on_close(self._client.close)
        return self._client


pass_settings = click.make_pass_decorator(Settings)
