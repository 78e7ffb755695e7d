"""What the parts of the L7 engine share: its constants, the request record, and the
interfaces between the engine and its connections.

The engine (`node.proxy.http.HttpProxy`) owns the listener, the pool of idle backend
connections, the write queue and the timers; a client connection
(`node.proxy.http_conn._Client`) serves the requests read on it, each on a backend
connection (`node.proxy.http_upstream._Upstream`). Each side sees the others only
through the Protocols here (`Engine`, `Client`, `Upstream`), so the modules import
this one and never each other back: http -> http_conn -> http_upstream -> http_types.

`Engine` is public on purpose, attributes included: the hot path (a keep-alive request
on a pooled connection) reads the write queue and the pool in place rather than
through a call per step (said where, in the connection modules).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any, Protocol

from node.proxy.balancer import Attempts, Backend, Balancer, RetryPolicy
from node.proxy.http_tunnel import Tunnel
from node.proxy.limits import HttpLimits
from node.proxy.stats import ProxyStats

HIGH_WATER = 256 * 1024
"""Bytes buffered in one transport before its producer stops reading."""
LOW_WATER = 64 * 1024
"""Bytes under which the producer reads again."""
POOL_SIZE = 64
"""Idle connections kept per backend."""
POOL_IDLE = 4.0
"""Seconds an idle backend connection is kept (under the 5 s keep-alive of many app servers)."""
CLIENT_IDLE = 60.0
"""Seconds a client connection may stay without a request being served (idle keep-alive,
or a head coming too slowly) before it is closed."""
REPLAY_LIMIT = 64 * 1024
"""Request body bytes kept to send again on another connection; a bigger body never is."""

# why a client connection stops reading (bits of `_Client.paused`)
P_WAIT = 1  # what is read cannot be forwarded yet (no backend connection yet, or pipelined)
P_FULL = 2  # the backend connection's write buffer is over HIGH_WATER
P_UPG = 4  # an upgrade was asked for: what follows is HTTP or tunnel bytes, as the answer says
TUNNEL_IDLE = 3600.0
"""Seconds a tunnel (an upgraded connection) may pass with no byte either way."""

_now = time.monotonic


class Request:
    """One request read from a client: its rebuilt head and the state of its body."""

    __slots__ = (
        "answered", "attempts", "body_sent", "chunked", "cold_until", "complete", "expects_body", "has_body",
        "head", "http10", "keep_alive", "method", "pending", "reached", "replay", "replay_size", "routed",
        "t0", "t_wait", "upgrade",
    )  # fmt: skip

    def __init__(
        self, method: bytes, head: bytes, chunked: bool, body: bool, keep_alive: bool, http10: bool
    ) -> None:
        self.method = method
        self.head = head
        self.chunked = chunked
        self.expects_body = body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.complete = False  # the whole body was read from the client
        self.has_body = False  # some body was read
        self.answered = False  # by the proxy itself, before the request was read whole
        self.pending: list[bytes] | None = None  # framed body read, not sent yet
        self.replay: list[bytes] | None = []  # framed body sent so far (None: too big to resend)
        self.replay_size = 0
        self.body_sent = False  # some body went to a backend
        self.reached = False  # an attempt reached a backend, which then failed
        self.attempts: Attempts | None = None  # created at the first failure
        self.t0 = self.t_wait = _now()  # head read; waiting for the response since
        self.upgrade: bytes | None = None  # the Upgrade asked for (kept in the head), if any
        self.routed: Routed | None = None  # set by the engine's router (ingress): where it goes
        self.cold_until = 0.0  # held for a service at zero (issue 15): retried until then

    def sent(self, data: bytes) -> None:
        self.body_sent = True
        if self.replay is not None:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            else:
                self.replay.append(data)


class Routed:
    """Where an engine's `router` sends one request (the ingress, `node.proxy.ingress`):
    `balancer` and the messages of the proxy's errors naming its service; or, with
    `balancer` None, an answer of the proxy's own (`status`, `body`, `extra` header lines).
    `pick` chooses the backend (a router may prefer one: sticky sessions); `set_cookie`,
    when set by `pick`, is added to the response."""

    __slots__ = ("balancer", "body", "extra", "msg_502", "msg_503", "msg_504", "set_cookie", "status")

    def __init__(
        self,
        balancer: Balancer | None,
        service: str = "",
        status: int = 0,
        body: bytes = b"",
        extra: bytes = b"",
    ) -> None:
        self.balancer = balancer
        self.status, self.body, self.extra = status, body, extra
        name = f'service "{service}"'.encode()
        self.msg_502 = b"bad gateway: a replica of " + name + b" failed to answer\n"
        self.msg_503 = b"no healthy replica of " + name + b"\n"
        self.msg_504 = b"gateway timeout: a replica of " + name + b" did not answer in time\n"
        self.set_cookie = b""

    def pick(self, now: float, tried: Collection[str]) -> Backend | None:
        return None if self.balancer is None else self.balancer.pick(now, tried)


Router = Callable[[list[bytes], bytes, object], Routed]
"""(head list being read, request target, the client's connection) -> where the request
goes; may add to the head (the ingress reads a TLS connection's SNI host from the third)."""


class Upstream(Protocol):
    """A connection to a backend, as the client connection and the engine see it."""

    backend: Backend
    transport: asyncio.Transport
    client: Client | None  # the client connection whose request it serves; None: idle
    req: Request | None
    reused: bool  # taken from the pool for this request
    got: bool  # some response byte came
    head_done: bool  # the response head was forwarded
    done: bool  # the response was read whole
    keep: bool  # the backend keeps the connection open after this response
    until_eof: bool  # the response body ends when the backend closes
    chunk_out: bool  # the body is re-chunked for the client
    broken: bool  # cannot be reused
    draining: bool  # its backend left the set: not pooled again
    paused: bool  # not reading: the client's write buffer is full
    pooled: bool
    idle_since: float


class Client(Protocol):
    """A client connection, as its backend connection and the engine see it."""

    transport: asyncio.Transport
    up: Upstream | None  # the backend connection serving the current request
    eof: bool  # the client sent EOF
    close_after: bool  # close once the current response is forwarded
    tunnel: Tunnel | None  # after a 101: the connection is a tunnel to `tunnel.backend`
    idle_since: float  # monotonic time of its last response (or its accept): no request since

    def shut(self, abort: bool = False, linger: bool = False) -> None: ...
    def stop(self) -> None: ...
    def idle(self) -> bool: ...
    def buffered(self) -> int: ...
    def sweep(
        self, now: float, late: float, idle_before: float, head_late: float, body_late: float
    ) -> None: ...
    def pause(self, why: int) -> None: ...
    def resume(self, why: int) -> None: ...
    def response_done(self, up: Upstream) -> None: ...
    def upstream_lost(self, up: Upstream, exc: Exception | None) -> None: ...
    def bad_response(self, up: Upstream, exc: Exception) -> None: ...
    def upgraded(self, up: Upstream, to_client: bytes) -> None: ...


class Hold(Protocol):
    """Issue 15: a request that found no replica of a service scaled to zero waits for one
    (`node.proxy.coldstart`)."""

    def now(self) -> bool: ...
    async def wait(self) -> bool: ...
    def timeout(self) -> float: ...
    def later(self, job: Coroutine[Any, Any, None]) -> None: ...


class Engine(Protocol):
    """What a connection may use of the engine (`HttpProxy`): its settings, its counters,
    the write queue, the pool of idle backend connections and the balancer's outcomes."""

    loop: asyncio.AbstractEventLoop
    balancer: Balancer
    retry: RetryPolicy
    stats: ProxyStats
    limits: HttpLimits
    connect_timeout: float
    tunnel_idle: float  # s a tunnel may pass with no byte either way
    drain_timeout: float
    max_items: int  # of a head list (node.proxy.heads)
    proto_line: bytes  # the X-Forwarded-Proto line
    router: Router | None  # per request (ingress); None: every request to `balancer`
    msg_502: bytes
    msg_503: bytes
    msg_504: bytes
    closing: bool  # close() was called
    pending: list[tuple[asyncio.Transport, bytes | None]]  # the write queue: see `send`
    pool: dict[str, list[Upstream]]  # idle backend connections by backend key, last used last
    failing: set[str]  # keys of backends with failures since their last success
    gone: set[Backend]  # drained recently: their connections are not pooled
    cold: Hold | None  # issue 15: set for a service that may be scaled to zero

    def send(self, transport: asyncio.Transport, data: bytes | None) -> None:
        """Write `data` (None: close) once every read of this loop iteration is handled."""
        ...

    def flush(self) -> None:
        """Make the writes `send` queued (scheduled by the first one of an iteration)."""
        ...

    def accepted(self, client: Client) -> bool:
        """A client connected: False when over the node's connection cap (close it)."""
        ...

    def finished(self, client: Client) -> None: ...
    def pool_put(self, up: Upstream) -> None: ...
    def pool_discard(self, up: Upstream) -> None: ...
    def report_failure(self, backend: Backend, now: float) -> None: ...
    def report_ok(self, backend: Backend, now: float) -> None: ...
