"""The L4 engine: one listening port, each accepted connection spliced to a backend.

Per accepted connection: pick a backend from the `Balancer`, connect (a refused or
timed-out connect is reported to the balancer and retried on the next backend, as
`RetryPolicy` allows), then copy bytes both ways until both directions are done.

Why Protocols and not streams: each side is an `asyncio.Protocol` whose
`data_received` writes straight into the other side's transport, with no task, no
`await` and no copy in between; under uvloop that is most of the speed there is.

Guarantees:
- back-pressure: a side's write buffer is bounded (`HIGH_WATER`): above it the other
  side stops reading (`pause_reading`) until the buffer drains below `LOW_WATER`, so
  one connection holds at most about HIGH_WATER + one read in proxy memory per
  direction, however fast one end and slow the other;
- half-close: EOF from one side becomes `write_eof` on the other; the connection is
  closed when both sides have sent EOF, or when either side is gone (pending bytes are
  flushed first unless the side was reset);
- no backend (none in the set, or every attempt failed): the client connection is
  closed at once;
- bounds (`node.proxy.limits`): a connection with no byte either way for `idle_timeout`
  seconds is closed (checked every `idle_timeout / 4` s, at most every second); one over
  the node's `ConnectionCap` (shared by every listener) is closed at once, never connected;
- `close()` stops listening at once, lets in-flight connections finish for up to
  `drain_timeout` seconds, then aborts what is left; `drain(backends)` gives
  connections to backends that left the set the same grace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import cast

from node.proxy.balancer import Backend, Balancer, Failure, RetryPolicy
from node.proxy.limits import ConnectionCap
from node.proxy.listener import CONNECT_TIMEOUT, Deadline, Listener
from node.proxy.proxy_v2 import header

HIGH_WATER = 256 * 1024
"""Bytes buffered for one side before the other side stops reading (per direction)."""
LOW_WATER = 64 * 1024
"""Bytes under which reading resumes."""


class _Side(asyncio.Protocol):
    """One end of a connection; what it reads goes to `peer`'s transport."""

    __slots__ = ("conn", "lost", "peer", "pending", "transport")

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.peer: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # read before the peer was linked
        self.lost = False

    def itself(self) -> _Side:
        """The protocol factory for `create_connection`: this very protocol."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        if self is self.conn.client:
            t.pause_reading()  # until a backend is connected
            self.conn.proxy.accepted(self.conn)

    def data_received(self, data: bytes) -> None:
        self.conn.active = True
        peer = self.peer
        if peer is not None:
            peer.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        self.conn.eof(self)
        return True  # keep our write half open: the other direction may go on

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.is_closing():
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.side_lost(self, exc)


class _Conn:
    """A client connection and, once connected, its backend connection."""

    __slots__ = (
        "active", "backend", "client", "client_eof", "counted", "proxy", "seen", "server", "server_eof",
        "task",
    )  # fmt: skip

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.active = False  # a byte read either way since the last sweep
        self.seen = time.monotonic()  # when the sweep last saw it active
        self.counted = False  # in the node's ConnectionCap
        self.client = _Side(self)
        self.server: _Side | None = None
        self.backend: Backend | None = None
        self.task: asyncio.Task[None] | None = None
        self.client_eof = self.server_eof = False

    def link(self, server: _Side, backend: Backend) -> None:
        client_t, server_t = self.client.transport, server.transport
        assert client_t is not None and server_t is not None
        self.server, self.backend = server, backend
        self.client.peer, server.peer = server_t, client_t
        if self.proxy.proxy_v2:  # the PROXY v2 header first (node.proxy.proxy_v2)
            server_t.write(header(client_t.get_extra_info("peername"), client_t.get_extra_info("sockname")))
        for side, peer_t in ((self.client, server_t), (server, client_t)):
            if side.pending:
                peer_t.writelines(side.pending)
                side.pending.clear()
        if self.client.lost:
            server_t.close()
            return
        if self.client_eof:
            self._write_eof(server_t)
        else:
            client_t.resume_reading()

    def eof(self, side: _Side) -> None:
        if side is self.client:
            self.client_eof = True
        else:
            self.server_eof = True
        if self.client_eof and self.server_eof:
            # both directions are done: the close sends the FIN a write_eof would have sent,
            # so no shutdown() first (one system call less per connection, the costliest)
            self.abort(graceful=True)
        elif side.peer is not None:
            self._write_eof(side.peer)

    @staticmethod
    def _write_eof(t: asyncio.Transport) -> None:
        if t.is_closing():
            return
        if t.can_write_eof():
            t.write_eof()
        else:
            t.close()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if side is not self.client and side is not self.server:
            # an attempt never linked: a connect that the timeout cancelled after the
            # transport was made (uvloop closes it); the client waits for the next try
            return
        if exc is not None:
            self.proxy.stats.errors += 1
        if side is self.client and self.task is not None and not self.task.done():
            self.task.cancel()
        other = self.server if side is self.client else self.client
        if other is not None and not other.lost and other.transport is not None:
            if exc is None:
                other.transport.close()  # flushes what is buffered first
            else:
                other.transport.abort()
        if self.client.lost and (self.server is None or self.server.lost):
            self.proxy.finished(self)

    def abort(self, graceful: bool = False) -> None:
        for side in (self.client, self.server):
            if side is not None and side.transport is not None and not side.lost:
                side.transport.close() if graceful else side.transport.abort()


class TcpProxy(Listener[_Conn]):
    """Listen on `listen_host:listen_port` (0: any free port) and spread connections."""

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        balancer: Balancer,
        connect_timeout: float = CONNECT_TIMEOUT,
        drain_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        idle_timeout: float = 3600.0,
        cap: ConnectionCap | None = None,
    ) -> None:
        super().__init__(listen_host, listen_port, balancer, connect_timeout, drain_timeout, retry, cap)
        self.idle_timeout = idle_timeout
        self.proxy_v2 = False  # begin each backend connection with a PROXY v2 header

    def sweep_every(self) -> float:
        return max(0.05, min(1.0, self.idle_timeout / 4))

    def _sweep(self) -> None:
        """Close connections idle (no byte either way) for `idle_timeout` seconds."""
        now = time.monotonic()
        stale = now - self.idle_timeout
        for conn in list(self._open):
            if conn.active:
                conn.active = False
                conn.seen = now
            elif conn.seen < stale and conn.server is not None:
                self.stats.timeouts += 1
                conn.abort(graceful=True)

    def _accept(self) -> _Side:
        conn = _Conn(self)
        self._track(conn)
        self.stats.requests += 1
        return conn.client

    def accepted(self, conn: _Conn) -> None:
        if not self.cap.take():
            self.stats.refused += 1
            conn.abort(graceful=True)
            return
        conn.counted = True
        conn.task = self.loop.create_task(self._connect(conn))

    async def _connect(self, conn: _Conn) -> None:
        client_t = conn.client.transport
        assert client_t is not None
        loop = self.loop
        task = asyncio.current_task(loop)  # with the loop given: no getpid (Deadline)
        assert task is not None
        attempts = self.retry.start()
        if self.cold is not None and self.cold.now():  # issue 15: scaled to zero, a replica is coming
            await self.cold.wait()
        started = time.monotonic()
        while (backend := self.balancer.pick(time.monotonic(), attempts.tried)) is not None:
            server = _Side(conn)
            try:
                with Deadline(loop, task, self.connect_timeout):
                    await loop.create_connection(server.itself, backend.address, backend.port)
            except TimeoutError:
                failure = Failure.CONNECT_TIMEOUT
            except OSError:
                failure = Failure.CONNECT_REFUSED
            else:
                now = time.monotonic()
                self.balancer.report(backend, True, now)
                self.stats.latency.observe(now - started)
                if conn.client.lost or client_t.is_closing():  # the client left meanwhile
                    if server.transport is not None:
                        server.transport.close()
                    return
                conn.link(server, backend)
                return
            if self.balancer.report(backend, False, time.monotonic()):
                self.stats.ejections += 1
            if not attempts.failed(backend, failure):
                break
            self.stats.retries += 1
        self.stats.no_backend += 1
        self.stats.errors += 1
        client_t.close()

    def finished(self, conn: _Conn) -> None:
        if self._untrack(conn) and conn.counted:
            self.cap.give()

    def buffered(self) -> int:
        """Bytes held in the write buffers of every connection (for tests and metrics)."""
        total = 0
        for conn in self._open:
            for side in (conn.client, conn.server):
                if side is not None and side.transport is not None and not side.lost:
                    total += side.transport.get_write_buffer_size()
        return total

    def drain(self, backends: Iterable[Backend]) -> None:
        """Abort connections to `backends` (removed from the set) after `drain_timeout`."""
        gone = set(backends)
        doomed = [c for c in self._open if c.backend in gone]
        if doomed:
            self.loop.call_later(self.drain_timeout, _abort_all, doomed)

    def _abort_open(self) -> None:
        for conn in list(self._open):
            if conn.task is not None:
                conn.task.cancel()
            conn.abort()


def _abort_all(conns: list[_Conn]) -> None:
    for conn in conns:
        conn.abort()
