"""The h2c engine (`node.proxy.h2_proxy`) against clients that abuse HTTP/2 itself: rapid
reset, control-frame floods, and an engine error that must cost one stream, not the
connection. Real sockets on 127.0.0.1, a plain h2 replica."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import PingFrame

from node.proxy.h2_conn import RESET_BURST
from node.proxy.h2_peer import config
from node.proxy.h2_proxy import H2Proxy
from tests.helpers import wait_until
from tests.unit.test_proxy_h2 import HOST, PlainReplica, http2_port

HEAD = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"x")]


class CountingReplica(PlainReplica):
    """Answers 200 to every request it sees whole; counts the requests."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def data_received(self, data: bytes) -> None:
        for e in self.conn.receive_data(data):
            if isinstance(e, h2.events.RequestReceived):
                self.requests += 1
            elif isinstance(e, h2.events.StreamEnded):
                with contextlib.suppress(h2.exceptions.ProtocolError):  # reset in the same read
                    self.conn.send_headers(e.stream_id, [(b":status", b"200")], end_stream=True)
        self.transport.write(self.conn.data_to_send())


class Client:
    """A plain h2 client on one connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(config(client_side=True))
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.send()

    @classmethod
    async def open(cls, proxy: H2Proxy) -> Client:
        return cls(*await asyncio.open_connection(HOST, proxy.port))

    def send(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def read(self) -> bool:
        """Read once (within 5 s); False at the end of the connection."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
        except ConnectionError:
            return False
        if not data:
            return False
        with contextlib.suppress(h2.exceptions.ProtocolError):  # frames after a GOAWAY
            self.events += self.conn.receive_data(data)
        self.send()
        return True

    async def call(self) -> bytes | int:
        """One GET: its status, or the error code of its reset."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, HEAD, end_stream=True)
        self.send()
        while True:
            for e in self.events:
                if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                    return dict(e.headers)[b":status"]
                if isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
                    return int(e.error_code)
            assert await self.read(), "the proxy closed the connection"

    async def until_closed(self, seconds: float) -> bool:
        """Read until the proxy closes the connection; False if it has not in `seconds`."""
        try:
            async with asyncio.timeout(seconds):
                while await self.read():
                    pass
        except TimeoutError:
            return False
        return True

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        ended = [e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)]
        return ended[0] if ended else None

    def close(self) -> None:
        self.writer.close()


async def test_a_client_resetting_streams_as_fast_as_it_opens_them_is_told_to_calm_down() -> None:
    """HTTP/2 rapid reset (CVE-2023-44487): before, every HEADERS was sent to a replica at
    once and a reset only passed a RST on, so one connection opening and resetting 2,000
    streams made 2,000 replica requests and stayed open. Now resets of unanswered streams
    beyond `RESET_BURST` (more than the answered ones) end it with GOAWAY ENHANCE_YOUR_CALM."""
    replica = CountingReplica()
    async with http2_port(lambda: replica) as proxy:
        bad = await Client.open(proxy)
        sid = 1
        for _ in range(20):  # 20 x 100 streams opened and reset at once
            for _ in range(100):
                bad.conn.send_headers(sid, HEAD, end_stream=True)
                bad.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                sid += 2
            bad.send()
            with contextlib.suppress(ConnectionError):
                await bad.writer.drain()
            if bad.writer.transport.is_closing() or bad.reader.at_eof():
                break
        closed = await bad.until_closed(3)
        bad.close()
        assert closed, "the connection stayed open"
        goaway = bad.goaway()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert proxy.stats.requests <= RESET_BURST + 1
        ok = await Client.open(proxy)  # the others go on
        assert await ok.call() == b"200"
        ok.close()


async def test_a_client_cancelling_calls_as_clients_do_keeps_its_connection() -> None:
    """gRPC cancellations and browsers resetting what they no longer need stay well below
    the rapid-reset bound: a burst of resets short of it, then a reset for every call
    answered, on one connection, and it is still served."""
    replica = CountingReplica()
    async with http2_port(lambda: replica) as proxy:
        client = await Client.open(proxy)
        for _ in range(RESET_BURST * 3 // 4):
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, HEAD, end_stream=True)
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        client.send()
        for _ in range(RESET_BURST):
            assert await client.call() == b"200"
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, HEAD, end_stream=True)
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        assert await client.call() == b"200"
        assert client.goaway() is None
        client.close()


async def test_a_client_that_never_reads_cannot_grow_its_write_buffer_with_pings() -> None:
    """Before, only the relayed data paused when a client's socket backed up: its frames
    were still read, and h2 queued a PING ACK for each PING, so 13.6 MB of PINGs from a
    client that never reads left about 10 MB buffered in the proxy for it. Now reading
    from the client pauses with its writes."""
    async with http2_port(PlainReplica) as proxy:
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        await loop.sock_connect(s, (HOST, proxy.port))
        conn = h2.connection.H2Connection(config(client_side=True))
        conn.initiate_connection()
        await loop.sock_sendall(s, conn.data_to_send())
        chunk = PingFrame(0, opaque_data=b"12345678").serialize() * 4000
        (client,) = await wait_until(lambda: list(proxy._open), 5, message="the proxy took the connection")
        t = client.peer.transport
        assert t is not None
        t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # backs up sooner

        def settled() -> bool:  # it stopped reading, or (as before) read on and buffered a megabyte
            return not t.is_reading() or t.get_write_buffer_size() > 1_000_000

        # Sent until the proxy settles either way, whatever the machine's load (a window of
        # 2 s sent too little on a loaded machine to fill anything); a send the proxy does
        # not read is waited on, never cut mid-frame.
        async with asyncio.timeout(60):
            for _ in range(200):  # 13.6 MB at most
                send = asyncio.ensure_future(loop.sock_sendall(s, chunk))
                while not send.done() and not settled():
                    await asyncio.wait([send], timeout=0.1)
                if settled():
                    send.cancel()
                    break
                send.result()
        await wait_until(settled, 5)
        buffered = t.get_write_buffer_size()
        s.close()
        assert buffered < 1_000_000, f"{buffered} bytes buffered for a client that reads nothing"


async def test_a_replica_connection_out_of_stream_ids_is_retired_and_the_call_goes_on_a_fresh_one() -> None:
    """After 2^30 streams a replica connection has no stream id left: before, h2's
    NoAvailableStreamIDError escaped from the client's `data_received` and asyncio aborted
    the client's connection, for that stream and every later one placed there. Now the
    connection is retired and the stream goes on a new one."""
    async with http2_port(PlainReplica) as proxy:
        client = await Client.open(proxy)
        assert await client.call() == b"200"
        (old,) = proxy.upstreams["plain"]
        old.peer.conn.highest_outbound_stream_id = 2**31 - 1  # as after ~1e9 streams on it
        for _ in range(3):
            assert await client.call() == b"200"
        (new,) = proxy.upstreams["plain"]
        assert new is not old and old.closing
        client.close()


async def test_an_engine_error_on_one_stream_resets_that_stream_not_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An h2 error raised while the engine handles one stream's event (here: placing it)
    resets that stream with INTERNAL_ERROR; before, it escaped `data_received` and asyncio
    aborted the client's whole connection."""
    async with http2_port(PlainReplica) as proxy:
        dispatch = proxy.dispatch
        broken = [True]

        def once(s: object) -> None:
            if broken.pop() if broken else False:
                raise h2.exceptions.NoAvailableStreamIDError("Exhausted allowed stream IDs")
            dispatch(s)  # type: ignore[arg-type]

        monkeypatch.setattr(proxy, "dispatch", once)
        client = await Client.open(proxy)
        assert await client.call() == h2.errors.ErrorCodes.INTERNAL_ERROR
        assert await client.call() == b"200"
        assert client.goaway() is None
        client.close()
