"""What ends a request of the L7 engine other than a forwarded response: retries,
the proxy's own answers (502, 503, 504, 408 and those of `reject`), cut connections;
and what a client connection holds (`buffered`).

`_Outcomes` is a part of `node.proxy.http_conn._Client` (a mixin, for the size of the
modules): the methods here are called by the client's own callbacks, by its backend
connection (`node.proxy.http_upstream._Upstream`) and by its `sweep`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from node.proxy.balancer import IDEMPOTENT_METHODS, Backend, Failure
from node.proxy.heads import CHUNK_END, BadMessage, error_response
from node.proxy.http_tunnel import Tunnel
from node.proxy.http_types import Engine, Request, Upstream

log = logging.getLogger("node.proxy.http_conn")
COLD_RETRY = 0.1  # s between two tries of a request at a replica just started from zero (issue 15)

_now = time.monotonic


class _Outcomes:
    """The failure paths of a client connection (see the module's docstring)."""

    __slots__ = ()
    # set by _Client
    proxy: Engine
    transport: asyncio.Transport
    cur: Request | None
    up: Upstream | None
    closing: bool
    close_after: bool
    lost: bool
    waiting: deque[Request] | None
    tunnel: Tunnel | None
    task: asyncio.Task[None] | None

    def dispatch(self, r: Request, now: float, backend: Backend | None = None) -> None:
        raise NotImplementedError  # _Client's

    def _next(self, close: bool, linger: bool = False) -> None:
        raise NotImplementedError  # _Client's

    def _unlink(self, up: Upstream) -> None:
        raise NotImplementedError  # _Client's

    def _drop(self) -> None:
        raise NotImplementedError  # _Client's

    def shut(self, abort: bool = False, linger: bool = False) -> None:
        raise NotImplementedError  # _Client's

    def buffered(self) -> int:
        """Bytes held for this connection: write buffers, and bodies read ahead of their
        backend connection."""
        if self.tunnel is not None:
            return self.tunnel.buffered()
        total = 0 if self.lost else self.transport.get_write_buffer_size()
        up = self.up
        if up is not None and not up.transport.is_closing():
            total += up.transport.get_write_buffer_size()
        for r in (self.cur, *(self.waiting or ())):
            if r is not None and r.pending:
                total += sum(map(len, r.pending))
        return total

    def failed(self, r: Request, backend: Backend, failure: Failure, reached: bool = False) -> None:
        """An attempt at `backend` failed before any response: retry as the policy allows."""
        proxy = self.proxy
        now = _now()
        proxy.report_failure(backend, now)
        r.reached = r.reached or reached
        if r.attempts is None:
            r.attempts = proxy.retry.start(r.method.decode("latin-1"))
        if r.attempts.failed(backend, failure) and r.replay is not None:
            proxy.stats.retries += 1
            self.dispatch(r, now)
        else:
            self.no_backend(r, now)

    def no_backend(self, r: Request, now: float) -> None:
        """No replica to send `r` to: held or tried again while its service starts from zero
        (issue 15, `node.proxy.coldstart`), else answered 502 or 503 (`fail`)."""
        cold = self.proxy.cold
        if cold is not None and r.cold_until > now and r.replay is not None:
            # released from a hold: its replica may not listen yet, or is gone again
            cold.later(self.cold_retry(r) if len(self.proxy.balancer) else self.await_replica(r))
        elif cold is not None and r.attempts is None and cold.now():
            cold.later(self.await_replica(r))
        else:
            self.fail(r)

    async def await_replica(self, r: Request) -> None:
        """`r` came while its service has no replica and may scale from zero: sent on once
        one is routable, 503 after the service's cold start timeout (issue 15)."""
        proxy = self.proxy
        if proxy.cold is None:
            return self.fail(r)
        r.cold_until = r.cold_until or _now() + proxy.cold.timeout()
        routable = await proxy.cold.wait()
        if self.lost or self.cur is not r:
            return None
        if routable:
            r.attempts = None
            self.dispatch(r, _now())
        else:
            self.fail(r)
        return None

    async def cold_retry(self, r: Request) -> None:
        """A request released from a hold whose new replica failed before answering (not
        listening yet: Docker's port proxy accepts for it): tried again `COLD_RETRY` later on
        the first replica of the set, ejected or not, until its cold start deadline."""
        await asyncio.sleep(COLD_RETRY)
        if self.lost or self.cur is not r:
            return
        r.attempts = None
        backends = self.proxy.balancer.backends
        self.dispatch(r, _now(), backends[0] if backends else None)

    def fail(self, r: Request) -> None:
        """No backend left to try: 502 if one was reached and failed, else 503."""
        proxy = self.proxy
        msgs = r.routed or proxy  # a routed request's messages name its service
        if r.reached:
            self.answer(r, 502, msgs.msg_502)
        else:
            proxy.stats.no_backend += 1
            self.answer(r, 503, msgs.msg_503)

    def answer(self, r: Request, status: int, body: bytes, extra: bytes = b"") -> None:
        """Answer the current request with an error of the proxy's own (or a router's answer)."""
        self.proxy.stats.errors += 1
        close = not r.keep_alive or self.proxy.closing or (not r.complete and r.expects_body)
        self.proxy.send(self.transport, error_response(status, body, close, r.method == b"HEAD", extra))
        if close or r.complete:
            self._next(close, linger=not r.complete)
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
        self._drop()
        self.proxy.send(self.transport, error_response(status, body, True))
        self.shut(linger=True)  # what was not read may still be coming

    def too_slow(self, why: bytes) -> None:
        """The head, or the body being read, came too slowly: 408 and close."""
        self.proxy.stats.timeouts += 1
        self.reject(408, why)

    def timed_out(self, up: Upstream) -> None:
        r = self.cur
        assert r is not None
        self._unlink(up)
        up.transport.abort()
        self.proxy.report_failure(up.backend, _now())
        self.answer(r, 504, (r.routed or self.proxy).msg_504)

    def upstream_lost(self, up: Upstream, exc: Exception | None) -> None:
        """`up` closed while serving the current request."""
        r = self.cur
        assert r is not None
        self._unlink(up)
        if up.head_done:
            if up.until_eof and exc is None:  # that is the end of the body
                if up.chunk_out:
                    self.proxy.send(self.transport, CHUNK_END)
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

    def bad_response(self, up: Upstream, exc: Exception) -> None:
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
