"""What the L4 and L7 engines share: the listening socket, the connections open on it,
the periodic sweep, and the way they stop.

`Listener` listens on `listen_host:listen_port` (0: any free port; `port` says which),
with a backlog of `BACKLOG` and SO_REUSEADDR, and calls `_sweep` every `sweep_every()`
seconds from `start()` until `close()`. An engine counts each connection it serves with
`_track` / `_untrack` (`stats.active`), so `close()` can wait for them to end:
`stop_accepting()` frees the port at once (on a socket given to `start`, it closes only
the engine's duplicate: `node.proxy.ports`); `close()` also runs `_begin_close()`, waits up
to `drain_timeout` for the open connections to finish, then `_abort_open()` ends the
rest and waits a second for them to go.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from node.proxy.balancer import Balancer, RetryPolicy
from node.proxy.http_types import Hold
from node.proxy.limits import DEFAULT_MAX_CONNECTIONS, ConnectionCap
from node.proxy.ports import BACKLOG
from node.proxy.stats import ProxyStats

CONNECT_TIMEOUT = 2.0
"""Seconds per connect attempt to a replica. Above Linux's first SYN retransmission
(1 s): a replica whose accept queue is full drops the SYN and the kernel sends it again
after 1 s, which a direct client waits for; at 1.0 s the proxy gave up just then and
failed 4-6 requests in 3,000 to busybox httpd (`ab -c 16`) that direct connections all
served (ListenOverflows counted in the container)."""
ABORT_GRACE = 1.0
"""Seconds `close()` waits for aborted connections to report their end."""

C = TypeVar("C")


class Deadline:
    """`asyncio.timeout(delay)` for the connect of each new connection, on a loop and task
    the caller already holds: a `with` block in `task` that ends in TimeoutError when
    `delay` seconds pass first. Python 3.11's `asyncio.timeout` asks for the running loop
    three times (`current_task`, `reschedule`), and each ask is a `getpid` system call:
    four per proxied connection, 5 % of the L4 engine's time with a new connection per
    request (py-spy, bench/proxy.py). Same rules as asyncio.timeout: a cancellation of
    the task from elsewhere (the client left) is not turned into TimeoutError."""

    __slots__ = ("_cancelling", "_handle", "_task", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], delay: float) -> None:
        self._task = task
        self._cancelling = task.cancelling()
        self.expired = False
        self._handle = loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._handle.cancel()
        if self.expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


class Listener(Generic[C]):
    """A listening engine; `C` is what it counts as one open connection."""

    reuse_port = False
    """SO_REUSEPORT on a socket of its own: set for the entrance's listeners in proxy
    worker processes, which share each port with their siblings (a published port's
    socket comes from `node.proxy.ports`, which sets it there)."""

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        balancer: Balancer,
        connect_timeout: float,
        drain_timeout: float,
        retry: RetryPolicy | None,
        cap: ConnectionCap | None,
    ) -> None:
        self.listen_host, self.listen_port = listen_host, listen_port
        self.balancer = balancer
        self.connect_timeout = connect_timeout
        self.drain_timeout = drain_timeout
        self.retry = retry or RetryPolicy()
        self.cap = cap or ConnectionCap(DEFAULT_MAX_CONNECTIONS)
        self.stats = ProxyStats()
        self.ssl_context: ssl.SSLContext | None = None  # set before start(): TLS on the port (ingress)
        self.cold: Hold | None = None  # issue 15: requests wait for a replica (node.proxy.coldstart)
        self.loop = cast(asyncio.AbstractEventLoop, None)  # set by start()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._open: set[C] = set()
        self._idle = asyncio.Event()  # set when no connection is open
        self._idle.set()
        # Set before start(): a client whose address it refuses is reset at once, before the
        # engine sees it (a VIP's network scope, decision 64). None: every client is served.
        self.admit: Callable[[str], bool] | None = None
        self.refused = 0

    # -- what an engine provides ------------------------------------------------------------

    def _accept(self) -> asyncio.Protocol:
        """The protocol of a new client connection."""
        raise NotImplementedError

    def sweep_every(self) -> float:
        """Seconds between sweeps."""
        raise NotImplementedError

    def _sweep(self) -> None:
        """The periodic checks (timeouts, idle connections)."""
        raise NotImplementedError

    def _begin_close(self) -> None:
        """`close()` began (listening stopped): end what can end at once."""

    def _abort_open(self) -> None:
        """The drain time is over: end every connection still open."""
        raise NotImplementedError

    # -- listening ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when `listen_port` was 0)."""
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen: on `sock` when given (a listening socket, which the engine now owns and
        closes when it stops: `node.proxy.ports`), else on a socket of its own."""
        loop = self.loop = asyncio.get_running_loop()
        factory = self._accept if self.admit is None else functools.partial(_Gate, self)
        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=BACKLOG, ssl=self.ssl_context)
        else:
            self._server = await loop.create_server(
                factory,
                self.listen_host,
                self.listen_port,
                backlog=BACKLOG,
                reuse_address=True,
                ssl=self.ssl_context,
                reuse_port=self.reuse_port or None,
            )
        self._sweeper = loop.call_later(self.sweep_every(), self._tick)

    def _tick(self) -> None:
        self._sweep()
        self._sweeper = self.loop.call_later(self.sweep_every(), self._tick)

    def _track(self, conn: C) -> None:
        """`conn` is open: counted until `_untrack`."""
        self._open.add(conn)
        self._idle.clear()
        self.stats.active += 1

    def _untrack(self, conn: C) -> bool:
        """`conn` ended; False when it was not counted (or already uncounted)."""
        if conn not in self._open:
            return False
        self._open.discard(conn)
        self.stats.active -= 1
        if not self._open:
            self._idle.set()
        return True

    def stop_accepting(self) -> None:
        """Stop listening now (the port is free again); open connections go on."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def close(self) -> None:
        """Stop listening; let open connections finish up to `drain_timeout`, then abort
        what is left."""
        self.stop_accepting()
        self._begin_close()
        # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation of close()
        # that arrives as the last connection ends (close() then went on as if not cancelled)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.drain_timeout):
                await self._idle.wait()
        self._abort_open()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ABORT_GRACE):
                await self._idle.wait()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class _Gate(asyncio.Protocol):
    """The first protocol of a connection to a listener with `admit`: a refused client is
    reset (SO_LINGER 0, so it sees "connection reset", never an answer); an admitted one
    is handed to the engine's own protocol (`set_protocol`), so the gate costs nothing
    after the accept."""

    def __init__(self, listener: Listener[Any]) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        peer = t.get_extra_info("peername")
        admit = self.listener.admit
        if peer is None or admit is None or admit(str(peer[0])):
            inner = self.listener._accept()
            t.set_protocol(inner)
            inner.connection_made(t)
            return
        self.listener.refused += 1
        sock = t.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.abort()
