"""The L7 engine: one listening port, each HTTP/1.1 request sent to the next backend.

Per request read on a client connection (keep-alive or not): pick a backend from the
`Balancer`, take an idle connection to it from the pool or open one, send the rebuilt
request, stream the response back, return the backend connection to the pool. So a
client holding one keep-alive connection is still spread over every replica.

Parsing is llhttp's (`httptools`); the protocols are in `node.proxy.http_conn`. As in
the L4 engine each side is an `asyncio.Protocol` whose callbacks write into the other
side's transport: no task and no timer per request (a task only to open a backend
connection). Writes are queued while the reads of one loop iteration are handled and
made right after them, one per read.

Guarantees:
- round robin per request, whatever the client connection: `balancer.pick` for each;
  every failure is reported to the balancer (a failed connect, a close before the
  response head, a timeout) and so is the first success after one (a success on a
  record without failures changes nothing: the proxy is its balancer's only user);
- keep-alive both ways. Backend connections are pooled per backend (at most
  `POOL_SIZE` idle each, the last used first, closed after `POOL_IDLE` s idle); a
  pooled connection the backend had closed is not an error: a request it failed before
  any response byte is sent again on a new connection to the same backend if it is
  idempotent or none of its body was sent yet;
- headers: hop-by-hop ones (Connection and the headers it names, Keep-Alive,
  Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade) are not forwarded;
  `X-Forwarded-For` gets the client address appended, `X-Forwarded-Proto` is set to
  `scheme`. A body keeps its Content-Length, or goes chunked (re-encoded) to a peer
  that stays connected; a response read until the backend closes is chunked to an
  HTTP/1.1 client, so its connection stays open. Trailers are dropped. No Upgrade (a
  request asking for one is forwarded as a plain request) and no CONNECT (400);
- bodies are streamed, never held whole: above `HIGH_WATER` bytes in one transport's
  write buffer the other side stops reading until it is under `LOW_WATER`. A request
  body read before its backend connection is ready is held (one read), then reading
  stops; pipelined requests are served one after the other, reading paused meanwhile;
- retries (`RetryPolicy`): a refused or timed-out connect goes to the next backend; an
  idempotent request (GET, HEAD) whose backend closed without answering goes once more
  to another; only a request whose body is at most `REPLAY_LIMIT` bytes is sent again;
- errors of the proxy's own, with a one-line text body naming the service: 503 at
  once when no backend is left to try (none in the set, or every connect failed), 502
  when a backend failed to answer, 504 when it sent no response head within
  `response_timeout` seconds of the request being sent whole (checked every `SWEEP` s);
  400, then close, for a malformed request (unreadable bytes after pipelined requests
  read whole only close the connection once those are answered). A failure after the
  response head was forwarded can only cut the client connection;
- `Connection: close`, and HTTP/1.0 unless it asks for keep-alive, close the client
  connection after the response (`Connection: close` is then sent); nothing the client
  sent after such a request is served;
- a client connection with no request being served for `CLIENT_IDLE` seconds (idle
  keep-alive, or a head coming too slowly) is closed;
- hostile input is bounded (`node.proxy.limits.HttpLimits`, checked as bytes arrive,
  timeouts every `SWEEP` s): a head over `max_head` bytes or `max_headers` lines gets
  431, a URL over `max_url` bytes 414, a head not whole `head_timeout` s after its first
  byte (or after the accept) 408, a request body with no byte for `body_timeout` s 408;
  each closes the connection, and no replica is contacted for a refused head. A
  connection over the node's `ConnectionCap` (shared by every listener) is closed at once;
- `close()` stops listening, closes idle client connections at once, lets requests in
  flight finish for up to `drain_timeout` seconds, then aborts what is left;
  `drain(backends)` gives requests to backends that left the set the same grace.

Not done: HTTP/2; WebSocket; bounds on response heads (replicas are the service's own).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import cast

from node.proxy.balancer import Backend, Balancer, RetryPolicy
from node.proxy.http_conn import (
    CLIENT_IDLE,
    HIGH_WATER,
    LOW_WATER,
    POOL_IDLE,
    POOL_SIZE,
    REPLAY_LIMIT,
    _Client,
    _now,
    _Upstream,
)
from node.proxy.limits import DEFAULT_MAX_CONNECTIONS, ConnectionCap, HttpLimits
from node.proxy.stats import ProxyStats

__all__ = ["CLIENT_IDLE", "HIGH_WATER", "LOW_WATER", "POOL_IDLE", "POOL_SIZE", "REPLAY_LIMIT", "HttpProxy"]

SWEEP = 0.25
"""Seconds between checks of response timeouts and idle pooled connections."""


class HttpProxy:
    """Listen on `listen_host:listen_port` (0: any free port) and spread requests."""

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        balancer: Balancer,
        service: str = "",
        connect_timeout: float = 1.0,
        drain_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        response_timeout: float = 60.0,
        scheme: str = "http",
        limits: HttpLimits | None = None,
        cap: ConnectionCap | None = None,
    ) -> None:
        self.listen_host, self.listen_port = listen_host, listen_port
        self.balancer = balancer
        self.service = service
        self.connect_timeout = connect_timeout
        self.drain_timeout = drain_timeout
        self.retry = retry or RetryPolicy()
        self.response_timeout = response_timeout
        self.stats = ProxyStats()
        self.limits = limits or HttpLimits()
        self.max_items = 1 + 4 * self.limits.max_headers  # of a head list (node.proxy.heads)
        self.cap = cap or ConnectionCap(DEFAULT_MAX_CONNECTIONS)
        self.proto_line = b"X-Forwarded-Proto: " + scheme.encode("ascii") + b"\r\n"
        name = f'service "{service}"'.encode()
        self.msg_503 = b"no healthy replica of " + name + b"\n"
        self.msg_502 = b"bad gateway: a replica of " + name + b" failed to answer\n"
        self.msg_504 = b"gateway timeout: a replica of " + name + b" did not answer in time\n"
        self._loop = cast(asyncio.AbstractEventLoop, None)  # set by start()
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()
        self._pool: dict[str, list[_Upstream]] = {}  # by backend key, most recently used last
        self._failing: set[str] = set()  # keys of backends with failures since their last success
        self._gone: set[Backend] = set()  # drained recently: their connections are not pooled
        self._closing = False
        self._pending: list[tuple[asyncio.Transport, bytes | None]] = []  # see _send
        self._sweeper: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when `listen_port` was 0)."""
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, self.listen_host, self.listen_port, backlog=1024, reuse_address=True
        )
        self._sweeper = loop.call_later(SWEEP, self._sweep)

    def _accept(self) -> _Client:
        return _Client(self)

    def _accepted(self, client: _Client) -> None:
        if not self.cap.take():
            self.stats.refused += 1
            client.closing = True
            client.transport.close()
            return
        self._clients.add(client)
        self._idle.clear()
        self.stats.active += 1
        if self._closing:
            client.shut()

    def _finished(self, client: _Client) -> None:
        if client in self._clients:
            self._clients.discard(client)
            self.cap.give()
            self.stats.active -= 1
            if not self._clients:
                self._idle.set()

    # -- writes -------------------------------------------------------------------------------

    def _send(self, transport: asyncio.Transport, data: bytes | None) -> None:
        """Write `data` once every read of this loop iteration is handled: all the reads,
        then all the writes, so each write wakes its reader once per batch (this costs
        less CPU per request than writing at once, by fewer preemptions and cache misses).
        `data` None closes the transport (once what is queued before is written)."""
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append((transport, data))

    def _flush(self) -> None:
        """Make the writes `_send` queued, in order."""
        pending, self._pending = self._pending, []
        for transport, data in pending:
            if transport.is_closing():
                continue
            if data is None:
                transport.close()
            else:
                transport.write(data)

    # -- outcomes --------------------------------------------------------------------------

    def _report_failure(self, backend: Backend, now: float) -> None:
        self._failing.add(backend.key)
        if self.balancer.report(backend, False, now):
            self.stats.ejections += 1

    def _report_ok(self, backend: Backend, now: float) -> None:
        """A success changes nothing in a record without failures, so only a backend that
        failed since its last success is reported (this proxy is its balancer's only user)."""
        if backend.key in self._failing and not self.balancer.is_ejected(backend, now):
            self._failing.discard(backend.key)
            self.balancer.report(backend, True, now)

    # -- the pool of idle backend connections ----------------------------------------------

    def _pool_put(self, up: _Upstream) -> None:
        if self._closing or up.draining or up.transport.is_closing():
            up.transport.close()
            return
        idle = self._pool.get(up.backend.key)
        if idle is None:
            idle = self._pool[up.backend.key] = []
        elif len(idle) >= POOL_SIZE:
            up.transport.close()
            return
        up.pooled = True  # idle_since: set when the response head came
        idle.append(up)

    def _pool_discard(self, up: _Upstream) -> None:
        up.pooled = False
        idle = self._pool.get(up.backend.key)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(up)

    def _sweep(self) -> None:
        """Answer 504 for responses overdue, 408 for heads and bodies too slow; close
        connections idle too long."""
        now = _now()
        late, idle_since = now - self.response_timeout, now - CLIENT_IDLE
        head_late, body_late = now - self.limits.head_timeout, now - self.limits.body_timeout
        for client in list(self._clients):
            if client.lost:
                continue
            r, up, parsing = client.cur, client.up, client.parsing
            if r is not None and up is not None and r.complete and not up.head_done and r.t_wait < late:
                client.timed_out(up)
                continue
            if client.closing:
                continue
            if client.active or client.paused:  # read, or not reading by the proxy's choice
                client.active = False
                client.read_t = now
            if r is None and parsing is None:  # waiting for a head
                if client.head_size and not client.head_t:
                    client.head_t = now  # a head began since the last sweep
                if client.head_t and client.head_t < head_late:
                    client.too_slow(b"request head not received in time\n")
                elif client.idle_since < idle_since:
                    client.shut()
            elif parsing is not None and client.read_t < body_late and parsing.t0 < body_late:
                client.too_slow(b"request body not received in time\n")
        stale = now - POOL_IDLE
        for key, idle in list(self._pool.items()):
            while idle and idle[0].idle_since < stale:
                up = idle.pop(0)
                up.pooled = False
                up.transport.close()
            if not idle:
                del self._pool[key]
        self._sweeper = self._loop.call_later(SWEEP, self._sweep)

    # -- introspection, drain, close ---------------------------------------------------------

    def buffered(self) -> int:
        """Bytes held by the proxy for its connections: write buffers and bodies read
        ahead of their backend connection (for tests and metrics)."""
        total = sum(len(data) for _, data in self._pending if data is not None)
        for client in self._clients:
            if not client.lost:
                total += client.transport.get_write_buffer_size()
            up = client.up
            if up is not None and not up.transport.is_closing():
                total += up.transport.get_write_buffer_size()
            for r in (client.cur, *(client.waiting or ())):
                if r is not None and r.pending:
                    total += sum(map(len, r.pending))
        return total

    def drain(self, backends: Iterable[Backend]) -> None:
        """Requests to `backends` (removed from the set) get `drain_timeout` to finish,
        then their backend connections are aborted; idle ones are closed now."""
        gone = set(backends)
        if not gone:
            return
        for backend in gone:
            idle = self._pool.get(backend.key, [])
            for up in [up for up in idle if up.backend == backend]:
                idle.remove(up)
                up.pooled = False
                up.transport.close()
        doomed = [c.up for c in self._clients if c.up is not None and c.up.backend in gone]
        for up in doomed:
            up.draining = True
        self._gone |= gone
        self._failing.difference_update(b.key for b in gone)
        self._loop.call_later(self.drain_timeout, self._drained, doomed, gone)

    def _drained(self, doomed: list[_Upstream], gone: set[Backend]) -> None:
        self._gone -= gone
        for up in doomed:
            if up.client is not None:
                up.transport.abort()

    def stop_accepting(self) -> None:
        """Stop listening now (the port is free again); open connections go on."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def close(self) -> None:
        """Stop listening; close idle client connections now, let requests in flight
        finish up to `drain_timeout`, then abort what is left."""
        self.stop_accepting()
        self._closing = True
        for idle in self._pool.values():
            for up in idle:
                up.pooled = False
                up.transport.close()
        self._pool.clear()
        for client in list(self._clients):
            if client.idle():
                client.shut()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.drain_timeout)
        for client in list(self._clients):
            if client.task is not None:
                client.task.cancel()
            client.shut(abort=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
