"""The backend side of the L7 engine: one connection to a replica, one request at a
time, pooled between requests (`HttpProxy.pool`).

`_Upstream` parses responses with llhttp (`httptools.HttpResponseParser`) and writes
what it reads into its client's transport (a `node.proxy.http_types.Client`), the head
rewritten by `node.proxy.heads.response_head`, the body re-chunked when the framing
changes. Written for speed like the client side: no task, no timer, one write per read.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from typing import cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from node.proxy.balancer import Backend
from node.proxy.heads import (
    CHUNK_END,
    CRLF,
    RESP_LENGTHS,
    RESP_SPECIAL,
    RESP_SPELLINGS,
    BadMessage,
    Special,
    response_head,
    upgrade_value,
    with_upgrade,
)
from node.proxy.http_types import HIGH_WATER, LOW_WATER, P_FULL, Client, Engine, Request

_now = time.monotonic


class _Upstream(asyncio.Protocol):
    """One connection to a backend: one request at a time, pooled between them."""

    __slots__ = (
        "backend", "broken", "chunk_out", "client", "done", "draining", "got", "head", "head_done",
        "idle_since", "keep", "out", "parser", "paused", "pooled", "proxy", "req", "reused", "special",
        "transport", "until_eof",
    )  # fmt: skip

    def __init__(self, proxy: Engine, backend: Backend) -> None:
        self.proxy = proxy
        self.backend = backend
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.parser = HttpResponseParser(self)
        self.head: list[bytes] = [b""]  # of the response head being read
        self.special: Special = []
        self.out: list[bytes] = []  # for the client, written once the read is parsed
        self.client: Client | None = None
        self.req: Request | None = None
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
            if not self.done:
                out.clear()
                c.bad_response(self, exc)
                return
            self.broken = True  # bytes after the whole response (on_message_begin): dropped
        except HttpParserUpgrade as upg:  # a 101 asked for: the rest is the tunnel's
            head = b"".join(out)
            out.clear()
            del self.parser
            c.upgraded(self, head + data[upg.args[0] :])
            return
        if out:  # what this read produced, in one write (Engine.send, inlined)
            pending = self.proxy.pending
            if not pending:
                self.proxy.loop.call_soon(self.proxy.flush)
            pending.append((c.transport, out[0] if len(out) == 1 else b"".join(out)))
            out.clear()
        if self.done:
            c.response_done(self)

    def eof_received(self) -> bool:
        return False  # close: connection_lost tells the client

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause(P_FULL)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume(P_FULL)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        del self.parser  # it holds bound methods of self: freed now, not by the cyclic GC
        if self.client is not None:
            self.client.upstream_lost(self, exc)
        elif self.pooled:
            self.proxy.pool_discard(self)

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A byte other than CR or LF after the response was read whole is no response to
        anything: parsing stops (data_received forwards the response, the connection is
        not reused), lest it be taken for the answer to the next request sent here."""
        if self.done:
            raise BadMessage

    def on_header(self, name: bytes, value: bytes) -> None:
        low = RESP_SPELLINGS.get(name, b"")
        if not low and (len(name) not in RESP_LENGTHS or (low := name.lower()) not in RESP_SPECIAL):
            self.head += (name, b": ", value, CRLF)
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
                if r.upgrade is None or not p.should_upgrade():
                    raise BadMessage  # not asked for, or not saying to what
                self._switching(head, special)
                return
            if not r.http10:  # 100 Continue and the like
                self.out.append(response_head(status, head, special, False, True, False)[0])
            return
        proxy = self.proxy
        now = self.idle_since = _now()
        latency = proxy.stats.latency  # Histogram.observe, inlined
        latency.counts[bisect_left(latency.bounds, now - r.t0)] += 1
        latency.total += now - r.t0
        if proxy.failing:  # Engine.report_ok's first test, inlined
            proxy.report_ok(self.backend, now)
        is_head = r.method == b"HEAD"
        if r.routed is not None and r.routed.set_cookie:  # a sticky session's (node.proxy.ingress)
            head += (b"Set-Cookie", b": ", r.routed.set_cookie, b"\r\n")
        head_bytes, self.chunk_out, self.until_eof, c.close_after = response_head(
            status,
            head,
            special,
            r.http10,
            is_head or status == 204 or status == 304,
            not r.keep_alive or c.eof or proxy.closing,
        )
        self.head_done = True
        self.keep = p.should_keep_alive()
        self.out.append(head_bytes)
        if is_head:  # llhttp would wait for the body Content-Length announces
            self.done = True
            self.parser = HttpResponseParser(self)

    def _switching(self, head: list[bytes], special: Special) -> None:
        """A 101 to an upgrade asked for: forward its head, Upgrade kept; llhttp then
        stops (HttpParserUpgrade, see data_received) and the rest is tunnel bytes."""
        c, r = self.client, self.req
        assert c is not None and r is not None
        upgrade = upgrade_value(special) or r.upgrade or b""
        head_bytes = response_head(101, head, special, False, True, False)[0]
        self.out.append(with_upgrade(head_bytes, upgrade))
        self.head_done = True
        now = self.idle_since = _now()
        self.proxy.stats.latency.observe(now - r.t0)
        if self.proxy.failing:
            self.proxy.report_ok(self.backend, now)

    def on_body(self, data: bytes) -> None:
        if self.done:
            self.broken = True  # more than the response: not reused
        elif self.chunk_out:
            self.out += (b"%x\r\n" % len(data), data, CRLF)
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        if len(self.head) > 1 or self.special:  # trailers: not forwarded
            self.head = [b""]
            self.special = []
        if self.done or not self.head_done:
            return  # the end of a 1xx, or of a HEAD response already complete
        if self.chunk_out:
            self.out.append(CHUNK_END)
        self.done = True
