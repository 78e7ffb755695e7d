"""One HTTP/2 connection of the h2c engine: h2's state machine and what waits to be sent.

The h2 engine (`node.proxy.h2_proxy`) relays streams between two HTTP/2 connections,
the client's and a replica's; `H2Peer` is either end. It owns the `h2` state machine
(framing, HPACK, the stream states, the flow-control windows) and, per stream, the data
not sent yet because the peer's window is closed (`Outbox`). What goes out is queued in
h2 and written once per loop iteration by the engine (`touch` marks the peer; the
engine calls `flush`).

Flow control end to end: data read from one side is acknowledged to its sender (its
window reopened) only when it was handed to the other side's h2, so a slow receiver
closes the sender's window instead of filling the proxy: per stream at most the
window the proxy advertises (`STREAM_WINDOW`) waits here, per connection at most
`CONNECTION_WINDOW`. The same holds against a slow socket: while the transport's
write buffer is over its high-water mark (`paused`) nothing more is handed to h2.

One exception, for a replica's connection, which carries the streams of many clients:
there the connection's window is reopened when the bytes are read (`received`), the
stream's when they are passed on. Tied to the passing on, one client that never read
its responses closed the shared window with four streams (4 x 256 KiB) and every other
client's calls on that connection stopped. Each client may have `EARLY_MAX` bytes
held this way; past it, bytes for it are tied again (the proxy's memory stays bounded
per client, and only a client holding more than that unread can slow the others).

Headers are not flow-controlled and go at once; trailers and the end of a stream wait
behind the data queued before them. Every send tolerates a stream the other end has
already reset (h2 raises; the data is dropped): a reset can cross anything in flight.
No asyncio beyond the transport it writes to.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import cast

from h2 import events as ev
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, StreamClosedError, StreamIDTooLowError
from h2.settings import SettingCodes
from hyperframe.frame import (
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from node.proxy.h2_fields import Block, check

Headers = list[tuple[bytes, bytes]]

STREAM_WINDOW = 256 * 1024
"""Bytes a peer may send on one stream before the proxy passed them on (advertised)."""
CONNECTION_WINDOW = 1024 * 1024
"""The same for a whole connection (advertised on top of the default 65,535)."""
EARLY_MAX = 4 * 1024 * 1024
"""Bytes held for one client whose replica connection's window was reopened on reading."""
MAX_STREAMS = 256
"""Streams a client may have open at once on one connection."""
MAX_HEADER_LIST = 64 * 1024
"""Bytes of one decoded head (or trailers) a peer may send (HPACK's accounting)."""


class Ack:
    """Where bytes came from: acknowledged to `peer` on `stream` once passed on. `early`:
    the client whose budget (`EARLY_MAX`) they count in, their connection window already
    reopened (`H2Peer.received`)."""

    __slots__ = ("early", "peer", "size", "stream")

    def __init__(self, peer: H2Peer, stream: int, size: int, early: H2Peer | None = None) -> None:
        self.peer, self.stream, self.size, self.early = peer, stream, size, early

    def done(self) -> None:
        """The bytes were passed on (or dropped): reopen what is still closed."""
        early = self.early
        if early is None:
            self.peer.ack(self.stream, self.size)
        else:
            early.early -= self.size
            self.peer.ack_stream(self.stream, self.size)


class Outbox:
    """Per stream: data waiting for window, then the end (with trailers or not)."""

    __slots__ = ("end", "items", "trailers")

    def __init__(self) -> None:
        self.items: deque[tuple[bytes, Ack | None]] = deque()
        self.end = False
        self.trailers: Headers | None = None


def config(client_side: bool) -> H2Configuration:
    """An ordinary h2 peer's (the tests' other ends): bytes in, bytes out (no decoding of
    header values), every head validated and normalized by h2 both ways."""
    return H2Configuration(client_side=client_side, header_encoding=None)


def _relay_config(client_side: bool) -> H2Configuration:
    """The engine's own: no checks by h2 on the heads it sends (what the proxy sends is
    what it read and checked on the other side, or its own; about a fifth of the CPU per
    call), nor on those it receives: `_Connection` checks them with `node.proxy.h2_fields`
    (h2's rules, at a fraction of the cost). Not normalized either: split cookie fields
    stay split, as the relay passes them on to HTTP/2, where that is allowed; credentials
    are made never-indexed by `H2Proxy.forwarded` (h2's normalization did that)."""
    return H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )


_BLOCKS: dict[type[ev.Event], Block] = {
    ev.RequestReceived: Block.REQUEST,
    ev.PushedStreamReceived: Block.REQUEST,
    ev.ResponseReceived: Block.RESPONSE,
    ev.InformationalResponseReceived: Block.RESPONSE,
    ev.TrailersReceived: Block.TRAILERS,
}


class _Connection(H2Connection):
    """h2's connection, kept open by a GOAWAY it receives: h2 moves to CLOSED (every later
    frame of the streams still open would then be a protocol error) and drops what was
    queued to send; a graceful GOAWAY (a replica shutting down, a client closing its
    channel) means "no new streams", the open ones go on. The peer stops opening streams
    itself (`node.proxy.h2_conn`). Every header block received is checked
    (`node.proxy.h2_fields`) where h2 would have validated it: a `ProtocolError` raised
    there makes h2 send GOAWAY PROTOCOL_ERROR, as its own validation did. Pinned to h2
    4.x, tested."""

    def __init__(self, client_side: bool) -> None:
        super().__init__(_relay_config(client_side))

    def ack_connection(self, size: int) -> None:
        """The connection's half of h2's `acknowledge_received_data` (h2 4.x's own code)."""
        increment = self._inbound_flow_control_window_manager.process_bytes(size)
        if increment:
            f = WindowUpdateFrame(0)
            f.window_increment = increment
            self._prepare_for_sending([f])

    def ack_stream(self, stream_id: int, size: int) -> None:
        """The stream's half of h2's `acknowledge_received_data` (h2 4.x's own code)."""
        try:
            stream = self._get_stream_by_id(stream_id)
        except StreamClosedError:
            return  # gone: no window to reopen
        if stream.open:
            self._prepare_for_sending(stream.acknowledge_received_data(size))

    def clear_outbound_data_buffer(self) -> None:
        return  # called only on a received GOAWAY: what was queued still goes

    def _receive_frame(self, frame: Frame) -> list[ev.Event]:
        """h2's own, less its first line: `logger.trace("Received frame: %s", repr(frame))`,
        whose `repr` of every frame received costs a few per cent of the CPU even though
        the logger does nothing. The rest is h2 4.x's, word for word (a test compares them)."""
        events: list[ev.Event]
        try:
            # I don't love using __class__ here, maybe reconsider it.
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # If the stream was closed by RST_STREAM, we just send a RST_STREAM
            # to the remote peer. Otherwise, this is a connection error, and so
            # we will re-raise to trigger one.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            # The stream ID seems invalid. This may happen when the closed
            # stream has been cleaned up, or when the remote peer has opened a
            # new stream with a higher stream ID than this one, forcing it
            # closed implicitly.
            #
            # Check how the stream was closed: depending on the mechanism, it
            # is either a stream error or a connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                # Closed by RST_STREAM is a stream error.
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                # Closed by END_STREAM is a connection error.
                raise StreamClosedError(e.stream_id) from e
            else:
                # Closed implicitly, also a connection error, but of type
                # PROTOCOL_ERROR.
                raise
        else:
            self._prepare_for_sending(frames)

        return events

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[ev.Event]]:
        state = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if state in (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN) and not frame.error_code:
            self.state_machine.state = state
        return frames, events

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[ev.Event]]:
        frames, events = super()._receive_headers_frame(frame)
        _check(events)
        return frames, events

    def _receive_push_promise_frame(self, frame: PushPromiseFrame) -> tuple[list[Frame], list[ev.Event]]:
        frames, events = super()._receive_push_promise_frame(frame)
        _check(events)
        return frames, events


def _check(events: list[ev.Event]) -> None:
    """Check the header block among `events` (none when h2 refused the stream)."""
    for e in events:
        block = _BLOCKS.get(type(e))
        if block is not None:
            check(e.headers, block)  # type: ignore[attr-defined]
            return


def release(items: Iterable[tuple[bytes, Ack | None]]) -> None:
    """Acknowledge bytes that will not be passed on (their stream ended here)."""
    for _, ack in items:
        if ack is not None:
            ack.done()


class H2Peer:
    """One HTTP/2 connection: `touch(peer)` asks the engine for a `flush` soon."""

    __slots__ = ("conn", "early", "out", "paused", "touch", "transport")

    def __init__(self, client_side: bool, touch: Callable[[H2Peer], None], max_streams: int = MAX_STREAMS):
        self.conn = _Connection(client_side)
        self.touch = touch
        self.transport: asyncio.Transport | None = None
        self.out: dict[int, Outbox] = {}
        self.paused = False  # the transport's write buffer is full: hand nothing more to h2
        self.early = 0  # bytes queued here whose replica connection window was reopened (Ack.early)
        self.conn.initiate_connection()
        settings: dict[SettingCodes | int, int] = {
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        }
        if client_side:  # towards a replica: no server push (its pushed streams would stay
            settings[SettingCodes.ENABLE_PUSH] = 0  # open in h2 until the connection ends)
        self.conn.update_settings(settings)
        self.conn.increment_flow_control_window(CONNECTION_WINDOW)

    def attach(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.touch(self)

    def flush(self) -> None:
        """Write what h2 has queued (once the transport is there)."""
        t = self.transport
        if t is None or t.is_closing():
            return
        data = self.conn.data_to_send()
        if data:
            t.write(data)

    # -- sending -------------------------------------------------------------------------

    def headers(self, stream: int, headers: Headers, end: bool = False) -> bool:
        """Send a head now; False when the stream is gone (reset by the other end)."""
        try:
            self.conn.send_headers(stream, headers, end_stream=end)
        except (StreamClosedError, ProtocolError):
            self.drop(stream)
            return False
        self.touch(self)
        return True

    def data(self, stream: int, data: bytes, ack: Ack | None, end: bool = False) -> None:
        """Queue `data` on `stream`; `ack` is acknowledged when it is handed to h2. `end`:
        the stream ends with it, in the same DATA frame (as a gRPC request does)."""
        box = self.out.get(stream)
        if box is None:
            box = self.out[stream] = Outbox()
        box.items.append((data, ack))
        if end:
            box.end = True
        self.pump(stream)

    def end(self, stream: int, trailers: Headers | None = None) -> None:
        """End `stream` (with `trailers`, if any) once the data queued before is sent."""
        box = self.out.get(stream)
        if box is None:
            box = self.out[stream] = Outbox()
        box.end, box.trailers = True, trailers
        self.pump(stream)

    def reset(self, stream: int, code: int) -> None:
        self.drop(stream)
        try:
            self.conn.reset_stream(stream, code)
        except (StreamClosedError, ProtocolError):
            return
        self.touch(self)

    def ack(self, stream: int, size: int) -> None:
        """Reopen the window of `size` bytes read on `stream` (and on the connection)."""
        if size <= 0:
            return
        try:
            self.conn.acknowledge_received_data(size, stream)
        except (StreamClosedError, ProtocolError):
            return
        self.touch(self)

    def received(self, stream: int, size: int, sink: H2Peer) -> Ack:
        """The Ack of `size` bytes read on `stream` (of a replica's connection), going to
        `sink` (a client's): the connection's window reopened now while `sink` holds less
        than `EARLY_MAX` this way, the stream's when they are passed on."""
        if size <= 0 or sink.early + size > EARLY_MAX:
            return Ack(self, stream, size)
        sink.early += size
        self.conn.ack_connection(size)
        self.touch(self)
        return Ack(self, stream, size, sink)

    def ack_stream(self, stream: int, size: int) -> None:
        """Reopen the window of `size` bytes read on `stream` (its connection's was)."""
        try:
            self.conn.ack_stream(stream, size)
        except (StreamClosedError, ProtocolError):
            return
        self.touch(self)

    # -- flow control --------------------------------------------------------------------

    def pump(self, stream: int) -> None:
        """Hand `stream`'s queued data to h2 as far as the windows allow."""
        box = self.out.get(stream)
        if box is None or self.paused:
            return
        conn = self.conn
        try:
            while box.items:
                data, ack = box.items[0]
                room = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
                if room <= 0 and data:
                    break
                chunk = data[:room]
                if len(chunk) < len(data):
                    conn.send_data(stream, chunk)
                    box.items[0] = (data[len(chunk) :], ack)
                    continue
                last = box.end and box.trailers is None and len(box.items) == 1  # END_STREAM on it
                conn.send_data(stream, chunk, end_stream=last)
                box.items.popleft()
                if last:
                    del self.out[stream]
                if ack is not None:
                    ack.done()
                if last:
                    break
            else:
                if box.end:
                    del self.out[stream]
                    if box.trailers is not None:
                        conn.send_headers(stream, box.trailers, end_stream=True)
                    else:
                        conn.end_stream(stream)
        except (StreamClosedError, ProtocolError):
            self.out.pop(stream, None)
            release(box.items)
        self.touch(self)

    def drop(self, stream: int) -> None:
        """Forget what waits to be sent on `stream` (reset, or its connection is gone). Its
        bytes are acknowledged to their senders all the same: each would otherwise shrink
        the sender's connection window for good, and a client resetting streams whose
        responses it does not read would close a replica connection's window for every
        stream on it."""
        box = self.out.pop(stream, None)
        if box is not None:
            release(box.items)

    def drop_all(self) -> None:
        for stream in list(self.out):
            self.drop(stream)

    def pump_all(self) -> None:
        for stream in list(self.out):
            self.pump(stream)

    def window_opened(self, stream: int) -> None:
        """A WINDOW_UPDATE (or new settings) came: 0 means the connection's window."""
        if stream == 0:
            self.pump_all()
        else:
            self.pump(stream)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.pump_all()

    def queued(self) -> int:
        """Bytes waiting for window here (for tests and bounds)."""
        return sum(len(d) for box in self.out.values() for d, _ in box.items)
