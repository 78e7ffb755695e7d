"""The L4 proxy with real sockets on 127.0.0.1 and small asyncio servers as backends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
import uvloop

from node.proxy.balancer import Backend, Balancer, OutlierConfig
from node.proxy.tcp import HIGH_WATER, TcpProxy
from tests.helpers import wait_until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HOST = "127.0.0.1"


class Backends:
    """asyncio servers on 127.0.0.1, closed at the end of the test."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []

    async def start(self, key: str, handler: Handler) -> Backend:
        server = await asyncio.start_server(handler, HOST, 0)
        self.servers.append(server)
        return Backend(key, HOST, server.sockets[0].getsockname()[1], "n1")

    async def close(self) -> None:
        for s in self.servers:
            s.close()


def dead_backend(key: str) -> Backend:
    """A port nobody listens on: connects are refused."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    return Backend(key, HOST, port, "n1")


def named(name: str) -> Handler:
    """Says its name, then echoes until EOF."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name.encode() + b"\n")
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return handle


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    yield b
    await b.close()


async def started(balancer: Balancer, **kw: float) -> TcpProxy:
    proxy = TcpProxy(HOST, 0, balancer, connect_timeout=kw.get("connect_timeout", 1.0),
                     drain_timeout=kw.get("drain_timeout", 5.0))  # fmt: skip
    await proxy.start()
    return proxy


async def whoami(port: int) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    async with asyncio.timeout(5):
        name = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    return name


async def test_round_robin_over_three_backends(backends: Backends) -> None:
    bal = Balancer()
    bal.set_endpoints([await backends.start(f"t{i}", named(f"b{i}")) for i in range(3)])
    proxy = await started(bal)
    names = [await whoami(proxy.port) for _ in range(30)]
    assert Counter(names) == {"b0": 10, "b1": 10, "b2": 10}
    assert proxy.stats.connections == 30 and proxy.stats.retries == 0
    await proxy.close()
    assert proxy.stats.active == 0


async def test_dead_backend_is_retried_then_ejected(backends: Backends) -> None:
    bal = Balancer(OutlierConfig(consecutive_failures=3, base_ejection=60.0))
    dead = dead_backend("a")
    bal.set_endpoints([dead, await backends.start("b", named("b")), await backends.start("c", named("c"))])
    proxy = await started(bal)
    names = [await whoami(proxy.port) for _ in range(12)]
    assert set(names) == {"b", "c"}  # the client never notices
    # rotation a,b,c: connections 1, 3 and 5 hit `a`, retry on `b`; the third failure ejects it
    assert proxy.stats.retries == 3 and proxy.stats.errors == 0
    assert bal.is_ejected(dead, time.monotonic())
    await proxy.close()


async def test_no_backend_closes_at_once() -> None:
    proxy = await started(Balancer())
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    async with asyncio.timeout(1):
        assert await reader.read() == b""
    writer.close()
    await proxy.close()
    assert proxy.stats.no_backend == 1 and proxy.stats.active == 0


async def test_every_backend_dead_closes_after_bounded_retries() -> None:
    bal = Balancer()
    bal.set_endpoints([dead_backend(k) for k in "abcde"])
    proxy = await started(bal)
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    async with asyncio.timeout(1):
        assert await reader.read() == b""
    writer.close()
    await proxy.close()
    assert proxy.stats.retries == 2  # RetryPolicy's default: 3 attempts in all


@pytest.mark.parametrize(
    "loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop], ids=["uvloop", "asyncio"]
)
def test_a_connect_cancelled_by_its_timeout_after_it_was_made_does_not_close_the_client(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """The connect timeout can fire after the backend's transport was made (a SYN
    retransmitted, a busy loop): the cancelled `create_connection` closes that transport,
    whose `connection_lost` (uvloop calls it) once closed the client too, while the next
    try connected to a client already gone (one request of 96 lost in a CI run of
    test_kill_9). The workers run uvloop."""

    async def scenario() -> None:
        backends = Backends()
        bal = Balancer()
        ends = [await backends.start("a", named("a")), await backends.start("b", named("b"))]
        bal.set_endpoints(ends)
        loop = asyncio.get_running_loop()
        real = loop.create_connection
        tries: list[int] = []

        async def made_then_timed_out(factory: Any, host: str, port: int, **kw: Any) -> Any:
            if port not in {b.port for b in ends}:  # the test's own client
                return await real(factory, host, port, **kw)
            tries.append(port)
            transport, protocol = await real(factory, host, port)
            if len(tries) == 1:  # as create_connection does when cancelled late: close, raise
                await asyncio.sleep(0.01)  # connection_made has run
                transport.close()
                await asyncio.sleep(0.01)  # and connection_lost
                raise TimeoutError
            return transport, protocol

        loop.create_connection = made_then_timed_out  # type: ignore[method-assign]
        proxy = await started(bal)
        try:
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            writer.write(b"sent before the backend answers\n")  # as a request is
            async with asyncio.timeout(5):
                name = (await reader.readline()).decode().strip()
                assert await reader.readline() == b"sent before the backend answers\n"
            assert name in ("a", "b") and len(tries) == 2
            writer.close()
        finally:
            await proxy.close()
            await backends.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(scenario())


async def test_half_close(backends: Backends) -> None:
    async def count_then_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's EOF
        writer.write(f"got {len(data)}".encode())
        await writer.drain()
        writer.close()

    bal = Balancer()
    bal.set_endpoints([await backends.start("a", count_then_answer)])
    proxy = await started(bal)
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(b"x" * 300_000)
    writer.write_eof()
    async with asyncio.timeout(5):
        assert await reader.read() == b"got 300000"
    writer.close()
    await proxy.close()


async def test_half_close_backend_first(backends: Backends) -> None:
    """The backend ends its direction first (a response, then its FIN); the client's last
    bytes and its EOF, the second one, still reach the backend whole (the proxy then
    closes both sides, with no shutdown() of its own in between)."""
    heard: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def answer_then_listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()
        heard.set_result(await reader.read())  # until the client's EOF
        writer.close()

    bal = Balancer()
    bal.set_endpoints([await backends.start("a", answer_then_listen)])
    proxy = await started(bal)
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    async with asyncio.timeout(5):
        assert await reader.read() == b"hello"
        writer.write(b"bye" * 100_000)
        writer.write_eof()
        assert await heard == b"bye" * 100_000
        assert await reader.read() == b""
    writer.close()
    await proxy.close()
    assert proxy.stats.errors == 0


async def transfer(port: int, size: int) -> bytes:
    """Send `size` random bytes through an echo and return what came back."""
    payload = os.urandom(size)
    reader, writer = await asyncio.open_connection(HOST, port)

    async def send() -> None:
        for i in range(0, size, 1 << 16):
            writer.write(payload[i : i + (1 << 16)])
            await writer.drain()
        writer.write_eof()

    async with asyncio.timeout(30):
        sender = asyncio.create_task(send())
        got = await reader.read(-1)
        await sender
    writer.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    return got


async def test_large_transfer_intact(backends: Backends) -> None:
    bal = Balancer()
    bal.set_endpoints([await backends.start("a", echo)])
    proxy = await started(bal)
    assert len(await transfer(proxy.port, 20 * 1024 * 1024)) == 20 * 1024 * 1024
    await proxy.close()


async def test_slow_client_bounds_proxy_memory(backends: Backends) -> None:
    size = 20 * 1024 * 1024
    sent = 0

    async def blast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        chunk = b"z" * 65536
        with contextlib.suppress(ConnectionError):
            while sent < size:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
        writer.close()

    bal = Balancer()
    bal.set_endpoints([await backends.start("a", blast)])
    proxy = await started(bal)
    reader, writer = await asyncio.open_connection(HOST, proxy.port, limit=1 << 16)
    # the client reads nothing: watch the proxy's buffers for a bounded window
    peak, deadline = 0, time.monotonic() + 0.5
    while time.monotonic() < deadline:
        peak = max(peak, proxy.buffered())
        await asyncio.sleep(0.01)
    assert peak <= HIGH_WATER + 512 * 1024
    assert sent < size  # back-pressure reached the backend
    total = 0
    async with asyncio.timeout(30):
        while data := await reader.read(1 << 20):
            total += len(data)
    assert total == size
    writer.close()
    await proxy.close()


async def test_close_stops_listening_and_drains(backends: Backends) -> None:
    bal = Balancer()
    bal.set_endpoints([await backends.start("a", echo)])
    proxy = await started(bal, drain_timeout=5.0)
    port = proxy.port
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    closing = asyncio.create_task(proxy.close())
    await asyncio.sleep(0)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, port)
    writer.write(b"still here")  # in flight: keeps working
    assert await reader.readexactly(10) == b"still here"
    assert not closing.done()
    t0 = time.monotonic()
    writer.write_eof()
    assert await reader.read() == b""
    writer.close()
    await asyncio.wait_for(closing, 2.0)
    assert time.monotonic() - t0 < 2.0 and proxy.stats.active == 0


async def test_close_aborts_after_drain_timeout(backends: Backends) -> None:
    bal = Balancer()
    bal.set_endpoints([await backends.start("a", echo)])
    proxy = await started(bal, drain_timeout=0.2)
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    await asyncio.wait_for(proxy.close(), 2.0)
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(1):
            assert await reader.read() == b""
    writer.close()
    assert proxy.stats.active == 0


async def test_a_cancel_arriving_as_the_last_connection_ends_cancels_close() -> None:
    """`close()` cancelled in the same loop iteration as its drain wait's answer (the last
    connection ended) ends cancelled. On 3.11 `asyncio.wait_for` returned the answer there
    and dropped the cancellation: close() went on to abort and returned."""
    proxy = TcpProxy(HOST, 0, Balancer(), drain_timeout=3600.0)
    conn = cast(Any, object())  # the proxy is never started: a stand-in for an open connection
    proxy._track(conn)
    closing = asyncio.create_task(proxy.close())
    for _ in range(5):  # let close() reach its drain wait
        await asyncio.sleep(0)
    assert not closing.done()
    proxy._untrack(conn)  # the last connection ends...
    closing.cancel()  # ...as the stop cancels close()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert closing.cancelled()


async def test_drain_aborts_connections_to_removed_backends(backends: Backends) -> None:
    bal = Balancer()
    a = await backends.start("a", echo)
    bal.set_endpoints([a])
    proxy = await started(bal, drain_timeout=0.2)
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    proxy.drain(bal.set_endpoints([]))
    await wait_until(lambda: proxy.stats.active == 0, 3.0, message="drained connection closed")
    writer.close()
    await proxy.close()


def test_under_uvloop() -> None:
    async def main() -> None:
        b = Backends()
        bal = Balancer()
        bal.set_endpoints([await b.start(f"t{i}", named(f"b{i}")) for i in range(3)] + [dead_backend("z")])
        proxy = await started(bal)
        assert Counter([await whoami(proxy.port) for _ in range(9)]) == {"b0": 3, "b1": 3, "b2": 3}
        bal.set_endpoints([await b.start("e", echo)])
        await transfer(proxy.port, 5 * 1024 * 1024)
        await proxy.close()
        await b.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def test_a_syn_a_full_accept_queue_dropped_is_waited_for_not_failed() -> None:
    """A replica whose accept queue is full drops the SYN, and the kernel sends it again
    after 1 s, which a direct client waits for. The default connect timeout
    (`node.proxy.listener.CONNECT_TIMEOUT`) outlasts it: the connection is served once the
    replica accepts, not failed as "no backend" (1.0 s failed such requests)."""
    loop = asyncio.get_running_loop()
    with socket.socket() as server:
        server.bind((HOST, 0))
        server.listen(0)  # the queue holds one connection
        server.setblocking(False)
        port = server.getsockname()[1]
        filler = socket.create_connection((HOST, port))  # now the queue is full
        bal = Balancer()
        bal.set_endpoints([Backend("t1", HOST, port, "n1")])
        proxy = TcpProxy(HOST, 0, bal)  # the default connect timeout
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            await wait_until(lambda: proxy.stats.connections == 1, 5.0)
            first, _ = await loop.sock_accept(server)  # the filler: room for the SYN sent again
            first.close()
            conn, _ = await asyncio.wait_for(loop.sock_accept(server), 10.0)
            with conn:
                await loop.sock_sendall(conn, b"served\n")
                assert await asyncio.wait_for(reader.readline(), 10.0) == b"served\n"
            writer.close()
            assert proxy.stats.no_backend == 0 and proxy.stats.retries == 0
        finally:
            filler.close()
            await proxy.close()
