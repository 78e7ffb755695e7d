"""The two protocols of the L7 engine (`node.proxy.http`), a client connection and a
backend connection, and the heads written between them.

`_Client` parses requests with llhttp (`httptools.HttpRequestParser`), `_Upstream`
parses responses (`HttpResponseParser`); both are `asyncio.Protocol`s whose callbacks
write into the other side's transport (through `HttpProxy._send`, which makes the
writes of a loop iteration after all its reads). Heads are rebuilt as their headers
arrive (hop-by-hop ones dropped, `X-Forwarded-*` added, framing re-declared); bodies
are forwarded as they arrive, re-chunked when the framing changes. `HttpProxy` owns the
listener, the pool of idle backend connections, the write queue and the timers.

The hot path (a keep-alive request on a pooled backend connection) is written for
speed: no task, no timer, one write per read, few calls (some helpers are inlined
there, said where), no reference cycle left behind a closed connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser

from node.proxy.balancer import IDEMPOTENT_METHODS, Attempts, Backend, Failure

if TYPE_CHECKING:
    from node.proxy.http import HttpProxy

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024
"""Bytes buffered in one transport before its producer stops reading."""
LOW_WATER = 64 * 1024
"""Bytes under which the producer reads again."""
REPLAY_LIMIT = 64 * 1024
"""Request body bytes kept to send again on another connection; a bigger body never is."""
POOL_SIZE = 64
"""Idle connections kept per backend."""
POOL_IDLE = 4.0
"""Seconds an idle backend connection is kept (under the 5 s keep-alive of many app servers)."""
CLIENT_IDLE = 60.0
"""Seconds a client connection may stay without a request being served (idle keep-alive,
or a head coming too slowly) before it is closed."""

_now = time.monotonic

HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)
"""Headers about one connection only (and any header Connection names): never forwarded.
Transfer-Encoding and Content-Length are re-declared from the framing the proxy uses."""
_REQ_SPECIAL = HOP_BY_HOP | {b"content-length", b"x-forwarded-for", b"x-forwarded-proto"}
_RESP_SPECIAL = HOP_BY_HOP | {b"content-length"}
# name as sent -> lowercase, for the usual spellings of special headers: most headers are
# classified by one dict lookup (and a length test), without lowercasing them
_REQ_SPELLINGS = {v: n for n in _REQ_SPECIAL for v in (n, n.title(), n.upper())}
_RESP_SPELLINGS = {v: n for n in _RESP_SPECIAL for v in (n, n.title(), n.upper())}
_REQ_LENGTHS = frozenset(map(len, _REQ_SPECIAL))
_RESP_LENGTHS = frozenset(map(len, _RESP_SPECIAL))
_NOT_HEADERS = frozenset((b"close", b"keep-alive", b"upgrade"))  # Connection tokens naming no header

_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CHUNK_END = b"0\r\n\r\n"
_CRLF = b"\r\n"

# why a client connection stops reading (bits of `_Client.paused`)
_P_WAIT = 1  # what is read cannot be forwarded yet (no backend connection yet, or pipelined)
_P_FULL = 2  # the backend connection's write buffer is over HIGH_WATER

Special = list[tuple[bytes, bytes]]  # (lowercase name, value) of the special headers of a head


class BadMessage(Exception):
    """A message llhttp accepts but the proxy will not forward."""


# -- heads -------------------------------------------------------------------------------------
# A head being built is a list: [first line, then name, ": ", value, CRLF for each header
# forwarded]; the special headers are kept aside and decided on once the head is whole.


def _drop_named(head: list[bytes], connection: bytes) -> None:
    """Remove from `head` the headers a Connection header names."""
    named = {t.strip().lower() for t in connection.split(b",")} - _NOT_HEADERS
    if named:
        kept = head[:1]
        for i in range(1, len(head), 4):
            if head[i].lower() not in named:
                kept += head[i : i + 4]
        head[:] = kept


def request_head(
    line: bytes, head: list[bytes], special: Special, xff: bytes, proto: bytes
) -> tuple[bytes, bool, bool, bool]:
    """(head for the backend, body is chunked, a body may follow, keep-alive asked for).

    `xff` is the client's address, `proto` the whole X-Forwarded-Proto line.
    """
    head[0] = line
    if not special:
        head += (b"X-Forwarded-For: ", xff, _CRLF, proto, _CRLF)
        return b"".join(head), False, False, False
    length = connection = forwarded = None
    chunked = False
    for low, value in special:
        if low == b"content-length":
            length = value
        elif low == b"transfer-encoding":
            chunked = True  # llhttp refuses a request whose last coding is not chunked
        elif low == b"connection":
            connection = value if connection is None else connection + b", " + value
        elif low == b"x-forwarded-for":
            forwarded = value if forwarded is None else forwarded + b", " + value
    if connection is not None and connection.lower() not in _NOT_HEADERS:
        _drop_named(head, connection)
    if length is not None:
        head += (b"Content-Length: ", length, _CRLF)
    elif chunked:
        head.append(b"Transfer-Encoding: chunked\r\n")
    if forwarded is not None:
        xff = forwarded + b", " + xff
    head += (b"X-Forwarded-For: ", xff, _CRLF, proto, _CRLF)
    body = chunked or (length is not None and length.strip() != b"0")
    keep_alive = connection is not None and b"keep-alive" in connection.lower()
    return b"".join(head), chunked, body, keep_alive


def response_head(
    status: int, head: list[bytes], special: Special, http10: bool, no_body: bool, close: bool
) -> tuple[bytes, bool, bool, bool]:
    """(head for the client, re-chunk the body, the body ends at EOF, close the client after).

    `no_body`: the answer to a HEAD, or a status without a body; `close`: the client
    connection is closed after this response, whatever the backend said. A body of
    unknown length goes chunked to a client that stays, as is to one that is closed.
    """
    head[0] = _STATUS.get(status) or b"HTTP/1.1 %d \r\n" % status
    length = coding = connection = None
    for low, value in special:
        if low == b"content-length":
            length = value
        elif low == b"connection":
            connection = value if connection is None else connection + b", " + value
        elif low == b"transfer-encoding":
            coding = value if coding is None else coding + b", " + value
    if connection is not None and connection.lower() not in _NOT_HEADERS:
        _drop_named(head, connection)
    if length is not None:
        head += (b"Content-Length: ", length, _CRLF)
    chunk_out = until_eof = False
    if not no_body and (length is None or coding is not None):
        chunked_in = coding is not None and coding.rstrip().lower().endswith(b"chunked")
        until_eof = not chunked_in
        if http10:
            close = True  # an HTTP/1.0 client reads such a body until the connection closes
        if not close:
            chunk_out = True
            head.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        head.append(b"Connection: close\r\n\r\n")
    elif http10:
        head.append(b"Connection: keep-alive\r\n\r\n")
    else:
        head.append(_CRLF)
    return b"".join(head), chunk_out, until_eof, close


def error_response(status: int, body: bytes, close: bool, head_only: bool = False) -> bytes:
    return b"".join((
        _STATUS[status],
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
        b"Connection: close\r\n\r\n" if close else _CRLF,
        b"" if head_only else body,
    ))  # fmt: skip


# -- requests and client connections ---------------------------------------------------------


class _Request:
    """One request read from a client: its rebuilt head and the state of its body."""

    __slots__ = (
        "answered", "attempts", "body_sent", "chunked", "complete", "expects_body", "has_body", "head",
        "http10", "keep_alive", "method", "pending", "reached", "replay", "replay_size", "t0", "t_wait",
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

    def sent(self, data: bytes) -> None:
        self.body_sent = True
        if self.replay is not None:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            else:
                self.replay.append(data)


class _Client(asyncio.Protocol):
    """One client connection: its requests are served one at a time, in order."""

    __slots__ = (
        "close_after", "closing", "cur", "eof", "head", "idle_since", "lost", "parser", "parsing", "paused",
        "proxy", "special", "task", "transport", "up", "url", "waiting", "write_paused", "xff",
    )  # fmt: skip

    def __init__(self, proxy: HttpProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.parser = HttpRequestParser(self)
        self.url: bytes | None = None  # of the head being read
        self.head: list[bytes] = [b""]  # of the head being read
        self.special: Special = []
        self.parsing: _Request | None = None  # the request whose body is being read
        self.cur: _Request | None = None  # the request being served
        self.waiting: deque[_Request] | None = None  # pipelined behind `cur`
        self.up: _Upstream | None = None  # the backend connection serving `cur`
        self.task: asyncio.Task[None] | None = None  # connecting for `cur`
        self.paused = 0
        self.write_paused = False
        self.close_after = False
        self.eof = self.lost = self.closing = False
        self.xff = b""
        self.idle_since = _now()  # no request served since

    def shut(self, abort: bool = False) -> None:
        """Close the connection (after what is buffered is sent, unless `abort`): no
        request read after this is served."""
        self.closing = True
        if abort:
            self.transport.abort()
        else:
            self.proxy._send(self.transport, None)  # closes it after what is queued for it

    def idle(self) -> bool:
        """Between requests (keep-alive): nothing read, nothing to answer."""
        return self.cur is None and self.parsing is None and self.url is None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        peer = t.get_extra_info("peername")
        self.xff = str(peer[0]).encode() if peer else b"unknown"
        self.proxy._accepted(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as up:  # the Upgrade was dropped: parse on as HTTP
            self.parser = HttpRequestParser(self)
            self.data_received(data[up.args[0] :])
        except HttpParserError as exc:
            if not isinstance(exc.__context__, BadMessage | None):
                log.error("http proxy: request callback failed", exc_info=exc.__context__)
            if self.cur is not None and self.parsing is None:
                # what follows the requests read whole cannot be read (data after a
                # `Connection: close` one, say): serve those, then close
                self.closing = True
                self._pause(_P_WAIT)
            else:
                self.reject(400, b"bad request\n")

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
        self.proxy._finished(self)

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url = url if self.url is None else self.url + url

    def on_header(self, name: bytes, value: bytes) -> None:
        low = _REQ_SPELLINGS.get(name, b"")
        if not low and (len(name) not in _REQ_LENGTHS or (low := name.lower()) not in _REQ_SPECIAL):
            self.head += (name, b": ", value, _CRLF)
            return
        self.special.append((low, value))

    def on_headers_complete(self) -> None:
        if self.closing:  # more after the last request this connection serves
            self.url = None
            self.head = [b""]
            self.special = []
            return
        p = self.parser
        proxy = self.proxy
        proxy.stats.requests += 1
        method = p.get_method()
        line = b"%s %s HTTP/1.1\r\n" % (method, self.url or b"/")
        head, chunked, body, ka = request_head(line, self.head, self.special, self.xff, proxy.proto_line)
        self.url = None
        self.head = [b""]
        if self.special:
            self.special = []
        keep_alive = p.should_keep_alive()
        # HTTP/1.0 keeps a connection only when asked to: no need to look otherwise
        http10 = (ka or not keep_alive) and p.get_http_version() != "1.1"
        r = self.parsing = _Request(method, head, chunked, body, keep_alive, http10)
        if p.should_upgrade() and (body or method == b"CONNECT"):
            raise BadMessage  # llhttp would parse its body as the next request
        if self.cur is None:
            self.cur = r
            self.dispatch(r, r.t0)
        else:
            if self.waiting is None:
                self.waiting = deque()
            self.waiting.append(r)
            self._pause(_P_WAIT)

    def on_body(self, data: bytes) -> None:
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
            self._forward(r, _CHUNK_END)
        if r.has_body:
            r.t_wait = _now()
        r.complete = True
        if r.answered:
            self._next(False)

    def _forward(self, r: _Request, data: bytes) -> None:
        if r.answered:
            return
        up = self.up
        if up is not None and r is self.cur:
            self.proxy._send(up.transport, data)
            r.sent(data)
        else:
            if r.pending is None:
                r.pending = []
            r.pending.append(data)
            self._pause(_P_WAIT)

    # -- reading flow control --------------------------------------------------------------

    def _pause(self, why: int) -> None:
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= why

    def _resume(self, why: int) -> None:
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and not self.transport.is_closing():
                self.transport.resume_reading()

    # -- serving a request -------------------------------------------------------------------

    def dispatch(self, r: _Request, now: float, backend: Backend | None = None) -> None:
        """Send `r` to `backend` on a new connection, or to the next pick (pooled if can be)."""
        proxy = self.proxy
        if backend is None:
            backend = proxy.balancer.pick(now, r.attempts.tried if r.attempts is not None else ())
            if backend is None:
                self.fail(r)
                return
            idle = proxy._pool.get(backend.key)
            while idle:  # the connection used last: the least likely to be timed out
                up = idle.pop()
                up.pooled = False
                if (up.backend is backend or up.backend == backend) and not up.transport.is_closing():
                    self.link(up, True)
                    return
                up.transport.close()  # the replica behind the key changed
        self.task = proxy._loop.create_task(self._connect(r, backend))

    async def _connect(self, r: _Request, backend: Backend) -> None:
        proxy = self.proxy
        up = _Upstream(proxy, backend)
        try:
            async with asyncio.timeout(proxy.connect_timeout):
                await proxy._loop.create_connection(up.itself, backend.address, backend.port)
        except TimeoutError:
            failure = Failure.CONNECT_TIMEOUT
        except OSError:
            failure = Failure.CONNECT_REFUSED
        else:
            self.task = None
            up.draining = backend in proxy._gone
            up.idle_since = _now()
            if self.lost or self.cur is not r:
                proxy._pool_put(up)  # fresh and unused
            else:
                self.link(up, False)
            return
        self.task = None
        if not self.lost and self.cur is r:
            self.failed(r, backend, failure)

    def link(self, up: _Upstream, reused: bool) -> None:
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
            self.proxy._send(t, b"".join((r.head, *(r.replay or ()), *(r.pending or ()))))
            for piece in r.pending or ():
                r.sent(piece)
            r.pending = None
        else:  # HttpProxy._send, inlined
            pending = self.proxy._pending
            if not pending:
                self.proxy._loop.call_soon(self.proxy._flush)
            pending.append((t, r.head))
        if self.write_paused:
            up.paused = True
            t.pause_reading()
        if self.paused & _P_WAIT and not self.waiting:
            self._resume(_P_WAIT)

    def _unlink(self, up: _Upstream) -> None:
        self.up = up.client = up.req = None
        if up.paused:
            up.paused = False
            if not up.transport.is_closing():
                up.transport.resume_reading()
        if self.paused & _P_FULL:
            self._resume(_P_FULL)

    def response_done(self, up: _Upstream) -> None:
        """The backend's response was forwarded whole."""
        r = self.cur
        assert r is not None
        if up.paused or self.paused & _P_FULL:
            self._unlink(up)
        else:  # the usual case, inlined
            self.up = up.client = up.req = None
        proxy = self.proxy
        if (
            up.keep
            and r.complete
            and not up.broken
            and not up.draining
            and not proxy._closing
            and not up.transport.get_write_buffer_size()
        ):
            idle = proxy._pool.get(up.backend.key)
            if idle is not None and len(idle) < POOL_SIZE:  # HttpProxy._pool_put, inlined
                up.pooled = True
                idle.append(up)
            else:
                proxy._pool_put(up)
        else:
            up.transport.close()
        if (
            self.close_after
            or not r.complete
            or self.waiting
            or self.eof
            or self.closing
            or self.paused
            or proxy._closing
        ):
            self._next(self.close_after or not r.complete)
        else:
            self.cur = None  # _next with nothing to do
            self.idle_since = up.idle_since

    def _next(self, close: bool) -> None:
        """The current request is answered: go on with the next one, or close."""
        self.cur = None
        self.idle_since = _now()
        if close or self.proxy._closing or self.lost:
            self.shut()
            return
        waiting = self.waiting
        if waiting:
            r = self.cur = waiting.popleft()
            self.dispatch(r, _now())
        elif self.eof or self.closing:
            self.shut()
        elif self.paused & _P_WAIT:
            self._resume(_P_WAIT)

    # -- failures ----------------------------------------------------------------------------

    def failed(self, r: _Request, backend: Backend, failure: Failure, reached: bool = False) -> None:
        """An attempt at `backend` failed before any response: retry as the policy allows."""
        proxy = self.proxy
        now = _now()
        proxy._report_failure(backend, now)
        r.reached = r.reached or reached
        if r.attempts is None:
            r.attempts = proxy.retry.start(r.method.decode("latin-1"))
        if r.attempts.failed(backend, failure) and r.replay is not None:
            proxy.stats.retries += 1
            self.dispatch(r, now)
        else:
            self.fail(r)

    def fail(self, r: _Request) -> None:
        """No backend left to try: 502 if one was reached and failed, else 503."""
        proxy = self.proxy
        if r.reached:
            self.answer(r, 502, proxy.msg_502)
        else:
            proxy.stats.no_backend += 1
            self.answer(r, 503, proxy.msg_503)

    def answer(self, r: _Request, status: int, body: bytes) -> None:
        """Answer the current request with an error of the proxy's own."""
        self.proxy.stats.errors += 1
        close = not r.keep_alive or self.proxy._closing or (not r.complete and r.expects_body)
        self.proxy._send(self.transport, error_response(status, body, close, r.method == b"HEAD"))
        if close or r.complete:
            self._next(close)
        else:  # answered from on_headers_complete: on_message_complete follows at once
            r.answered = True

    def reject(self, status: int, body: bytes) -> None:
        """A request that cannot be served: answer it (unless a response is under way) and close."""
        if self.closing:
            return
        self.proxy.stats.errors += 1
        up = self.up
        if up is not None:
            head_done = up.head_done
            self._unlink(up)
            up.transport.abort()
            if head_done:  # a response is being forwarded: nothing else can be said
                self.shut(abort=True)
                return
        self.proxy._send(self.transport, error_response(status, body, True))
        self.shut()

    def timed_out(self, up: _Upstream) -> None:
        r = self.cur
        assert r is not None
        self._unlink(up)
        up.transport.abort()
        self.proxy._report_failure(up.backend, _now())
        self.answer(r, 504, self.proxy.msg_504)

    def upstream_lost(self, up: _Upstream, exc: Exception | None) -> None:
        """`up` closed while serving the current request."""
        r = self.cur
        assert r is not None
        self._unlink(up)
        if up.head_done:
            if up.until_eof and exc is None:  # that is the end of the body
                if up.chunk_out:
                    self.proxy._send(self.transport, _CHUNK_END)
                self._next(self.close_after or not r.complete)
            else:  # truncated: the client sees the body end short
                self.proxy.stats.errors += 1
                self.shut()
            return
        if up.got:  # part of a head
            self.failed(r, up.backend, Failure.OTHER, reached=True)
        elif (
            up.reused
            and r.replay is not None
            and not up.draining
            and (not r.body_sent or r.method.decode("latin-1") in IDEMPOTENT_METHODS)
        ):  # a pooled connection the backend had closed (keep-alive timeout): its not its fault
            self.dispatch(r, _now(), up.backend)
        else:
            self.failed(r, up.backend, Failure.CLOSED_BEFORE_RESPONSE, reached=True)

    def bad_response(self, up: _Upstream, exc: HttpParserError) -> None:
        if not isinstance(exc.__context__, BadMessage | None):
            log.error("http proxy: response callback failed", exc_info=exc.__context__)
        r = self.cur
        assert r is not None
        head_done = up.head_done
        self._unlink(up)
        up.transport.abort()
        if head_done:
            self.proxy.stats.errors += 1
            self.shut(abort=True)
        else:
            self.failed(r, up.backend, Failure.OTHER, reached=True)


# -- backend connections -------------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    """One connection to a backend: one request at a time, pooled between them."""

    __slots__ = (
        "backend", "broken", "chunk_out", "client", "done", "draining", "got", "head", "head_done",
        "idle_since", "keep", "out", "parser", "paused", "pooled", "proxy", "req", "reused", "special",
        "transport", "until_eof",
    )  # fmt: skip

    def __init__(self, proxy: HttpProxy, backend: Backend) -> None:
        self.proxy = proxy
        self.backend = backend
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.parser = HttpResponseParser(self)
        self.head: list[bytes] = [b""]  # of the response head being read
        self.special: Special = []
        self.out: list[bytes] = []  # for the client, written once the read is parsed
        self.client: _Client | None = None
        self.req: _Request | None = None
        self.reused = self.got = self.head_done = self.done = False
        self.chunk_out = self.until_eof = self.keep = False
        self.broken = self.draining = self.paused = self.pooled = False
        self.idle_since = 0.0  # last used

    def itself(self) -> _Upstream:
        return self

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        c = self.client
        if c is None:  # idle: nothing is expected (a 408 before closing, say)
            self.transport.abort()
            return
        self.got = True
        out = self.out
        try:
            self.parser.feed_data(data)
        except HttpParserError as exc:
            out.clear()
            c.bad_response(self, exc)
            return
        if out:  # what this read produced, in one write (HttpProxy._send, inlined)
            pending = self.proxy._pending
            if not pending:
                self.proxy._loop.call_soon(self.proxy._flush)
            pending.append((c.transport, out[0] if len(out) == 1 else b"".join(out)))
            out.clear()
        if self.done:
            c.response_done(self)

    def eof_received(self) -> bool:
        return False  # close: connection_lost tells the client

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client._pause(_P_FULL)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client._resume(_P_FULL)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        del self.parser  # it holds bound methods of self: freed now, not by the cyclic GC
        if self.client is not None:
            self.client.upstream_lost(self, exc)
        elif self.pooled:
            self.proxy._pool_discard(self)

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        low = _RESP_SPELLINGS.get(name, b"")
        if not low and (len(name) not in _RESP_LENGTHS or (low := name.lower()) not in _RESP_SPECIAL):
            self.head += (name, b": ", value, _CRLF)
            return
        self.special.append((low, value))

    def on_headers_complete(self) -> None:
        c, r = self.client, self.req
        assert c is not None and r is not None
        p = self.parser
        status = p.get_status_code()
        head, special = self.head, self.special
        self.head = [b""]
        self.special = []
        if status < 200:
            if status == 101:
                raise BadMessage  # never asked for: Upgrade is not forwarded
            if not r.http10:  # 100 Continue and the like
                self.out.append(response_head(status, head, special, False, True, False)[0])
            return
        proxy = c.proxy
        now = self.idle_since = _now()
        latency = proxy.stats.latency  # Histogram.observe, inlined
        latency.counts[bisect_left(latency.bounds, now - r.t0)] += 1
        latency.total += now - r.t0
        if proxy._failing:
            proxy._report_ok(self.backend, now)
        is_head = r.method == b"HEAD"
        head_bytes, self.chunk_out, self.until_eof, c.close_after = response_head(
            status,
            head,
            special,
            r.http10,
            is_head or status == 204 or status == 304,
            not r.keep_alive or c.eof or proxy._closing,
        )
        self.head_done = True
        self.keep = p.should_keep_alive()
        self.out.append(head_bytes)
        if is_head:  # llhttp would wait for the body Content-Length announces
            self.done = True
            self.parser = HttpResponseParser(self)

    def on_body(self, data: bytes) -> None:
        if self.done:
            self.broken = True  # more than the response: not reused
        elif self.chunk_out:
            self.out += (b"%x\r\n" % len(data), data, _CRLF)
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        if len(self.head) > 1 or self.special:  # trailers: not forwarded
            self.head = [b""]
            self.special = []
        if self.done or not self.head_done:
            return  # the end of a 1xx, or of a HEAD response already complete
        if self.chunk_out:
            self.out.append(_CHUNK_END)
        self.done = True
