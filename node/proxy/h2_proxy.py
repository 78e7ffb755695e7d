"""The h2c engine: HTTP/2 (and so gRPC) through the mesh, balanced per stream.

For ports with `protocol: grpc` or `http2`. Clients speak HTTP/2 without TLS (h2c with
prior knowledge, as gRPC clients do) to the published port; each stream they open is
sent to the next replica the `Balancer` picks for that stream, whatever connection it
came on, so one client channel is spread over every replica, as the L7 engine spreads
HTTP/1.1 requests. Replicas are reached over h2c too, on at most `CONNS_PER_BACKEND`
connections each, every one carrying up to `node.proxy.h2_conn.CAPACITY` streams
(fewer if the replica says so); a stream waits for a free slot rather than opening more.

Relaying (`node.proxy.h2_conn`, state machines by the `h2` package, `node.proxy.h2_peer`):
request and response heads, data both ways with end-to-end flow control (a slow side
closes the other side's window, nothing piles up in the proxy), trailers (gRPC's
`grpc-status` and `grpc-message`), the end of each direction, and RST_STREAM with its
error code, each way. `x-forwarded-for` gets the client address, `x-forwarded-proto` is
set to `http`. A replica connection carries many clients' streams, so credentials stay
out of its HPACK table (RFC 7541 7.1): `authorization`, `proxy-authorization` and cookies
under 20 bytes are sent never-indexed (h2's own rule, off with its normalization), and a
field a client sent never-indexed is passed on so (7.1.3).

Guarantees:
- per-stream round robin; a refused or timed-out connect to a replica is reported to
  the balancer (outlier ejection) and the streams waiting for it go to the next
  replica, as `RetryPolicy` allows: they never reached the application;
- a replica that sends GOAWAY gets no new streams; the streams it says it never
  processed are reset to the client with REFUSED_STREAM (gRPC retries those on its own);
  the ones it processes finish;
- errors of the proxy's own: on a `grpc` port a gRPC status UNAVAILABLE (14) with a
  `grpc-message` naming the service, as a trailers-only response, or as trailers when
  the response head was already passed on (the client sees the call fail, not a cut
  connection); on an `http2` port 503 (no replica) or 502 (the replica failed) before
  the head, RST_STREAM INTERNAL_ERROR after it;
- `drain(backends)`: replicas that left the set get no new stream at once; their open
  streams may finish for `drain_timeout` s, then their connections are cut (those
  streams fail as above; no other stream is touched);
- `close()`: listening stops, every client gets GOAWAY (its open streams finish, for up
  to `drain_timeout` s), then whatever is left is aborted;
- bounds: the node's `ConnectionCap` per client connection; the preface within
  `head_timeout` s of the accept (the daemon's `proxy_head_timeout`), and anything but
  HTTP/2 (an HTTP/1.1 request) closes the connection with a GOAWAY; 256 concurrent streams per
  client connection; resets of unanswered streams past `h2_conn.RESET_BURST` (rapid
  reset) end it with GOAWAY ENHANCE_YOUR_CALM; per stream at most `STREAM_WINDOW` bytes
  held each way; a stream waiting for a free slot on a replica's connections more than
  `QUEUE_TIMEOUT` s after it came fails (503 / UNAVAILABLE); a client connection with no
  stream for `CLIENT_IDLE` s is sent GOAWAY and closed, a replica connection with none
  for `UPSTREAM_IDLE` s is closed.

Not done: TLS with ALPN (the ingress work terminates TLS), h2c upgrade from HTTP/1.1
(gRPC never uses it), retrying a processed stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from h2.errors import ErrorCodes
from hpack import NeverIndexedHeaderTuple

from node.proxy.balancer import Backend, Balancer, Failure, RetryPolicy
from node.proxy.h2_conn import H2Client, H2Upstream, Stream
from node.proxy.h2_peer import H2Peer, Headers
from node.proxy.limits import ConnectionCap
from node.proxy.listener import CONNECT_TIMEOUT, Listener

CONNS_PER_BACKEND = 4
"""Connections to one replica at most; streams beyond their capacity wait."""
CLIENT_IDLE = 300.0
"""Seconds a client connection may have no stream open before it is sent GOAWAY."""
UPSTREAM_IDLE = 30.0
"""Seconds an unused connection to a replica is kept."""
QUEUE_TIMEOUT = 30.0
"""Seconds from its arrival a stream may wait for a free slot on a replica's connections
(HAProxy's `timeout queue`); then it fails as the proxy's own 503 / UNAVAILABLE."""
SWEEP = 1.0
"""Seconds between idle checks."""
HEAD_TIMEOUT = 10.0
"""Seconds a new client connection has to send the HTTP/2 preface and its SETTINGS."""
UNAVAILABLE = b"14"  # the gRPC status the proxy answers with

_now = time.monotonic

_SECRET = frozenset({b"authorization", b"proxy-authorization"})  # never indexed towards a replica


class H2Proxy(Listener[H2Client]):
    """Listen on `listen_host:listen_port` (0: any free port) and spread streams.

    `grpc`: answer the proxy's own errors as gRPC statuses (else as HTTP statuses)."""

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        balancer: Balancer,
        service: str = "",
        grpc: bool = True,
        connect_timeout: float = CONNECT_TIMEOUT,
        drain_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        cap: ConnectionCap | None = None,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        super().__init__(listen_host, listen_port, balancer, connect_timeout, drain_timeout, retry, cap)
        self.service = service
        self.head_timeout = head_timeout
        self.grpc = grpc
        self.upstreams: dict[str, list[H2Upstream]] = {}  # by backend key
        self.failing: set[str] = set()
        self.closing = False
        self._dirty: list[H2Peer] = []
        self._connecting: set[asyncio.Task[None]] = set()
        self._draining: set[H2Upstream] = set()

    def sweep_every(self) -> float:
        return SWEEP

    def _accept(self) -> H2Client:
        return H2Client(self)

    def accepted(self, client: H2Client) -> bool:
        if self.closing or not self.cap.take():
            self.stats.refused += 1
            return False
        self._track(client)
        return True

    def finished(self, client: H2Client) -> None:
        if self._untrack(client):
            self.cap.give()

    # -- writes: every touched peer once per loop iteration ---------------------------------

    def touch(self, peer: H2Peer) -> None:
        if not self._dirty:
            self.loop.call_soon(self._flush)
        self._dirty.append(peer)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for peer in set(dirty):
            peer.flush()

    # -- streams ----------------------------------------------------------------------------

    def forwarded(self, request: Headers, client: H2Client) -> Headers:
        """The request head as the replica gets it; counts the request."""
        self.stats.requests += 1
        out: Headers = []
        forwarded_for = client.address
        for field in request:  # kept as they came: a NeverIndexedHeaderTuple stays one
            name = field[0]
            if name == b"x-forwarded-for":
                forwarded_for = field[1] + b", " + client.address
            elif name in _SECRET or (name == b"cookie" and len(field[1]) < 20):
                out.append(NeverIndexedHeaderTuple(name, field[1]))
            elif name != b"x-forwarded-proto":
                out.append(field)
        out.append((b"x-forwarded-for", forwarded_for))
        out.append((b"x-forwarded-proto", b"http"))
        return out

    def dispatch(self, s: Stream) -> None:
        """Send `s` to the next replica (one it has not tried)."""
        backend = self.balancer.pick(_now(), s.attempts.tried)
        if backend is None:
            self.stats.no_backend += 1
            self.fail(s, f'no healthy replica of service "{self.service}"', 503)
            return
        s.backend = backend
        self._upstream(backend).add(s)

    def _upstream(self, backend: Backend) -> H2Upstream:
        conns = self.upstreams.setdefault(backend.key, [])
        live = [up for up in conns if not up.closing]
        for up in live:
            if up.load() < up.capacity():
                return up
        if len(live) >= CONNS_PER_BACKEND:
            return min(live, key=H2Upstream.load)  # the stream waits for a free slot there
        up = H2Upstream(self, backend)
        conns.append(up)
        task = self.loop.create_task(self._connect(up), name=f"h2-connect-{backend.key[:12]}")
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return up

    async def _connect(self, up: H2Upstream) -> None:
        b = up.backend
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation (close())
            # that arrives as the connection is made
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(lambda: up, b.address, b.port)
        except TimeoutError:
            self.lost(up, Failure.CONNECT_TIMEOUT)
        except OSError:
            self.lost(up, Failure.CONNECT_REFUSED)

    def lost(self, up: H2Upstream, failure: Failure | None) -> None:
        """`up` takes no new streams (connect failed, GOAWAY, closed): its waiting ones
        go elsewhere, never having reached the application."""
        up.closing = True
        conns = self.upstreams.get(up.backend.key)
        if conns is not None and up in conns:
            conns.remove(up)
            if not conns:
                del self.upstreams[up.backend.key]
        if failure is not None:
            self.report_failure(up.backend)
        for s in up.take_waiting():
            # never sent: safe to send elsewhere, within the attempts of a refused connect
            if s.attempts.failed(up.backend, failure or Failure.CONNECT_REFUSED):
                self.stats.retries += 1
                self.dispatch(s)
            else:
                self.fail(s, f'no replica of service "{self.service}" could be reached', 503)

    def responded(self, s: Stream) -> None:
        self.stats.latency.observe(_now() - s.t0)
        if s.backend is not None:
            self.report_ok(s.backend)

    def fail(self, s: Stream, why: str, code: int = 502) -> None:
        """Answer `s` with the proxy's own error (see the module's text)."""
        if s.out_done:
            return
        self.stats.errors += 1
        if code == 502 and s.backend is not None and not s.responded:
            self.report_failure(s.backend)
        peer, message = s.client.peer, why.encode("ascii", "replace")
        if self.grpc:
            status = [(b"grpc-status", UNAVAILABLE), (b"grpc-message", message)]
            if s.responded:
                peer.end(s.cid, status)
            else:
                head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
                peer.headers(s.cid, head + status, end=True)
        elif s.responded:
            peer.reset(s.cid, ErrorCodes.INTERNAL_ERROR)
        else:
            body = message + b"\n"
            head = [(b":status", str(code).encode()), (b"content-type", b"text/plain; charset=utf-8")]
            if peer.headers(s.cid, [*head, (b"content-length", str(len(body)).encode())]):
                peer.data(s.cid, body, None)
                peer.end(s.cid)
        s.client.finish(s)

    def upstream_idle(self, up: H2Upstream) -> None:
        if up.closing:
            self._draining.discard(up)
            up.close()

    # -- outcomes (as the L7 engine: only a backend that failed since its last success) ---

    def report_failure(self, backend: Backend) -> None:
        self.failing.add(backend.key)
        if self.balancer.report(backend, False, _now()):
            self.stats.ejections += 1

    def report_ok(self, backend: Backend) -> None:
        now = _now()
        if backend.key in self.failing and not self.balancer.is_ejected(backend, now):
            self.failing.discard(backend.key)
            self.balancer.report(backend, True, now)

    # -- sweeping, draining, closing -------------------------------------------------------

    def _sweep(self) -> None:
        now = _now()
        late = now - QUEUE_TIMEOUT
        for conns in list(self.upstreams.values()):
            for up in [up for up in conns if up.connected and up.waiting]:
                for s in [s for s in up.waiting if s.t0 < late]:
                    up.forget(s)
                    self.stats.timeouts += 1
                    why = f'no free stream on the replicas of service "{self.service}" in {QUEUE_TIMEOUT:g} s'
                    self.fail(s, why, 503)
        for conns in list(self.upstreams.values()):
            for up in [up for up in conns if up.connected and not up.load()]:
                if up.idle_since < now - UPSTREAM_IDLE:
                    self.lost(up, None)
                    up.close()
        for client in list(self._open):
            if not client.greeted and client.idle_since < now - self.head_timeout:
                self.stats.timeouts += 1  # no HTTP/2 preface in time (a slow loris, or not h2c)
                client.stop()
            elif not client.streams and client.idle_since < now - CLIENT_IDLE:
                client.go_away()

    def drain(self, backends: Iterable[Backend]) -> None:
        """Streams to `backends` (removed from the set) get `drain_timeout` s to finish;
        then their connections are cut. Idle connections to them close now."""
        for backend in set(backends):
            self.failing.discard(backend.key)
            for up in list(self.upstreams.get(backend.key, [])):
                self.lost(up, None)  # waiting streams go to the remaining replicas
                if up.streams:
                    self._draining.add(up)
                else:
                    up.close()
        if self._draining:
            self.loop.call_later(self.drain_timeout, self._drained, list(self._draining))

    def _drained(self, doomed: list[H2Upstream]) -> None:
        for up in doomed:
            if up in self._draining:
                self._draining.discard(up)
                up.abort()

    def _begin_close(self) -> None:
        self.closing = True
        for client in list(self._open):
            client.go_away()

    def _abort_open(self) -> None:
        for client in list(self._open):
            client.stop()
        for conns in list(self.upstreams.values()):
            for up in list(conns):
                up.abort()
        for up in list(self._draining):
            up.abort()
        for task in self._connecting:
            task.cancel()
