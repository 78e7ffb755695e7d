"""One listening socket per served address and port, kept while the port is served.

A published port whose route changes (another container port, protocol, PROXY header)
gets a new engine, and the old one drains. Both engines accept from duplicates of the
same kernel socket (`take`), so the port never has a listener that closes while it is
still wanted: the old engine's server closes its own descriptor only. The socket itself
closes when the port is no longer served (`release`).

Why not a new socket beside the old one (SO_REUSEPORT) and close the old: Linux resets a
connection whose handshake completes on the closing listener while it closes (the ACK
is handled on another CPU, after the accept queue was handed over), and
`tcp_migrate_req` does not cover that moment. Measured on this machine (kernel 6.18,
2 cores), two threads connecting in a loop while the listener was replaced 1,000 times:
plain sockets 12 resets in 38,508 connections, uvloop servers 35 in 27,122; with one
kept socket and a duplicate per server, 0 in 25,192. The daemon's mesh test saw it as
one reset in 20,000 (`test_a_changed_route_refuses_no_connection`).

The socket keeps SO_REUSEPORT: proxy workers share a port with their siblings, and a
daemon whose workers are being stopped binds beside them (`node.proxy.workers`).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Protocol

BACKLOG = 1024
"""Connections the kernel queues before an engine accepts them."""


def listening(address: str, port: int, reuse_port: bool) -> socket.socket:
    """A non-blocking socket listening on `address:port` (an IPv6 one only for IPv6),
    with SO_REUSEADDR, as asyncio's `create_server` makes it. Raises OSError."""
    family, kind, proto, _, where = socket.getaddrinfo(
        address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(where)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Startable(Protocol):
    """An engine (`node.proxy.listener.Listener`), which this module must not import."""

    async def start(self, sock: socket.socket | None = None) -> None: ...


class PortSockets:
    """The listening sockets of one mesh (or worker), by (address, port)."""

    def __init__(self, reuse_port: bool = True) -> None:
        self.reuse_port = reuse_port
        self._held: dict[tuple[str, int], socket.socket] = {}

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def take(self, address: str, port: int) -> socket.socket:
        """A duplicate of the socket listening on `address:port`, bound now if none is
        held: an engine's own, which its server closes. Raises OSError (nothing held)."""
        held = self._held.get((address, port))
        if held is None:
            held = self._held[(address, port)] = listening(address, port, self.reuse_port)
        return held.dup()

    async def start(self, engine: Startable, address: str, port: int) -> None:
        """Start `engine` on a duplicate of `address:port`'s socket (`take`); the duplicate
        is closed when the start fails. Raises what `take` or the start raises."""
        sock = self.take(address, port)
        try:
            await engine.start(sock)
        except BaseException:
            sock.close()  # the engine did not take it
            raise

    def release(self, address: str, port: int) -> None:
        """`address:port` is no longer served: its socket closes (what it had queued and
        no engine took is reset, as when any listener closes)."""
        held = self._held.pop((address, port), None)
        if held is not None:
            with contextlib.suppress(OSError):
                held.close()

    def keep_only(self, keys: set[tuple[str, int]]) -> None:
        """Release every socket but those of `keys`."""
        for key in [k for k in self._held if k not in keys]:
            self.release(*key)

    def close(self) -> None:
        self.keep_only(set())
