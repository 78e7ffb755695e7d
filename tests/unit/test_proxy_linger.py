"""Lingering close (`node.proxy.linger`): an answer to a request the L7 engine could not
read whole reaches a client that is still sending, then a clean EOF; a client that
never stops is cut after the quiet time or the byte budget. Real sockets on 127.0.0.1.

Before lingering, the engine closed at once: the client's next write drew an RST, and
the client saw "connection reset" instead of reading the answer to its end (the rare
flake of `test_a_head_too_slow_gets_408_and_no_backend`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from node.proxy import linger
from node.proxy.balancer import Backend, Balancer
from node.proxy.http import HttpProxy
from node.proxy.limits import HttpLimits
from tests.helpers import wait_until
from tests.unit.test_proxy_http import Client, HttpBackend
from tests.unit.test_proxy_limits import proxy_to

KiB = 1024


@pytest.fixture
async def backend() -> AsyncIterator[HttpBackend]:
    b = HttpBackend("a")
    yield b
    await b.close()


async def send_until_answered(c: Client, first: bytes, budget: int) -> None:
    """Write `first`, then header bytes, until the proxy's answer is readable."""
    c.writer.write(first)
    sent = 0
    while not c.reader._buffer and sent < budget:  # type: ignore[attr-defined]
        c.writer.write(b"a" * (4 * KiB))
        await c.writer.drain()
        sent += 4 * KiB
        await asyncio.sleep(0.001)
    assert c.reader._buffer, "no answer"  # type: ignore[attr-defined]


async def head_too_large(backend: HttpBackend) -> tuple[HttpProxy, Client]:
    """A proxy with a 16 KiB head bound, and a client whose head outgrew it: answered 431."""
    proxy = await proxy_to(backend, limits=HttpLimits(max_head=16 * KiB))
    c = await Client.open(proxy.port)
    await send_until_answered(c, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", 1024 * KiB)
    return proxy, c


async def read_to_end(c: Client, timeout: float = 5.0) -> bytes:
    """Everything the proxy sends until its EOF: a reset fails the test."""
    async with asyncio.timeout(timeout):
        return await c.reader.read()


async def test_a_431_reaches_a_client_still_sending_then_a_clean_eof(backend: HttpBackend) -> None:
    proxy, c = await head_too_large(backend)
    for _ in range(16):  # the client goes on sending, as an upload does, after the answer
        c.writer.write(b"a" * (16 * KiB))
        await c.writer.drain()
    c.writer.write_eof()
    data = await read_to_end(c)
    assert data.startswith(b"HTTP/1.1 431 ") and data.endswith(b"request header fields too large\n"), data
    assert backend.accepts == 0
    await wait_until(lambda: proxy.stats.active == 0, 3.0, message="lingering connection closed")
    await c.close()
    await proxy.close()


async def test_a_408_for_a_slow_head_reaches_a_client_sending_now_and_then(backend: HttpBackend) -> None:
    proxy = await proxy_to(backend, limits=HttpLimits(head_timeout=0.3))
    c = await Client.open(proxy.port)
    c.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    async with asyncio.timeout(5.0):
        while not c.reader._buffer:  # type: ignore[attr-defined]
            c.writer.write(b"X")
            await asyncio.sleep(0.02)
    for _ in range(5):  # and a few more bytes after the answer came
        c.writer.write(b"X")
        await c.writer.drain()
        await asyncio.sleep(0.02)
    c.writer.write_eof()
    data = await read_to_end(c)
    assert data.startswith(b"HTTP/1.1 408 "), data
    await c.close()
    await proxy.close()


async def test_a_client_that_never_stops_sending_is_cut_at_the_byte_budget(
    backend: HttpBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(linger, "MOST", 64 * KiB)
    proxy, c = await head_too_large(backend)
    with contextlib.suppress(ConnectionError):
        for _ in range(1000):  # bounded: 16 MiB at most, the budget is 64 KiB
            c.writer.write(b"a" * (16 * KiB))
            await c.writer.drain()
            if proxy.stats.active == 0:
                break
    await wait_until(lambda: proxy.stats.active == 0, 3.0, message="connection over its budget closed")
    await c.close()
    await proxy.close()


async def test_a_silent_lingering_client_is_closed_after_the_quiet_time(
    backend: HttpBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(linger, "QUIET", 0.2)
    proxy, c = await head_too_large(backend)
    # no EOF from the client: the proxy ends it after QUIET s without a byte
    data = await read_to_end(c)
    assert data.startswith(b"HTTP/1.1 431 "), data
    await wait_until(lambda: proxy.stats.active == 0, 3.0, message="quiet connection closed")
    await c.close()
    await proxy.close()


async def test_a_served_request_with_connection_close_does_not_linger(
    backend: HttpBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path of a new connection per request is unchanged: a request read whole
    and answered with `Connection: close` is closed at once, without waiting for the client
    (which keeps its socket open here: a lingering one would stay for 30 s)."""
    monkeypatch.setattr(linger, "QUIET", 30.0)
    monkeypatch.setattr(linger, "LONGEST", 60.0)
    proxy = await proxy_to(backend)
    c = await Client.open(proxy.port)
    c.send(headers=[("Connection", "close")])
    m = await c.response()
    assert m.status == 200
    assert await c.closed()
    await wait_until(lambda: proxy.stats.active == 0, 3.0, message="closed without lingering")
    await c.close()
    await proxy.close()


def test_a_transport_that_cannot_half_close_is_not_lingered_on() -> None:
    class NoEof(asyncio.Transport):
        def can_write_eof(self) -> bool:
            return False

        def is_closing(self) -> bool:
            return False

    class Owner:
        def connection_lost(self, exc: Exception | None) -> None:
            raise AssertionError("not lingering")

    assert linger.linger(Owner(), NoEof()) is False


async def test_a_request_refused_while_its_backend_connection_opens_is_never_sent() -> None:
    """A head read whole, then a body llhttp cannot parse in the same read: 400 while the
    backend connection was still being opened. That connect used to go on and send the
    refused request to the replica, whose answer was then written after the write side
    was shut (RuntimeError in `flush`, losing the other writes of its batch)."""
    got: list[bytearray] = []  # what each backend connection received

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        got.append(buf)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(64 * KiB):
                buf += data
                if buf.endswith(b"\r\n\r\n"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    bal = Balancer()
    bal.set_endpoints([Backend("b", "127.0.0.1", server.sockets[0].getsockname()[1], "n1")])
    proxy = HttpProxy("127.0.0.1", 0, bal, service="web")
    await proxy.start()
    attacker = await Client.open(proxy.port)
    attacker.writer.write(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    data = await read_to_end(attacker)
    assert data.startswith(b"HTTP/1.1 400 "), data
    # the connect ends: the fresh connection is pooled, or (before) the request is sent on it
    await wait_until(lambda: any(proxy.pool.values()) or any(got), 3.0, message="connect finished")
    assert not any(got), bytes(got[0])
    victim = await Client.open(proxy.port)
    m = await victim.get("/victim")
    assert (m.status, m.body) == (200, b"ok")
    await attacker.close()
    await victim.close()
    await proxy.close()
    server.close()


async def test_a_write_after_a_shut_write_side_does_not_lose_the_rest_of_the_batch() -> None:
    """`flush` used to raise at a write to a transport whose write side was shut
    (RuntimeError "Cannot call write() after write_eof()"), and every later write queued
    in that batch, other clients' included, was lost."""
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.put_nowait(await reader.read())
        writer.close()

    server = await asyncio.start_server(collect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = HttpProxy("127.0.0.1", 0, Balancer(), service="web")
    await proxy.start()
    loop = asyncio.get_running_loop()
    shut, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    other, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    proxy.send(shut, linger.SHUT)
    proxy.send(shut, b"too late")
    proxy.send(other, b"hello")
    proxy.send(other, None)
    proxy.flush()
    async with asyncio.timeout(5.0):
        assert sorted([await received.get(), await received.get()]) == [b"", b"hello"]
    shut.close()
    await proxy.close()
    server.close()
