"""The L7 engine: one listening port, each HTTP/1.1 request sent to the next backend.

Per request read on a client connection (keep-alive or not): pick a backend from the
`Balancer`, take an idle connection to it from the pool or open one, send the rebuilt
request, stream the response back, return the backend connection to the pool. So a
client holding one keep-alive connection is still spread over every replica.

Parsing is llhttp's (`httptools`); the protocols are in `node.proxy.http_conn` (client)
and `node.proxy.http_upstream` (backend), which see the engine only through the
`Engine` interface of `node.proxy.http_types`; the listener is `node.proxy.listener`'s,
shared with the L4 engine. As in the L4 engine each side is an `asyncio.Protocol`
whose callbacks write into the other side's transport: no task and no timer per
request (a task only to open a backend connection). Writes are queued while the reads
of one loop iteration are handled and made right after them, one per read.

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
  HTTP/1.1 client, so its connection stays open. Trailers are dropped. No CONNECT (400);
- upgrades (WebSocket...): a request with `Connection: upgrade` and `Upgrade` (and no
  body) goes to the next pick with those two headers kept; bytes the client sends after
  its head are held, reading paused, until the answer. A 101 (with its Upgrade) makes
  the client connection and that backend connection a byte tunnel both ways
  (`node.proxy.http_tunnel`: no more parsing, never pooled, half-close passed on,
  closed after `tunnel_idle` s with no byte either way); any other answer is relayed as
  a plain response and the connection goes on as HTTP (keep-alive kept);
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
- an answer to a request not read whole (those above, a 502/503 before its body was in)
  is followed by a lingering close (`node.proxy.linger`): FIN, then what the client still
  sends is dropped for a while, so no RST cuts the answer before the client reads it;
- `close()` stops listening and lets requests in flight finish for up to `drain_timeout`
  seconds, then aborts what is left. Meanwhile every response says `Connection: close`
  and ends its connection; a keep-alive connection idle for `DRAIN_IDLE` s is closed (one
  idle a shorter time is likely about to send: closing it then would race the client's
  next request, which it would see as a connection closed without a response);
  `drain(backends)` gives requests and tunnels to backends that left the set the same
  grace.

Not done: HTTP/2; bounds on response heads (replicas are the service's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

from node.proxy.balancer import Backend, Balancer, RetryPolicy
from node.proxy.http_conn import _Client
from node.proxy.http_types import (
    CLIENT_IDLE,
    HIGH_WATER,
    LOW_WATER,
    POOL_IDLE,
    POOL_SIZE,
    REPLAY_LIMIT,
    TUNNEL_IDLE,
    Client,
    Router,
    Upstream,
)
from node.proxy.limits import ConnectionCap, HttpLimits
from node.proxy.linger import SHUT
from node.proxy.listener import CONNECT_TIMEOUT, Listener

__all__ = ["CLIENT_IDLE", "HIGH_WATER", "LOW_WATER", "POOL_IDLE", "POOL_SIZE", "REPLAY_LIMIT", "HttpProxy"]

SWEEP = 0.25
"""Seconds between checks of response timeouts and idle pooled connections."""
DRAIN_IDLE = 0.5
"""Seconds a keep-alive client connection must have been idle to be closed while the
proxy closes (`close()`; a worker replaced by another build, a retired port): a busier
one gets `Connection: close` on its next response instead."""

_now = time.monotonic


class HttpProxy(Listener[Client]):
    """Listen on `listen_host:listen_port` (0: any free port) and spread requests.

    Its connections use it as an `node.proxy.http_types.Engine`: the public attributes and
    methods below are that interface, and the only one."""

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        balancer: Balancer,
        service: str = "",
        connect_timeout: float = CONNECT_TIMEOUT,
        drain_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        response_timeout: float = 60.0,
        scheme: str = "http",
        limits: HttpLimits | None = None,
        cap: ConnectionCap | None = None,
        tunnel_idle: float = TUNNEL_IDLE,
    ) -> None:
        super().__init__(listen_host, listen_port, balancer, connect_timeout, drain_timeout, retry, cap)
        self.service = service
        self.response_timeout = response_timeout
        self.tunnel_idle = tunnel_idle
        self.limits = limits or HttpLimits()
        self.max_items = 1 + 4 * self.limits.max_headers  # of a head list (node.proxy.heads)
        self.proto_line = b"X-Forwarded-Proto: " + scheme.encode("ascii") + b"\r\n"
        self.router: Router | None = None  # per-request routing (node.proxy.ingress)
        name = f'service "{service}"'.encode()
        self.msg_503 = b"no healthy replica of " + name + b"\n"
        self.msg_502 = b"bad gateway: a replica of " + name + b" failed to answer\n"
        self.msg_504 = b"gateway timeout: a replica of " + name + b" did not answer in time\n"
        self.pool: dict[str, list[Upstream]] = {}  # by backend key, most recently used last
        self.failing: set[str] = set()  # keys of backends with failures since their last success
        self.gone: set[Backend] = set()  # drained recently: their connections are not pooled
        self.closing = False
        self.pending: list[tuple[asyncio.Transport, bytes | None]] = []  # see send

    def sweep_every(self) -> float:
        return SWEEP

    def _accept(self) -> _Client:
        return _Client(self)

    def accepted(self, client: Client) -> bool:
        if not self.cap.take():
            self.stats.refused += 1
            return False
        self._track(client)
        if self.closing:  # accepted just before the close: its request is served, then it closes
            client.close_after = True
        return True

    def finished(self, client: Client) -> None:
        if self._untrack(client):
            self.cap.give()

    # -- writes -------------------------------------------------------------------------------

    def send(self, transport: asyncio.Transport, data: bytes | None) -> None:
        """Write `data` once every read of this loop iteration is handled: all the reads,
        then all the writes, so each write wakes its reader once per batch (this costs
        less CPU per request than writing at once, by fewer preemptions and cache misses).
        `data` None closes the transport (once what is queued before is written), `SHUT`
        shuts its write side (a lingering close, `node.proxy.linger`)."""
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append((transport, data))

    def flush(self) -> None:
        """Make the writes `send` queued, in order."""
        pending, self.pending = self.pending, []
        for transport, data in pending:
            if transport.is_closing():
                continue
            try:  # free unless raised: one transport's error must not lose the others' writes
                if data is None:
                    transport.close()
                elif data is SHUT:
                    transport.write_eof()
                else:
                    transport.write(data)
            except (RuntimeError, OSError):  # after its write side was shut: dropped
                continue

    # -- outcomes --------------------------------------------------------------------------

    def report_failure(self, backend: Backend, now: float) -> None:
        self.failing.add(backend.key)
        if self.balancer.report(backend, False, now):
            self.stats.ejections += 1

    def report_ok(self, backend: Backend, now: float) -> None:
        """A success changes nothing in a record without failures, so only a backend that
        failed since its last success is reported (this proxy is its balancer's only user)."""
        if backend.key in self.failing and not self.balancer.is_ejected(backend, now):
            self.failing.discard(backend.key)
            self.balancer.report(backend, True, now)

    # -- the pool of idle backend connections ----------------------------------------------

    def pool_put(self, up: Upstream) -> None:
        if self.closing or up.draining or up.transport.is_closing():
            up.transport.close()
            return
        idle = self.pool.get(up.backend.key)
        if idle is None:
            idle = self.pool[up.backend.key] = []
        elif len(idle) >= POOL_SIZE:
            up.transport.close()
            return
        up.pooled = True  # idle_since: set when the response head came
        idle.append(up)

    def pool_discard(self, up: Upstream) -> None:
        up.pooled = False
        idle = self.pool.get(up.backend.key)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(up)

    def _sweep(self) -> None:
        """Answer 504 for responses overdue, 408 for heads and bodies too slow; close
        connections idle too long."""
        now = _now()
        late, idle_before = now - self.response_timeout, now - (DRAIN_IDLE if self.closing else CLIENT_IDLE)
        head_late, body_late = now - self.limits.head_timeout, now - self.limits.body_timeout
        for client in list(self._open):
            client.sweep(now, late, idle_before, head_late, body_late)
        stale = now - POOL_IDLE
        for key, idle in list(self.pool.items()):
            while idle and idle[0].idle_since < stale:
                up = idle.pop(0)
                up.pooled = False
                up.transport.close()
            if not idle:
                del self.pool[key]

    # -- introspection, drain, close ---------------------------------------------------------

    def buffered(self) -> int:
        """Bytes held by the proxy for its connections: write buffers and bodies read
        ahead of their backend connection (for tests and metrics)."""
        total = sum(len(data) for _, data in self.pending if data is not None)
        return total + sum(client.buffered() for client in self._open)

    def drain(self, backends: Iterable[Backend]) -> None:
        """Requests to `backends` (removed from the set) get `drain_timeout` to finish,
        then their backend connections are aborted; idle ones are closed now."""
        gone = set(backends)
        if not gone:
            return
        for backend in gone:
            idle = self.pool.get(backend.key, [])
            for up in [up for up in idle if up.backend == backend]:
                idle.remove(up)
                up.pooled = False
                up.transport.close()
        doomed = [c.up for c in self._open if c.up is not None and c.up.backend in gone]
        for c in self._open:
            if c.tunnel is not None and c.tunnel.backend in gone:
                c.tunnel.drain(self.loop, self.drain_timeout)
        for up in doomed:
            up.draining = True
        self.gone |= gone
        self.failing.difference_update(b.key for b in gone)
        self.loop.call_later(self.drain_timeout, self._drained, doomed, gone)

    def _drained(self, doomed: list[Upstream], gone: set[Backend]) -> None:
        self.gone -= gone
        for up in doomed:
            if up.client is not None:
                up.transport.abort()

    def _begin_close(self) -> None:
        """Close pooled backend connections now, and client ones idle for `DRAIN_IDLE`."""
        self.closing = True
        for idle in self.pool.values():
            for up in idle:
                up.pooled = False
                up.transport.close()
        self.pool.clear()
        quiet = _now() - DRAIN_IDLE
        for client in list(self._open):
            if client.idle() and client.idle_since < quiet:
                client.shut()  # the others: `Connection: close` on their next response, or the sweep

    def _abort_open(self) -> None:
        for client in list(self._open):
            client.stop()
