"""The `shoal` command line: click commands over `node.wire.client.ShoalClient`.

`main.py` holds the group, the global options and the error handling; one module per
command group renders through `output.py`. Commands get their client from the
`Settings` object that the group stores on the click context; its credentials (the
cluster CA, a client certificate and key, a token) come from the flags, the
environment and the context file (`node.security.context`).

This package's `__init__` and `main` import click only: grpc and the stubs load with the
command that needs them (`main.LazyGroup`), so `shoal --help` starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from node.security.context import Context
    from node.wire.client import ShoalClient


@dataclass
class Settings:
    """The global options; the client is made on first use and closed with the context."""

    addr: str | None
    timeout: float
    token: str | None = field(default=None, repr=False)
    ca: str | None = None  # paths
    cert: str | None = None
    key: str | None = None
    context_name: str | None = None
    _client: ShoalClient | None = field(default=None, repr=False)

    def credentials(self) -> Context:
        """The endpoint and credentials to call with (`CredentialsMissing` when incomplete)."""
        from node.security import context
        from node.wire.client import CredentialsMissing

        try:
            return context.resolve(
                name=self.context_name,
                endpoint=self.addr,
                token=self.token,
                ca=self.ca,
                cert=self.cert,
                key=self.key,
            )
        except context.MissingCredentials as exc:
            raise CredentialsMissing(str(exc)) from None

    def client(self) -> ShoalClient:
        if self._client is None:
            from node.wire.client import ShoalClient

            found = self.credentials()
            self._client = ShoalClient(found.endpoint, self.timeout, found.tls())
            click.get_current_context().call_on_close(self._client.close)
        return self._client


pass_settings = click.make_pass_decorator(Settings)
