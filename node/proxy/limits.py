"""Bounds on what a client of a published port may make the proxy hold: pure, no sockets.

A published port takes connections from anyone who can reach the node, before any
authentication, and the proxy shares the daemon's event loop with its lease, its
gossip and its agent. So every byte and second a client can make it keep is bounded
(the defaults are those of HAProxy and Nomad-like deployments; docs/operations.md,
"Limits of the routing mesh"):

- `HttpLimits`: a request head at most `max_head` bytes (431), a URL at most `max_url`
  bytes (414), at most `max_headers` header lines (431), the whole head within
  `head_timeout` seconds of its first byte, or of the connection being accepted (408:
  slow loris), and no `body_timeout` seconds without a byte of a request body being
  read while the proxy reads it (408). Each answer closes the connection; no replica
  is contacted for a request refused this way.
- `ConnectionCap`: client connections open on all the listeners of a node together;
  one more is closed at once, and counted (`shoal_proxy_refused_total`).
- `tcp_idle_timeout` (L4): a connection with no byte either way for that long is closed.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
DEFAULT_MAX_CONNECTIONS = 10_000
"""Client connections open at once on a node's proxy listeners (two descriptors each:
the unit's LimitNOFILE=65536 leaves room)."""


@dataclass(frozen=True)
class HttpLimits:
    max_head: int = 64 * KiB  # bytes of a request head (request line and headers)
    max_url: int = 8 * KiB  # bytes of the request target
    max_headers: int = 100  # header lines in a request head (trailers included)
    head_timeout: float = 10.0  # s from a head's first byte (or the accept) to its end
    body_timeout: float = 60.0  # s without a byte of a request body being read


class ConnectionCap:
    """Client connections open on a node's proxy listeners, against one bound."""

    __slots__ = ("limit", "open", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no bound
        self.open = 0
        self.refused = 0

    def take(self) -> bool:
        """Count one more connection; False (counted as refused) when the bound is reached."""
        if self.limit and self.open >= self.limit:
            self.refused += 1
            return False
        self.open += 1
        return True

    def give(self) -> None:
        """A connection `take` counted is closed."""
        self.open -= 1


class LimitExceeded(Exception):
    """A request over one of the `HttpLimits`: answered with `status`, then closed."""

    def __init__(self, status: int, why: bytes) -> None:
        super().__init__(status, why)
        self.status = status
        self.why = why
