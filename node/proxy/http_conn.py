"""The client side of the L7 engine (`node.proxy.http`): one client connection.

`_Client` parses requests with llhttp (`httptools.HttpRequestParser`); the backend side
is `node.proxy.http_upstream._Upstream` (responses). Both are `asyncio.Protocol`s whose
callbacks write into the other side's transport (through `HttpProxy.send`, which makes
the writes of a loop iteration after all its reads). Heads are rebuilt as their headers
arrive (`node.proxy.heads`: hop-by-hop ones dropped, `X-Forwarded-*` added, framing
re-declared); bodies are forwarded as they arrive, re-chunked when the framing changes.
`HttpProxy` owns the listener, the pool of idle backend connections, the write queue
and the timers; this side sees it only as a `node.proxy.http_types.Engine`, and is seen
by it as a `Client`.

Hostile input is bounded as it arrives (`node.proxy.limits.HttpLimits`): the URL is
gathered in a list and its size checked per piece (414), the header lines are counted
per line (431), and the bytes read while a head is open are counted per read, so a head
that never ends is cut once it passes `max_head` (431; at most one read more is held).
Work is linear in the bytes received. Timeouts are checked by `sweep`, which the
proxy calls every `SWEEP` s.

The hot path (a keep-alive request on a pooled backend connection) is written for
speed: no task, no timer, one write per read, few calls (some helpers are inlined
there, said where), no reference cycle left behind a closed connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from node.proxy.balancer import Backend, Failure
from node.proxy.heads import (
    CHUNK_END,
    CRLF,
    REQ_LENGTHS,
    REQ_SPECIAL,
    REQ_SPELLINGS,
    BadMessage,
    Special,
    origin_form,
    request_head,
)
from node.proxy.http_outcomes import _Outcomes
from node.proxy.http_tunnel import Tunnel
from node.proxy.http_types import HIGH_WATER, LOW_WATER, P_FULL, P_WAIT, POOL_SIZE, Engine, Request, Upstream
from node.proxy.http_upgrade import asks_upgrade, hold, not_upgraded, upgraded
from node.proxy.http_upstream import _Upstream
from node.proxy.limits import LimitExceeded
from node.proxy.linger import SHUT
from node.proxy.linger import linger as start_linger
from node.proxy.listener import Deadline

log = logging.getLogger(__name__)

_now = time.monotonic

# -- requests and client connections ---------------------------------------------------------


class _Client(_Outcomes, asyncio.Protocol):
    """One client connection: its requests are served one at a time, in order."""

    __slots__ = (
        "active", "close_after", "closing", "cur", "eof", "head", "head_size", "head_t", "held", "idle_since",
        "lost", "parser", "parsing", "paused", "proxy", "read_t", "special", "task", "transport", "tunnel",
        "up", "upgrading", "url", "url_len", "url_parts", "waiting", "write_paused", "xff",
    )  # fmt: skip

    def __init__(self, proxy: Engine) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.parser = HttpRequestParser(self)
        self.url: bytes | None = None  # of the head being read: its first piece
        self.url_parts: list[bytes] | None = None  # all its pieces, when it came in several
        self.url_len = 0  # bytes in url_parts
        self.head: list[bytes] = [b""]  # of the head being read
        self.special: Special = []
        self.parsing: Request | None = None  # the request whose body is being read
        self.cur: Request | None = None  # the request being served
        self.waiting: deque[Request] | None = None  # pipelined behind `cur`
        self.up: Upstream | None = None  # the backend connection serving `cur`
        self.task: asyncio.Task[None] | None = None  # connecting for `cur`
        self.paused = 0
        self.write_paused = False
        self.close_after = False
        self.eof = self.lost = self.closing = False
        self.xff = b""
        self.idle_since = _now()  # no request served since
        # limits (node.proxy.limits): bytes read since the last head ended or the last body
        # byte (a head, chunk framing, trailers), when the head being read began (0: none
        # begun, the accept time until the first head), a read since the last sweep, when
        # the last read was seen by the sweep
        self.head_size = 0
        self.head_t = self.read_t = self.idle_since
        self.active = False
        self.upgrading: Request | None = None  # node.proxy.http_upgrade
        self.held = b""
        self.tunnel: Tunnel | None = None  # after a 101

    def shut(self, abort: bool = False, linger: bool = False) -> None:
        """Close the connection (after what is buffered is sent, unless `abort`): no
        request read after this is served. `linger`: the client may still be sending (a
        request not read whole), so shut the write side and drop what comes until it is
        done (`node.proxy.linger`), lest an RST cut the answer."""
        self.closing = True
        if self.tunnel is not None:
            (self.tunnel.stop if abort else self.tunnel.close)()
            return
        if abort:
            self.transport.abort()
        elif linger and not self.eof and start_linger(self, self.transport):
            self.proxy.send(self.transport, SHUT)  # after what is queued for it
        else:
            self.proxy.send(self.transport, None)  # closes it after what is queued for it

    def stop(self) -> None:
        """The proxy's drain time is over: abort, connecting included."""
        if self.task is not None:
            self.task.cancel()
        self.shut(abort=True)

    def idle(self) -> bool:
        """Between requests (keep-alive): nothing read, nothing to answer."""
        return self.tunnel is None and self.cur is None and self.parsing is None and self.url is None

    def sweep(self, now: float, late: float, idle_before: float, head_late: float, body_late: float) -> None:
        """The proxy's periodic check (every `SWEEP` s): 504 for a response not begun by
        `late`, 408 for a head begun before `head_late` or a body silent since `body_late`,
        close when idle since before `idle_before`."""
        if self.lost:
            return
        if self.tunnel is not None:
            self.tunnel.sweep(now - self.proxy.tunnel_idle)
            return
        r, up, parsing = self.cur, self.up, self.parsing
        if r is not None and up is not None and r.complete and not up.head_done and r.t_wait < late:
            self.timed_out(up)
            return
        if self.closing:
            return
        if self.active or self.paused:  # read, or not reading by the proxy's choice
            self.active = False
            self.read_t = now
        if r is None and parsing is None:  # waiting for a head
            if self.head_size and not self.head_t:
                self.head_t = now  # a head began since the last sweep
            if self.head_t and self.head_t < head_late:
                self.too_slow(b"request head not received in time\n")
            elif self.idle_since < idle_before:
                self.shut()
        elif parsing is not None and self.read_t < body_late and parsing.t0 < body_late:
            self.too_slow(b"request body not received in time\n")

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        peer = t.get_extra_info("peername")
        self.xff = str(peer[0]).encode() if peer else b"unknown"
        if not self.proxy.accepted(self):  # over the node's connection cap
            self.closing = True
            t.close()

    def data_received(self, data: bytes) -> None:
        self.active = True
        self.head_size += len(data)  # set back to 0 by a head's end and by body bytes
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as up:
            if self.upgrading is not None:  # forwarded: the rest waits for the answer
                hold(self, data[up.args[0] :])
                return
            self.parser = HttpRequestParser(self)  # not forwarded (after a close): parse on
            self.head_size -= len(data)
            self.data_received(data[up.args[0] :])
            return
        except HttpParserError as exc:
            over = exc.__context__
            if not isinstance(over, BadMessage | LimitExceeded | None):
                log.error("http proxy: request callback failed", exc_info=over)
            if isinstance(over, LimitExceeded):
                self.refuse(over.status, over.why)
            else:
                self.refuse(400, b"bad request\n")
            return
        if self.head_size > self.proxy.limits.max_head:
            self.refuse(431, b"request header fields too large\n")

    def refuse(self, status: int, why: bytes) -> None:
        """What was read cannot be served: answer `status` and close; after requests read
        whole, serve those first, then close (an answer now would come before theirs)."""
        if self.closing:
            return
        if status != 400:
            self.proxy.stats.rejected += 1
        if self.cur is not None and self.parsing is None:
            # what follows the requests read whole cannot be read (data after a
            # `Connection: close` one, say): serve those, then close
            self.closing = True
            self.pause(P_WAIT)
        else:
            self.reject(status, why)

    def eof_received(self) -> bool:
        self.eof = True
        # keep the write side open to answer a request read whole; close otherwise
        keep = self.cur is not None and self.parsing is None and self.url is None
        self.closing = not keep
        return keep

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.up
        if up is not None and not up.paused:
            up.paused = True
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.up
        if up is not None and up.paused:
            up.paused = False
            up.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        del self.parser  # it holds bound methods of self: freed now, not by the cyclic GC
        up = self.up
        if up is not None:
            self.up = up.client = None
            up.transport.abort()  # mid-request: the connection cannot be reused
        self.proxy.finished(self)

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if self.url is None and len(url) <= self.proxy.limits.max_url:
            self.url = url
        else:
            self._more_url(url)

    def _more_url(self, url: bytes) -> None:
        """A URL in several pieces: gathered in a list (linear), its size checked per piece."""
        parts = self.url_parts
        if parts is None:
            parts = self.url_parts = [self.url] if self.url is not None else []
            self.url_len = len(self.url or b"")
        parts.append(url)
        self.url = parts[0]
        self.url_len += len(url)
        if self.url_len > self.proxy.limits.max_url:
            raise LimitExceeded(414, b"URI too long\n")

    def on_header(self, name: bytes, value: bytes) -> None:
        low = REQ_SPELLINGS.get(name, b"")
        if not low and (len(name) not in REQ_LENGTHS or (low := name.lower()) not in REQ_SPECIAL):
            self.head += (name, b": ", value, CRLF)
            if len(self.head) > self.proxy.max_items:
                raise LimitExceeded(431, b"too many header fields\n")
            return
        self.special.append((low, value))
        if len(self.special) > self.proxy.limits.max_headers:
            raise LimitExceeded(431, b"too many header fields\n")

    def on_headers_complete(self) -> None:
        self.head_size = 0
        self.head_t = 0.0
        if self.closing:  # more after the last request this connection serves
            self.url = self.url_parts = None
            self.head = [b""]
            self.special = []
            return
        p = self.parser
        proxy = self.proxy
        limits = proxy.limits
        if (len(self.head) >> 2) + len(self.special) > limits.max_headers:
            raise LimitExceeded(431, b"too many header fields\n")
        method = p.get_method()
        url = self.url if self.url_parts is None else b"".join(self.url_parts)
        routed = None
        if proxy.router is not None:  # the ingress: routed by host, sent in origin form
            routed = proxy.router(self.head, url or b"/", self)
            if url and url[:1] != b"/":
                url = origin_form(url)
        line = b"%s %s HTTP/1.1\r\n" % (method, url or b"/")
        head, chunked, body, ka = request_head(line, self.head, self.special, self.xff, proxy.proto_line)
        if len(head) > limits.max_head:  # the bytes read are counted per read; this, exactly
            raise LimitExceeded(431, b"request header fields too large\n")
        proxy.stats.requests += 1
        self.url = self.url_parts = None
        self.head = [b""]
        special = self.special
        if special:
            self.special = []
        keep_alive = p.should_keep_alive()
        # HTTP/1.0 keeps a connection only when asked to: no need to look otherwise
        http10 = (ka or not keep_alive) and p.get_http_version() != "1.1"
        r = self.parsing = Request(method, head, chunked, body, keep_alive, http10)
        r.routed = routed
        if p.should_upgrade():
            if body or method == b"CONNECT":
                raise BadMessage  # llhttp would parse its body as the next request
            asks_upgrade(self, r, special)
        if self.cur is None:
            self.cur = r
            self.dispatch(r, r.t0)
        else:
            if self.waiting is None:
                self.waiting = deque()
            self.waiting.append(r)
            self.pause(P_WAIT)

    def on_body(self, data: bytes) -> None:
        self.head_size = 0
        r = self.parsing
        if r is not None:
            r.has_body = True
            self._forward(r, b"%x\r\n%s\r\n" % (len(data), data) if r.chunked else data)

    def on_message_complete(self) -> None:
        r = self.parsing
        if r is None:
            return
        self.parsing = None
        if len(self.head) > 1 or self.special:  # trailers: not forwarded
            self.head = [b""]
            self.special = []
        if r.chunked:
            self._forward(r, CHUNK_END)
        if r.has_body:
            r.t_wait = _now()
        r.complete = True
        if r.answered:
            self._next(False)

    def _forward(self, r: Request, data: bytes) -> None:
        if r.answered:
            return
        up = self.up
        if up is not None and r is self.cur:
            self.proxy.send(up.transport, data)
            r.sent(data)
        else:
            if r.pending is None:
                r.pending = []
            r.pending.append(data)
            self.pause(P_WAIT)

    # -- reading flow control --------------------------------------------------------------

    def pause(self, why: int) -> None:
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= why

    def resume(self, why: int) -> None:
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and not self.transport.is_closing():
                self.transport.resume_reading()

    # -- serving a request -------------------------------------------------------------------

    def dispatch(self, r: Request, now: float, backend: Backend | None = None) -> None:
        """Send `r` to `backend` on a new connection, or to the next pick (pooled if can be)."""
        proxy = self.proxy
        if backend is None:
            routed, tried = r.routed, r.attempts.tried if r.attempts is not None else ()
            if routed is None:
                backend = proxy.balancer.pick(now, tried)
            elif (backend := routed.pick(now, tried)) is None and routed.balancer is None:
                self.answer(r, routed.status, routed.body, routed.extra)  # the router's own answer
                return
            if backend is None:
                self.no_backend(r, now)
                return
            idle = proxy.pool.get(backend.key)
            while idle:  # the connection used last: the least likely to be timed out
                up = idle.pop()
                up.pooled = False
                if (up.backend is backend or up.backend == backend) and not up.transport.is_closing():
                    self.link(up, True)
                    return
                up.transport.close()  # the replica behind the key changed
        self.task = proxy.loop.create_task(self._connect(r, backend))

    async def _connect(self, r: Request, backend: Backend) -> None:
        proxy = self.proxy
        up = _Upstream(proxy, backend)
        task = asyncio.current_task(proxy.loop)  # with the loop given: no getpid (Deadline)
        assert task is not None
        try:
            with Deadline(proxy.loop, task, proxy.connect_timeout):
                await proxy.loop.create_connection(up.itself, backend.address, backend.port)
        except TimeoutError:
            failure = Failure.CONNECT_TIMEOUT
        except OSError:
            failure = Failure.CONNECT_REFUSED
        else:
            self.task = None
            up.draining = backend in proxy.gone
            up.idle_since = _now()
            if self.lost or self.cur is not r:
                proxy.pool_put(up)  # fresh and unused
            else:
                self.link(up, False)
            return
        self.task = None
        if not self.lost and self.cur is r:
            self.failed(r, backend, failure)

    def link(self, up: Upstream, reused: bool) -> None:
        """Send the current request (head and what was read of the body) on `up`."""
        r = self.cur
        assert r is not None
        self.up = up
        up.client = self
        up.req = r
        up.reused = reused
        up.got = up.head_done = up.done = False
        t = up.transport
        if r.replay or r.pending:  # a retry, or a body read while connecting
            self.proxy.send(t, b"".join((r.head, *(r.replay or ()), *(r.pending or ()))))
            for piece in r.pending or ():
                r.sent(piece)
            r.pending = None
        else:  # Engine.send, inlined
            pending = self.proxy.pending
            if not pending:
                self.proxy.loop.call_soon(self.proxy.flush)
            pending.append((t, r.head))
        if self.write_paused:
            up.paused = True
            t.pause_reading()
        if self.paused & P_WAIT and not self.waiting:
            self.resume(P_WAIT)

    def _unlink(self, up: Upstream) -> None:
        self.up = up.client = up.req = None
        if up.paused:
            up.paused = False
            if not up.transport.is_closing():
                up.transport.resume_reading()
        if self.paused & P_FULL:
            self.resume(P_FULL)

    def _drop(self) -> None:
        """Refused (`reject`): nothing in flight goes on. A connect, a retry or a hold for a
        replica sees `cur` changed (a fresh connection is pooled, never sent on); the
        requests behind it are dropped."""
        self.cur = self.waiting = None

    def response_done(self, up: Upstream) -> None:
        """The backend's response was forwarded whole."""
        r = self.cur
        assert r is not None
        if up.paused or self.paused & P_FULL:
            self._unlink(up)
        else:  # the usual case, inlined
            self.up = up.client = up.req = None
        proxy = self.proxy
        if (
            up.keep
            and r.complete
            and not up.broken
            and not up.draining
            and not proxy.closing
            and not up.transport.get_write_buffer_size()
        ):
            idle = proxy.pool.get(up.backend.key)
            if idle is not None and len(idle) < POOL_SIZE:  # Engine.pool_put, inlined
                up.pooled = True
                idle.append(up)
            else:
                proxy.pool_put(up)
        else:
            up.transport.close()
        if (
            self.close_after
            or not r.complete
            or self.waiting
            or self.eof
            or self.closing
            or self.paused
            or proxy.closing
        ):
            self._next(self.close_after or not r.complete)
        else:
            self.cur = None  # _next with nothing to do
            self.idle_since = up.idle_since

    def _next(self, close: bool, linger: bool = False) -> None:
        """The current request is answered: go on with the next one, or close (`linger`:
        see `shut`)."""
        done, self.cur = self.cur, None
        self.idle_since = _now()
        if done is not None and done is self.upgrading:
            self.upgrading = None
            not_upgraded(self, close)
            return
        if close or self.proxy.closing or self.lost:
            self.shut(linger=linger)
            return
        waiting = self.waiting
        if waiting:
            r = self.cur = waiting.popleft()
            self.dispatch(r, _now())
        elif self.eof or self.closing:
            self.shut(linger=True)  # closing: what it sent after these cannot be read
        elif self.paused & P_WAIT:
            self.resume(P_WAIT)

    def upgraded(self, up: Upstream, to_client: bytes) -> None:
        upgraded(self, up, to_client)  # node.proxy.http_upgrade
