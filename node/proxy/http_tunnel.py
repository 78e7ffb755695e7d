"""An upgraded connection of the L7 engine: after a replica answered 101 Switching
Protocols (WebSocket, say), the client connection and that backend connection are a
byte tunnel both ways, with no more HTTP parsing.

`Tunnel.open` swaps both transports' protocols (`transport.set_protocol`) to its two
`_Side`s, so the HTTP protocols (`node.proxy.http_conn._Client`,
`node.proxy.http_upstream._Upstream`) carry no test for it on their hot path. Bytes are
written into the other side's transport as they are read; above `HIGH_WATER` bytes in
one write buffer the other side stops reading until it is under `LOW_WATER`.

Ends:
- EOF from one side is passed on (`write_eof`, a half-close), the other direction goes
  on; once both sides sent EOF, both are closed;
- one side closing (or failing) closes the other, after what is buffered for it;
- no byte either way for `idle_timeout` s: both closed (checked by the engine's sweep);
- `drain(limit)`: its replica left the set; the tunnel lives `limit` s more, then both
  are aborted; `stop()` aborts at once (the engine's drain time is over).

The backend connection is never returned to the pool. When the tunnel ends the engine
is told (`Engine.finished`) through the client connection it was, which stays tracked
by the engine (and counted against the node's connection cap) for the tunnel's life.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from node.proxy.balancer import Backend
from node.proxy.stats import ProxyStats

_now = time.monotonic


class _Side(asyncio.Protocol):
    """One connection of a tunnel: what it reads goes to the other one."""

    __slots__ = ("eof", "lost", "paused", "peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: _Side = self  # set by Tunnel
        self.eof = self.lost = self.paused = False

    def data_received(self, data: bytes) -> None:
        self.tunnel.last = _now()
        peer = self.peer.transport
        if not peer.is_closing():
            peer.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer.eof:
            self.tunnel.close()
            return False
        if not peer.transport.is_closing() and peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True  # keep our write side: the other direction goes on
        self.tunnel.close()
        return False

    def pause_writing(self) -> None:
        peer = self.peer
        if not peer.paused and not peer.transport.is_closing():
            peer.paused = True
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer.paused and not peer.transport.is_closing():
            peer.paused = False
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        peer = self.peer
        if not peer.lost:
            if exc is None:
                peer.transport.close()  # after what is buffered for it
            else:
                peer.transport.abort()
        else:
            self.tunnel.ended()


class Tunnel:
    """A client connection and a backend connection joined after a 101."""

    __slots__ = ("backend", "client", "done", "doomed", "last", "stats", "upstream")

    def __init__(self, backend: Backend, stats: ProxyStats, done: Callable[[], None]) -> None:
        self.backend = backend
        self.stats = stats
        self.done = done  # called once, when both connections are closed
        self.last = _now()  # a byte read either way
        self.doomed: asyncio.TimerHandle | None = None
        self.client: _Side | None = None
        self.upstream: _Side | None = None

    def open(
        self, client: asyncio.Transport, upstream: asyncio.Transport, to_client: bytes, to_upstream: bytes
    ) -> None:
        """Join the transports; `to_client`, `to_upstream`: bytes read past the heads,
        written first. Both transports should be reading (the caller resumes them)."""
        c = self.client = _Side(self, client)
        u = self.upstream = _Side(self, upstream)
        c.peer, u.peer = u, c
        client.set_protocol(c)
        upstream.set_protocol(u)
        self.stats.upgrades += 1
        self.stats.tunnels += 1
        if to_client:
            client.write(to_client)
        if to_upstream:
            upstream.write(to_upstream)
        # the write buffers may already be over HIGH_WATER (bytes written before the swap)
        for side in (c, u):
            if side.transport.get_write_buffer_size() > side.transport.get_write_buffer_limits()[1]:
                side.pause_writing()

    def buffered(self) -> int:
        return sum(
            s.transport.get_write_buffer_size()
            for s in (self.client, self.upstream)
            if s is not None and not s.transport.is_closing()
        )

    def sweep(self, idle_before: float) -> None:
        if self.last < idle_before:
            self.stats.timeouts += 1
            self.close()

    def drain(self, loop: asyncio.AbstractEventLoop, limit: float) -> None:
        """Its replica left the set: abort the tunnel in `limit` s if still open."""
        if self.doomed is None:
            self.doomed = loop.call_later(limit, self.stop)

    def close(self) -> None:
        """Close both (after what is buffered)."""
        for side in (self.client, self.upstream):
            if side is not None and not side.transport.is_closing():
                side.transport.close()

    def stop(self) -> None:
        """Abort both now."""
        for side in (self.client, self.upstream):
            if side is not None:
                side.transport.abort()

    def ended(self) -> None:
        if self.doomed is not None:
            self.doomed.cancel()
            self.doomed = None
        self.stats.tunnels -= 1
        self.client = self.upstream = None  # no cycle left behind
        self.done()
