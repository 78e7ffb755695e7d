"""The two kinds of connection of the h2c engine and the streams relayed between them.

A client connection (`H2Client`) speaks HTTP/2 without TLS (h2c, prior knowledge: what
gRPC clients do) to the published port. Each stream it opens is one request: a `Stream`
record the engine (`node.proxy.h2_proxy`) sends to a replica it picks for that stream
alone, on one of a few multiplexed connections to that replica (`H2Upstream`). From
then on frames are relayed one to one: the response head, data both ways, trailers
(gRPC's `grpc-status`), the end of each direction, and resets with their error code.

The engine is seen here only through `Engine` (below), so this module never imports it.

Abuse of HTTP/2 itself: a client resetting the streams it opens before they are answered
(rapid reset, CVE-2023-44487: each one is a request to a replica) past `RESET_BURST` gets
GOAWAY ENHANCE_YOUR_CALM and is closed, as nginx and Go's server do; while a client's
socket backs up, nothing more is read from it (h2 answers PING and SETTINGS on its own);
an h2 error raised while handling one stream resets that stream, not the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Protocol, cast

from h2 import events as ev
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, NoAvailableStreamIDError, ProtocolError
from hyperframe.frame import GoAwayFrame

from node.proxy.balancer import Attempts, Backend, Failure, RetryPolicy
from node.proxy.h2_peer import MAX_STREAMS, Ack, H2Peer, Headers, release

log = logging.getLogger(__name__)

_now = time.monotonic
CAPACITY = 100
"""Streams open at once on one backend connection (or the replica's own limit, if lower)."""
RESET_BURST = 2 * MAX_STREAMS
"""Resets by a client of streams not yet answered, beyond the streams it had answered, that
one client connection may send within `RESET_WINDOW` s (HTTP/2 rapid reset, CVE-2023-44487)."""
RESET_WINDOW = 10.0


class Stream:
    """One request stream: its client end, and its replica end once picked."""

    __slots__ = (
        "attempts", "backend", "cid", "client", "held", "in_done", "out_done", "request", "responded",
        "t0", "trailers", "uid", "up",
    )  # fmt: skip

    def __init__(self, client: H2Client, cid: int, request: Headers, attempts: Attempts) -> None:
        self.client, self.cid, self.request, self.attempts = client, cid, request, attempts
        self.backend: Backend | None = None
        self.up: H2Upstream | None = None
        self.uid = 0  # the stream id on `up` once opened there
        self.held: list[tuple[bytes, Ack]] = []  # request data read before the stream was opened
        self.trailers: Headers | None = None  # request trailers read before then
        self.in_done = False  # the client ended its side (or reset the stream)
        self.out_done = False  # the response ended (or the stream was reset)
        self.responded = False  # the response head was passed to the client
        self.t0 = _now()


class Engine(Protocol):
    """What the connections need of the engine (`node.proxy.h2_proxy.H2Proxy`)."""

    retry: RetryPolicy

    def touch(self, peer: H2Peer) -> None: ...
    def accepted(self, client: H2Client) -> bool: ...
    def finished(self, client: H2Client) -> None: ...
    def dispatch(self, stream: Stream) -> None: ...
    def forwarded(self, request: Headers, client: H2Client) -> Headers: ...
    def responded(self, stream: Stream) -> None: ...
    def fail(self, stream: Stream, why: str, code: int = 502) -> None: ...
    def lost(self, up: H2Upstream, failure: Failure | None) -> None: ...
    def upstream_idle(self, up: H2Upstream) -> None: ...


class H2Client(asyncio.Protocol):
    """A client's h2c connection to the published port."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.peer = H2Peer(client_side=False, touch=engine.touch)
        self.streams: dict[int, Stream] = {}
        self.address = b""
        self.idle_since = _now()
        self.going_away = False  # GOAWAY sent or received: closed once its last stream ends
        self.last_stream = 0  # in the GOAWAY sent: streams above it are refused
        self.greeted = False  # the client's preface and SETTINGS came (it speaks HTTP/2)
        self.halted = False  # closed for abuse or an error: the rest of what was read is dropped
        self.resets = 0  # streams the client reset before their answer, since `window`
        self.answered = 0  # streams that ended otherwise, since `window`
        self.window = _now()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]).encode() if peer else b""
        if not self.engine.accepted(self):
            cast(asyncio.Transport, transport).abort()
            return
        self.peer.attach(transport)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.peer.conn.receive_data(data)
        except ProtocolError:
            self.peer.flush()  # h2 queued a GOAWAY naming the error
            self.shut()
            return
        for e in events:
            if self.halted:
                break
            try:
                self._event(e)
            except H2Error:
                self._broken(e)

    def _broken(self, e: ev.Event) -> None:
        """An h2 error handling `e` (a bug of the engine's): its stream alone is reset."""
        log.exception("h2c: error handling %r from %s", e, self.address.decode())
        sid = getattr(e, "stream_id", 0)
        if not sid:
            self.halted = True
            self.stop()
            return
        s = self._forget(sid, ErrorCodes.CANCEL)
        self.peer.reset(sid, ErrorCodes.INTERNAL_ERROR)
        if s is not None:
            self._maybe_idle()

    def _event(self, e: ev.Event) -> None:
        if isinstance(e, ev.DataReceived):
            s = self.streams.get(e.stream_id)
            ack = Ack(self.peer, e.stream_id, e.flow_controlled_length)
            if s is None or s.out_done:
                self.peer.ack(e.stream_id, e.flow_controlled_length)  # not passed on: reopen at once
            elif s.up is not None and s.uid:
                end = e.stream_ended is not None  # the request ends with this frame, passed on as one
                s.up.peer.data(s.uid, e.data, ack, end=end)
                s.in_done = s.in_done or end  # (`_ended` below has nothing left to do)
            else:
                s.held.append((e.data, ack))
            if e.stream_ended is not None:
                self._ended(e.stream_id, None)
        elif isinstance(e, ev.RequestReceived):
            self._request(e)
        elif isinstance(e, ev.TrailersReceived):
            self._ended(e.stream_id, list(e.headers))
        elif isinstance(e, ev.StreamEnded):
            s = self.streams.get(e.stream_id)
            if s is not None and not s.in_done:  # not yet seen on the data or request event
                self._ended(e.stream_id, None)
        elif isinstance(e, ev.StreamReset):
            self._reset(e.stream_id, e.error_code)
        elif isinstance(e, ev.WindowUpdated):
            self.peer.window_opened(e.stream_id)
        elif isinstance(e, ev.RemoteSettingsChanged):
            self.greeted = True
            self.peer.pump_all()  # a new initial window moves every stream's
        elif isinstance(e, ev.ConnectionTerminated):
            self.go_away()
        self.peer.touch(self.peer)

    def _request(self, e: ev.RequestReceived) -> None:
        sid = e.stream_id
        if self.going_away and sid > self.last_stream:  # opened before our GOAWAY arrived
            self.peer.reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        request = self.engine.forwarded(list(e.headers), self)
        s = Stream(self, sid, request, self.engine.retry.start())
        self.streams[sid] = s
        if e.stream_ended is not None:
            s.in_done = True
        self.engine.dispatch(s)

    def _ended(self, sid: int, trailers: Headers | None) -> None:
        s = self.streams.get(sid)
        if s is None or s.in_done:
            return
        s.in_done = True
        if s.up is not None and s.uid:
            s.up.peer.end(s.uid, trailers)
        else:
            s.trailers = trailers

    def _reset(self, sid: int, code: int) -> None:
        s = self._forget(sid, code)
        self.peer.drop(sid)  # the response held for it: acknowledged to the replica
        if s is None:
            return
        if not s.responded and self._too_many_resets():
            self._calm_down()
            return
        self._maybe_idle()

    def _forget(self, sid: int, code: int) -> Stream | None:
        """Stream `sid` ends here; reset with `code` on its replica (if it got there)."""
        s = self.streams.pop(sid, None)
        if s is not None:
            s.in_done = s.out_done = True
            if s.up is not None:
                s.up.forget(s, reset=code)
            release(s.held)
            s.held = []
        return s

    def _too_many_resets(self) -> bool:
        """Counts a reset of an unanswered stream: past `RESET_BURST` more than the streams
        answered within `RESET_WINDOW` s, a rapid reset (gRPC cancellations are far fewer)."""
        now = _now()
        if now - self.window > RESET_WINDOW:
            self.window, self.resets, self.answered = now, 0, 0
        self.resets += 1
        return self.resets > self.answered + RESET_BURST

    def _calm_down(self) -> None:
        """GOAWAY ENHANCE_YOUR_CALM, every stream cancelled on its replica, and closed."""
        self.halted = self.going_away = True
        self.last_stream = self.peer.conn.highest_inbound_stream_id
        self._forget_all()
        self.peer.flush()
        t = self.peer.transport
        if t is None:
            return
        if not t.is_closing():
            frame = GoAwayFrame(0, last_stream_id=self.last_stream, error_code=ErrorCodes.ENHANCE_YOUR_CALM)
            t.write(frame.serialize())
        if self.peer.paused:
            t.abort()  # it does not read: the GOAWAY would never drain
        else:
            t.close()

    def finish(self, s: Stream) -> None:
        """The response of `s` ended (or was cut): no more frames for it from here."""
        self.answered += 1
        s.out_done = True
        self.streams.pop(s.cid, None)
        release(s.held)  # request data never sent to a replica (the stream failed first)
        s.held = []
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self.streams:
            self.idle_since = _now()
            if self.going_away:
                self.peer.flush()
                self.shut()

    def go_away(self) -> None:
        """No new streams (GOAWAY); close once the open ones end.

        The frame is written by hand: h2's `close_connection` moves its state machine to
        CLOSED, which refuses every later frame of the streams still open."""
        if self.going_away:
            return
        self.going_away = True
        self.last_stream = self.peer.conn.highest_inbound_stream_id
        self.peer.flush()
        t = self.peer.transport
        if t is not None and not t.is_closing():
            t.write(GoAwayFrame(0, last_stream_id=self.last_stream, error_code=0).serialize())
        if not self.streams:
            self.shut()

    def shut(self) -> None:
        t = self.peer.transport
        if t is not None:
            t.close()

    def stop(self) -> None:
        t = self.peer.transport
        if t is not None:
            t.abort()

    def pause_writing(self) -> None:
        """Its socket backs up: nothing more is relayed to it, nor read from it (h2 would
        queue a PING or SETTINGS acknowledgement for every frame it sends)."""
        self.peer.pause()
        t = self.peer.transport
        if t is not None and not t.is_closing():
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.peer.transport
        if t is not None and not t.is_closing():
            t.resume_reading()
        self.peer.resume()

    def _forget_all(self) -> None:
        for s in list(self.streams.values()):
            s.in_done = s.out_done = True
            if s.up is not None:
                s.up.forget(s, reset=ErrorCodes.CANCEL)
        self.streams.clear()
        self.peer.drop_all()  # responses held for it: acknowledged to the replicas

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget_all()
        self.engine.finished(self)


class H2Upstream(asyncio.Protocol):
    """One h2c connection to a replica, carrying the streams of many clients."""

    def __init__(self, engine: Engine, backend: Backend) -> None:
        self.engine, self.backend = engine, backend
        self.peer = H2Peer(client_side=True, touch=engine.touch)
        self.streams: dict[int, Stream] = {}
        self.waiting: list[Stream] = []  # picked for this connection, not opened on it yet
        self.connected = False
        self.closing = False  # GOAWAY received, drained or lost: no new streams
        self.reached = False  # the connection was made (a loss is then not a connect failure)
        self.idle_since = _now()

    # -- placing streams -------------------------------------------------------------------

    def capacity(self) -> int:
        if not self.connected:
            return CAPACITY
        return min(CAPACITY, self.peer.conn.remote_settings.max_concurrent_streams)

    def load(self) -> int:
        return len(self.streams) + len(self.waiting)

    def add(self, s: Stream) -> None:
        s.up = self
        if self.connected and len(self.streams) < self.capacity():
            self._open(s)
        else:
            self.waiting.append(s)

    def _open(self, s: Stream) -> None:
        conn = self.peer.conn
        try:
            uid = conn.get_next_available_stream_id()
        except NoAvailableStreamIDError:  # 2^30 streams opened here
            self._retire()
            s.up = None
            self.engine.dispatch(s)  # on another connection
            return
        bare = s.in_done and not s.held and s.trailers is None
        if not self.peer.headers(uid, s.request, end=bare):
            self.engine.fail(s, "the replica refused a new stream")
            return
        s.uid = uid
        self.streams[uid] = s
        for data, ack in s.held:
            self.peer.data(uid, data, ack)
        s.held = []
        if s.in_done and not bare:
            self.peer.end(uid, s.trailers)

    def _open_waiting(self) -> None:
        while self.waiting and not self.closing and len(self.streams) < self.capacity():
            self._open(self.waiting.pop(0))

    def take_waiting(self) -> list[Stream]:
        out, self.waiting = self.waiting, []
        for s in out:
            s.up = None
        return out

    def forget(self, s: Stream, reset: int | None = None) -> None:
        """`s` ends here (its client reset it or went away); reset it on the replica."""
        if s in self.waiting:
            self.waiting.remove(s)
        elif self.streams.pop(s.uid, None) is not None and reset is not None:
            self.peer.reset(s.uid, reset)
        s.up = None
        self._freed()

    def _retire(self) -> None:
        """No stream id left: no new streams here (they go on a fresh connection), a
        GOAWAY to the replica, and closed once the open streams end."""
        waiting = self.take_waiting()
        self.engine.lost(self, None)  # out of the pool (and `closing`)
        self.peer.flush()
        t = self.peer.transport
        if t is not None and not t.is_closing():
            t.write(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
        for s in waiting:
            self.engine.dispatch(s)
        if not self.streams:
            self.close()

    def _freed(self) -> None:
        self._open_waiting()
        if not self.streams and not self.waiting:
            self.idle_since = _now()
            self.engine.upstream_idle(self)

    # -- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected = self.reached = True
        self.peer.attach(transport)
        if self.closing and not self.waiting:  # drained (or the port closed) while connecting
            transport.close()
            return
        self._open_waiting()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.peer.conn.receive_data(data)
        except ProtocolError:
            self.peer.flush()
            self.close()
            return
        for e in events:
            self._event(e)

    def _event(self, e: ev.Event) -> None:
        if isinstance(e, ev.DataReceived):
            s = self.streams.get(e.stream_id)
            if s is None:
                self.peer.ack(e.stream_id, e.flow_controlled_length)
            else:
                ack = self.peer.received(e.stream_id, e.flow_controlled_length, s.client.peer)
                end = e.stream_ended is not None  # the response ends with this frame, passed on as one
                s.client.peer.data(s.cid, e.data, ack, end=end)
                if end:
                    self._done(s)
        elif isinstance(e, ev.ResponseReceived | ev.InformationalResponseReceived):
            s = self.streams.get(e.stream_id)
            if s is not None:
                final = isinstance(e, ev.ResponseReceived)
                end = isinstance(e, ev.ResponseReceived) and e.stream_ended is not None
                if final:
                    s.responded = True
                    self.engine.responded(s)
                s.client.peer.headers(s.cid, list(e.headers), end=end)
                if end:
                    self._done(s)
        elif isinstance(e, ev.TrailersReceived):
            self._ended(e.stream_id, list(e.headers))
        elif isinstance(e, ev.StreamReset):
            s = self.streams.pop(e.stream_id, None)
            self.peer.drop(e.stream_id)  # request data held for it: acknowledged to the client
            if s is not None:
                s.client.peer.reset(s.cid, e.error_code)
                s.client.finish(s)
                s.up = None
                self._freed()
        elif isinstance(e, ev.WindowUpdated):
            self.peer.window_opened(e.stream_id)
        elif isinstance(e, ev.RemoteSettingsChanged):
            self.peer.pump_all()
            self._open_waiting()
        elif isinstance(e, ev.ConnectionTerminated):
            self._goaway(e.last_stream_id or 0)
        self.peer.touch(self.peer)

    def _ended(self, uid: int, trailers: Headers | None) -> None:
        s = self.streams.get(uid)
        if s is None:
            return
        s.client.peer.end(s.cid, trailers)
        self._done(s)

    def _done(self, s: Stream) -> None:
        """The response of `s` is whole (queued to the client): the stream ends here."""
        self.streams.pop(s.uid, None)
        if not s.in_done:  # answered before the request ended: stop its upload
            self.peer.reset(s.uid, ErrorCodes.NO_ERROR)
        s.up = None
        s.client.finish(s)
        self._freed()

    def _goaway(self, last: int) -> None:
        """The replica takes no new streams; those above `last` it never processed."""
        self.closing = True
        for uid in [uid for uid in self.streams if uid > last]:
            s = self.streams.pop(uid)
            s.up = None
            self.peer.drop(uid)
            s.client.peer.reset(s.cid, ErrorCodes.REFUSED_STREAM)  # safe to retry: gRPC does
            s.client.finish(s)
        self.engine.lost(self, None)  # the waiting ones go elsewhere; no new ones come
        if not self.streams:
            self.close()

    def cut(self, streams: Iterable[Stream], why: str) -> None:
        for s in list(streams):
            s.up = None
            self.engine.fail(s, why)

    def close(self) -> None:
        self.closing = True
        t = self.peer.transport
        if t is not None:
            t.close()

    def abort(self) -> None:
        self.closing = True
        t = self.peer.transport
        if t is not None:
            t.abort()

    def pause_writing(self) -> None:
        self.peer.pause()

    def resume_writing(self) -> None:
        self.peer.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        self.closing = True
        streams, self.streams = list(self.streams.values()), {}
        self.peer.drop_all()  # requests held for it: acknowledged to the clients
        self.engine.lost(self, None if self.reached else Failure.CONNECT_REFUSED)
        self.cut(streams, "the replica's connection was lost")
