"""Hostile input on published ports (issue 11, item 10): every limit of `node.proxy.limits`
with real sockets on 127.0.0.1. Each refused request gets its status, its connection is
closed, and no replica is contacted for a refused head."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from node.proxy.balancer import Backend, Balancer
from node.proxy.http import HttpProxy
from node.proxy.limits import ConnectionCap, HttpLimits
from node.proxy.tcp import TcpProxy
from tests.helpers import wait_until
from tests.unit.test_proxy_http import HOST, Client, HttpBackend, Message, read_head

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
async def backend() -> AsyncIterator[HttpBackend]:
    b = HttpBackend("a")
    yield b
    await b.close()


async def proxy_to(b: HttpBackend, **kw: object) -> HttpProxy:
    bal = Balancer()
    bal.set_endpoints([await b.start()])
    proxy = HttpProxy(HOST, 0, bal, service="web", **kw)  # type: ignore[arg-type]
    await proxy.start()
    return proxy


async def refused(c: Client, status: int, timeout: float = 5.0) -> Message:
    """The proxy's answer `status`, then the connection closed."""
    async with asyncio.timeout(timeout):
        m = await read_head(c.reader)
        assert m is not None and m.status == status, m
        m.body = await c.reader.readexactly(int(m.get("content-length")[0]))
    assert m.get("connection") == ["close"]
    assert await c.closed(timeout)
    return m


async def send_slowly(c: Client, data_gen: object, budget: int) -> int:
    """Write pieces from `data_gen` until the proxy closes the connection or `budget` bytes
    went out; returns the bytes written (the client keeps writing, as an attacker would)."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        for piece in data_gen:  # type: ignore[attr-defined]
            if sent >= budget or c.reader.at_eof() or c.writer.is_closing():
                break
            c.writer.write(piece)
            await c.writer.drain()
            sent += len(piece)
            await asyncio.sleep(0)  # let the answer in
            if c.reader._buffer:  # type: ignore[attr-defined]  # the proxy answered: stop
                break
    return sent


def pieces(prefix: bytes, filler: bytes, size: int, total: int) -> object:
    yield prefix
    for _ in range(total // size):
        yield filler * size


# -- heads ---------------------------------------------------------------------------------------


async def test_a_url_over_8_kib_sent_in_small_writes_gets_414_and_no_backend(backend: HttpBackend) -> None:
    proxy = await proxy_to(backend)
    c = await Client.open(proxy.port)
    sent = await send_slowly(c, pieces(b"GET /", b"a", 512, 16 * MiB), 16 * MiB)
    await refused(c, 414)
    assert sent < 1 * MiB  # cut off early, not after the 16 MiB
    assert backend.accepts == 0 and proxy.stats.rejected == 1
    await c.close()
    # a URL of 8 KiB in pieces is whole at the backend
    c = await Client.open(proxy.port)
    target = b"/" + b"b" * (8 * KiB - 1)
    for i in range(0, len(target), 700):
        c.writer.write((b"GET " if i == 0 else b"") + target[i : i + 700])
        await c.writer.drain()
    c.writer.write(b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await c.response()).status == 200
    assert backend.seen[0].line.split()[1] == target.decode()
    await c.close()
    await proxy.close()


async def test_a_header_that_never_ends_gets_431_early(backend: HttpBackend) -> None:
    proxy = await proxy_to(backend)
    c = await Client.open(proxy.port)
    sent = await send_slowly(c, pieces(b"GET / HTTP/1.1\r\nX-Flood: ", b"x", 1024, 16 * MiB), 16 * MiB)
    await refused(c, 431)
    assert sent < 1 * MiB
    assert backend.accepts == 0 and proxy.stats.rejected == 1
    await c.close()
    await proxy.close()


async def test_a_head_over_64_kib_in_one_write_gets_431(backend: HttpBackend) -> None:
    proxy = await proxy_to(backend)
    c = await Client.open(proxy.port)
    c.send("GET", "/", [(f"X-H{i}", "v" * 1000) for i in range(70)])  # 70 KiB, a whole head
    await refused(c, 431)
    assert backend.accepts == 0
    await c.close()
    await proxy.close()


async def test_over_100_header_lines_get_431_before_the_head_ends(backend: HttpBackend) -> None:
    proxy = await proxy_to(backend)
    c = await Client.open(proxy.port)
    c.writer.write(b"GET / HTTP/1.1\r\n" + b"".join(b"X-N%d: 1\r\n" % i for i in range(150)))  # no end
    await refused(c, 431)
    assert backend.accepts == 0
    await c.close()
    c = await Client.open(proxy.port)  # special headers count too
    c.writer.write(b"GET / HTTP/1.1\r\n" + b"X-Forwarded-For: 10.0.0.1\r\n" * 150)
    await refused(c, 431)
    await c.close()
    c = await Client.open(proxy.port)  # 100 (Host and 99 more) are served
    r = await c.get(headers=[(f"X-N{i}", "1") for i in range(99)])
    assert r.status == 200 and backend.accepts == 1
    await c.close()
    await proxy.close()


async def test_a_trailer_that_never_ends_is_cut(backend: HttpBackend) -> None:
    proxy = await proxy_to(backend)
    c = await Client.open(proxy.port)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: "
    sent = await send_slowly(c, pieces(head, b"t", 1024, 16 * MiB), 16 * MiB)
    await refused(c, 431)
    assert sent < 1 * MiB
    await c.close()
    await proxy.close()


# -- timeouts ------------------------------------------------------------------------------------


async def test_a_head_too_slow_gets_408_and_no_backend(backend: HttpBackend) -> None:
    proxy = await proxy_to(backend, limits=HttpLimits(head_timeout=0.5))
    slow = await Client.open(proxy.port)
    silent = await Client.open(proxy.port)
    slow.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    for _ in range(20):  # a byte now and then keeps no head alive past the timeout
        with contextlib.suppress(ConnectionError):
            slow.writer.write(b"X")
        await asyncio.sleep(0.05)
        if slow.reader._buffer or slow.reader.at_eof():  # type: ignore[attr-defined]
            break
    await refused(slow, 408)
    await refused(silent, 408)  # a connection that never sends a head
    assert backend.accepts == 0 and proxy.stats.timeouts == 2
    keep = await Client.open(proxy.port)  # a head in time is served
    assert (await keep.get()).status == 200
    await wait_until(lambda: proxy.stats.active == 1, 3.0, message="slow clients closed")
    for c in (slow, silent, keep):
        await c.close()
    await proxy.close()


async def test_a_body_stalled_gets_408_and_the_backend_connection_is_dropped(backend: HttpBackend) -> None:
    proxy = await proxy_to(backend, limits=HttpLimits(body_timeout=0.5))
    c = await Client.open(proxy.port)
    c.writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    await refused(c, 408)
    assert proxy.stats.timeouts == 1 and not backend.seen  # the request never reached it whole
    await wait_until(lambda: proxy.stats.active == 0, 3.0, message="client connection closed")
    await c.close()
    await proxy.close()


# -- connections ---------------------------------------------------------------------------------


async def test_connections_over_the_node_cap_are_closed_at_once(backend: HttpBackend) -> None:
    cap = ConnectionCap(2)
    one = await proxy_to(backend, cap=cap)
    other = HttpBackend("b")
    two = await proxy_to(other, cap=cap)  # the cap is the node's: shared by listeners
    a, b = await Client.open(one.port), await Client.open(two.port)
    assert (await a.get()).status == 200 and (await b.get()).status == 200
    extra = await Client.open(one.port)
    assert await extra.closed()
    assert one.stats.refused == 1 and cap.open == 2 and cap.refused == 1
    await a.close()
    await wait_until(lambda: cap.open == 1, 3.0, message="a connection given back")
    again = await Client.open(two.port)
    assert (await again.get()).status == 200
    for c in (b, extra, again):
        await c.close()
    await one.close()
    await two.close()
    await other.close()
    assert cap.open == 0


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_tcp_connections_idle_too_long_are_closed_active_ones_stay() -> None:
    server = await asyncio.start_server(echo, HOST, 0)
    bal = Balancer()
    bal.set_endpoints([Backend("e", HOST, server.sockets[0].getsockname()[1], "n1")])
    cap = ConnectionCap(1)
    proxy = TcpProxy(HOST, 0, bal, idle_timeout=0.4, cap=cap)
    await proxy.start()
    idle_r, idle_w = await asyncio.open_connection(HOST, proxy.port)
    busy_r, busy_w = await asyncio.open_connection(HOST, proxy.port)  # over the cap of 1
    assert await asyncio.wait_for(busy_r.read(), 2.0) == b"" and proxy.stats.refused == 1
    idle_w.write(b"hi")
    assert await asyncio.wait_for(idle_r.readexactly(2), 2.0) == b"hi"
    assert await asyncio.wait_for(idle_r.read(), 5.0) == b""  # closed once idle
    assert proxy.stats.timeouts == 1
    await wait_until(lambda: cap.open == 0, 3.0, message="idle connection given back")
    busy_r, busy_w = await asyncio.open_connection(HOST, proxy.port)
    for i in range(12):  # a byte every 0.1 s: never idle for 0.4 s
        busy_w.write(b"%d" % (i % 10))
        assert await asyncio.wait_for(busy_r.readexactly(1), 2.0) == b"%d" % (i % 10)
        await asyncio.sleep(0.1)
    assert proxy.stats.timeouts == 1
    for w in (idle_w, busy_w):
        w.close()
    await proxy.close()
    server.close()


async def test_a_connection_closing_after_its_requests_still_gets_its_504() -> None:
    async def silent(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(30)
        return False

    b = HttpBackend("s", silent)
    proxy = await proxy_to(b, response_timeout=0.5)
    c = await Client.open(proxy.port)
    c.send("GET", "/")
    c.writer.write(b"\x00garbage\r\n\r\n")  # unreadable after a whole request: close after it
    r = await c.response()
    assert r.status == 504 and await c.closed()
    await c.close()
    await proxy.close()
    await b.close()
