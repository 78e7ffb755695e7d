"""The L7 proxy with real sockets on 127.0.0.1 and small asyncio HTTP/1.1 servers as backends."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import pytest
import uvloop

from node.proxy.balancer import Backend, Balancer, OutlierConfig
from node.proxy.http import HIGH_WATER, HttpProxy
from node.proxy.http_conn import _Client
from node.proxy.http_upstream import _Upstream
from tests.helpers import wait_until

HOST = "127.0.0.1"
MiB = 1024 * 1024


# -- HTTP on the wire, as the tests' clients and backends speak it ----------------------------


@dataclass
class Message:
    """A request (`line` = method target version) or a response (`line` = status line)."""

    line: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    body_len: int = 0
    body_sha: str = ""

    def get(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def status(self) -> int:
        return int(self.line.split()[1])

    @property
    def method(self) -> str:
        return self.line.split()[0]


async def read_head(reader: asyncio.StreamReader) -> Message | None:
    """The next head, or None at a clean EOF."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise
        return None
    line, *rest = raw[:-4].decode("latin-1").split("\r\n")
    headers = [(n.strip(), v.strip()) for n, v in (h.split(":", 1) for h in rest)]
    return Message(line, headers)


async def read_body(
    reader: asyncio.StreamReader, m: Message, keep: bool = True, until_eof: bool = False
) -> None:
    """Read `m`'s body (Content-Length, chunked, or until EOF); keep it or only hash it."""
    sha = hashlib.sha256()
    parts: list[bytes] = []

    def take(data: bytes) -> None:
        sha.update(data)
        m.body_len += len(data)
        if keep:
            parts.append(data)

    if any("chunked" in v.lower() for v in m.get("transfer-encoding")):
        while (size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)) > 0:
            take(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
    elif m.get("content-length"):
        left = int(m.get("content-length")[0])
        while left:
            data = await reader.read(min(left, 1 << 16))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            take(data)
            left -= len(data)
    elif until_eof:
        while data := await reader.read(1 << 16):
            take(data)
    m.body = b"".join(parts)
    m.body_sha = sha.hexdigest()


def encode(line: str, headers: Iterable[tuple[str, str]], body: bytes | None = None) -> bytes:
    head = [line, *(f"{n}: {v}" for n, v in headers)]
    if body is not None and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Client:
    """One client connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection(HOST, port))

    def send(self, method: str = "GET", target: str = "/", headers: Iterable[tuple[str, str]] = (),
             body: bytes | None = None, version: str = "HTTP/1.1") -> None:  # fmt: skip
        headers = [("Host", "svc"), *headers]
        self.writer.write(encode(f"{method} {target} {version}", headers, body))

    async def response(self, method: str = "GET", timeout: float = 5.0) -> Message:
        async with asyncio.timeout(timeout):
            m = await read_head(self.reader)
            assert m is not None, "connection closed before a response"
            if method != "HEAD" and m.status >= 200 and m.status not in (204, 304):
                await read_body(self.reader, m, until_eof=True)
            return m

    async def get(self, target: str = "/", headers: Iterable[tuple[str, str]] = ()) -> Message:
        self.send("GET", target, headers)
        return await self.response()

    async def closed(self, timeout: float = 2.0) -> bool:
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionError):
                return await self.reader.read() == b""
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# -- backends ---------------------------------------------------------------------------------

Respond = Callable[["HttpBackend", Message, asyncio.StreamWriter, int], Awaitable[bool]]


async def answer_name(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
    """Answer with the backend's name; keep the connection (the default backend)."""
    body = b"" if req.method == "HEAD" else f"{b.name}\n".encode()
    w.write(
        encode("HTTP/1.1 200 OK", [("Content-Length", str(len(b.name) + 1)), ("X-Backend", b.name)]) + body
    )
    return True


@dataclass
class HttpBackend:
    """A small keep-alive HTTP/1.1 server: `respond` answers each request read whole."""

    name: str
    respond: Respond = answer_name
    accepts: int = 0
    seen: list[Message] = field(default_factory=list)
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self.handle, HOST, 0)
        return Backend(self.name, HOST, self.server.sockets[0].getsockname()[1], "n1")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        n = 0
        # a cancelled handler ends quietly (asyncio logs the cancellation of a handler task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            while (req := await read_head(reader)) is not None:
                await read_body(reader, req)
                self.seen.append(req)
                if not await self.respond(self, req, writer, n):
                    break
                await writer.drain()
                n += 1
        writer.close()
        self.tasks.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Backends:
    def __init__(self) -> None:
        self.all: list[HttpBackend] = []

    async def start(self, name: str, respond: Respond = answer_name) -> tuple[HttpBackend, Backend]:
        b = HttpBackend(name, respond)
        self.all.append(b)
        return b, await b.start()

    async def close(self) -> None:
        for b in self.all:
            await b.close()


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    yield b
    await b.close()


def dead_backend(key: str) -> Backend:
    """A port nobody listens on: connects are refused."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    return Backend(key, HOST, port, "n1")


async def started(balancer: Balancer, **kw: float | str) -> HttpProxy:
    proxy = HttpProxy(HOST, 0, balancer, service="web", **kw)  # type: ignore[arg-type]
    await proxy.start()
    return proxy


# -- routing -----------------------------------------------------------------------------------


async def test_round_robin_per_request_on_one_keepalive_connection(backends: Backends) -> None:
    bal = Balancer()
    started_ = [await backends.start(f"b{i}") for i in range(3)]
    bal.set_endpoints(b for _, b in started_)
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    names = [(await c.get()).body.decode().strip() for _ in range(30)]
    assert Counter(names) == {"b0": 10, "b1": 10, "b2": 10}
    assert names[:3] == ["b0", "b1", "b2"]
    assert [b.accepts for b, _ in started_] == [1, 1, 1]  # one pooled connection each, reused
    assert proxy.stats.requests == 30 and proxy.stats.active == 1 and proxy.stats.errors == 0
    assert proxy.stats.latency.count == 30
    await c.close()
    await proxy.close()
    assert proxy.stats.active == 0


async def test_backend_connections_are_reused_across_client_connections(backends: Backends) -> None:
    bal = Balancer()
    started_ = [await backends.start(f"b{i}") for i in range(3)]
    bal.set_endpoints(b for _, b in started_)
    proxy = await started(bal)
    for i in range(12):  # a new client connection per request, half of them asking to close
        c = await Client.open(proxy.port)
        r = await c.get(headers=[("Connection", "close")] if i % 2 else [])
        assert r.status == 200
        if i % 2:
            assert r.get("connection") == ["close"] and await c.closed()
        await c.close()
    assert [b.accepts for b, _ in started_] == [1, 1, 1]
    assert all(not b.get("connection") for be, _ in started_ for b in be.seen)
    await proxy.close()


async def test_pipelined_requests_are_answered_in_order(backends: Backends) -> None:
    bal = Balancer()
    bal.set_endpoints([(await backends.start(f"b{i}"))[1] for i in range(3)])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    for i in range(6):
        c.send("GET", f"/{i}")
    names = [(await c.response()).body.decode().strip() for _ in range(6)]
    assert names == ["b0", "b1", "b2"] * 2
    await c.close()
    await proxy.close()


async def test_nothing_after_a_last_request_is_served(backends: Backends) -> None:
    b, backend = await backends.start("a")
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    c.send("GET", "/last", [("Connection", "close")])
    c.send("POST", "/never", body=b"x")
    r = await c.response()
    assert r.body == b"a\n" and await c.closed()
    assert [m.line.split()[1] for m in b.seen] == ["/last"]
    await c.close()
    bal.set_endpoints([])  # the same with an answer of the proxy's own
    c = await Client.open(proxy.port)
    c.send("GET", "/", version="HTTP/1.0")
    c.send("GET", "/")
    assert (await c.response()).status == 503 and await c.closed()
    assert proxy.stats.requests == 2
    await c.close()
    bal.set_endpoints([backend])  # requests read whole are served before garbage closes
    c = await Client.open(proxy.port)
    c.send("GET", "/1")
    c.send("GET", "/2")
    c.writer.write(b"\x00garbage\r\n\r\n")
    assert [(await c.response()).status for _ in range(2)] == [200, 200] and await c.closed()
    await c.close()
    await proxy.close()


# -- headers -----------------------------------------------------------------------------------


async def test_forwarded_headers(backends: Backends) -> None:
    b, backend = await backends.start("a")
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal, scheme="https")
    c = await Client.open(proxy.port)
    assert (await c.get()).status == 200
    await c.get(headers=[("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "gopher")])
    first, second = b.seen
    assert first.get("x-forwarded-for") == ["127.0.0.1"] and first.get("x-forwarded-proto") == ["https"]
    assert second.get("x-forwarded-for") == ["10.0.0.1, 127.0.0.1"]
    assert second.get("x-forwarded-proto") == ["https"]
    assert second.get("host") == ["svc"]
    await c.close()
    await proxy.close()


async def test_hop_by_hop_headers_are_dropped_both_ways(backends: Backends) -> None:
    async def hoppy(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        hdrs = [("Connection", "X-Resp-Hop"), ("X-Resp-Hop", "1"), ("Keep-Alive", "timeout=5"),
                ("Trailer", "X-T"), ("X-Kept", "yes"), ("Content-Length", "2")]  # fmt: skip
        w.write(encode("HTTP/1.1 200 OK", hdrs) + b"ok")
        return True

    b, backend = await backends.start("a", hoppy)
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    hop = [("Connection", "keep-alive, X-Hop, Upgrade"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
           ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Upgrade", "websocket"),
           ("X-Kept", "yes")]  # fmt: skip
    r = await c.get(headers=hop)
    assert r.status == 200 and r.body == b"ok"
    seen = {n.lower() for n, _ in b.seen[0].headers}
    assert not seen & {"x-hop", "keep-alive", "proxy-connection", "te"}
    # an upgrade asked for keeps its two headers (test_proxy_upgrade.py), and only those
    assert b.seen[0].get("connection") == ["upgrade"] and b.seen[0].get("upgrade") == ["websocket"]
    assert b.seen[0].get("x-kept") == ["yes"]
    got = {n.lower() for n, _ in r.headers}
    assert not got & {"connection", "x-resp-hop", "keep-alive", "trailer"}
    assert r.get("x-kept") == ["yes"]
    assert (await c.get()).body == b"ok"  # the upgrade request did not derail the connection
    await c.get(headers=[("Upgrade", "websocket")])  # without Connection: upgrade, dropped
    assert "upgrade" not in {n.lower() for n, _ in b.seen[2].headers}
    await c.close()
    await proxy.close()


# -- bodies ------------------------------------------------------------------------------------


async def test_chunked_request_and_until_eof_response_are_reframed(backends: Backends) -> None:
    async def echo_close(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(encode("HTTP/1.1 200 OK", [("Connection", "close")]) + req.body[::-1])
        return False  # the body ends when the connection closes

    b, backend = await backends.start("a", echo_close)
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    c.writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: 1\r\n\r\n")  # fmt: skip
    r = await c.response()
    assert r.body == b"gfedcba" and r.get("transfer-encoding") == ["chunked"]
    assert b.seen[0].get("transfer-encoding") == ["chunked"] and b.seen[0].body == b"abcdefg"
    assert (await c.get()).status == 200  # the client connection stayed open
    await c.close()
    await proxy.close()


async def test_head_response_does_not_wait_for_a_body(backends: Backends) -> None:
    b, backend = await backends.start("a")
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    c.send("HEAD")
    r = await c.response("HEAD")
    assert r.status == 200 and r.get("content-length") == ["2"]
    assert (await c.get()).body == b"a\n"
    assert b.accepts == 1
    await c.close()
    await proxy.close()


async def test_large_chunked_upload_is_streamed_with_bounded_memory(backends: Backends) -> None:
    size = 20 * MiB
    release = asyncio.Event()

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await read_head(reader)
        assert req is not None
        await release.wait()  # read nothing for a while: back-pressure must reach the client
        await read_body(reader, req, keep=False)
        body = f"{req.body_len} {req.body_sha}".encode()
        writer.write(encode("HTTP/1.1 200 OK", [("Content-Length", str(len(body)))]) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow_reader, HOST, 0)
    bal = Balancer()
    bal.set_endpoints([Backend("a", HOST, server.sockets[0].getsockname()[1])])
    proxy = await started(bal)
    payload = os.urandom(size)
    c = await Client.open(proxy.port)
    c.writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    sent = 0

    async def upload() -> None:
        nonlocal sent
        for i in range(0, size, 1 << 16):
            piece = payload[i : i + (1 << 16)]
            c.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            await c.writer.drain()
        c.writer.write(b"0\r\n\r\n")

    uploading = asyncio.create_task(upload())
    peak, deadline = 0, time.monotonic() + 0.5
    while time.monotonic() < deadline:
        peak = max(peak, proxy.buffered())
        await asyncio.sleep(0.01)
    assert peak <= HIGH_WATER + 512 * 1024
    assert sent < size  # back-pressure reached the client (kernel buffers hold some MB)
    release.set()
    r = await c.response(timeout=30)
    await uploading
    assert r.body.decode() == f"{size} {hashlib.sha256(payload).hexdigest()}"
    await c.close()
    await proxy.close()
    server.close()


async def test_large_chunked_download_to_a_slow_client_is_bounded(backends: Backends) -> None:
    size = 20 * MiB
    produced = 0
    sha = hashlib.sha256()

    async def blast(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        nonlocal produced
        w.write(encode("HTTP/1.1 200 OK", [("Transfer-Encoding", "chunked")]))
        chunk = os.urandom(1 << 16)
        while produced < size:
            w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sha.update(chunk)
            produced += len(chunk)
            await w.drain()
        w.write(b"0\r\n\r\n")
        return True

    b, backend = await backends.start("a", blast)
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    reader, writer = await asyncio.open_connection(HOST, proxy.port, limit=1 << 16)
    c = Client(reader, writer)
    c.send()
    peak, deadline = 0, time.monotonic() + 0.5
    while time.monotonic() < deadline:  # the client reads nothing meanwhile
        peak = max(peak, proxy.buffered())
        await asyncio.sleep(0.01)
    assert peak <= HIGH_WATER + 512 * 1024
    assert produced < size  # back-pressure reached the backend (kernel buffers hold some MB)
    async with asyncio.timeout(30):
        m = await read_head(reader)
        assert m is not None and m.get("transfer-encoding") == ["chunked"]
        await read_body(reader, m, keep=False)
    assert m.body_len == size and m.body_sha == sha.hexdigest()
    assert (await c.get()).status == 200  # and the connections are reusable after it
    assert b.accepts == 1
    await c.close()
    await proxy.close()


async def test_expect_100_continue(backends: Backends) -> None:
    async def continue_then_count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await read_head(reader)
        assert req is not None and req.get("expect") == ["100-continue"]
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await read_body(reader, req)
        body = b"got %d" % len(req.body)
        writer.write(encode("HTTP/1.1 200 OK", [("Content-Length", str(len(body)))]) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(continue_then_count, HOST, 0)
    bal = Balancer()
    bal.set_endpoints([Backend("a", HOST, server.sockets[0].getsockname()[1])])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    c.writer.write(b"PUT /f HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    interim = await c.response()  # the client waits for it before sending the body
    assert interim.status == 100
    c.writer.write(b"hello")
    r = await c.response()
    assert r.status == 200 and r.body == b"got 5"
    await c.close()
    await proxy.close()
    server.close()


async def test_pipelined_requests_with_bodies(backends: Backends) -> None:
    async def echo(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(encode("HTTP/1.1 200 OK", [("Content-Length", str(len(req.body)))]) + req.body)
        return True

    bal = Balancer()
    bal.set_endpoints([(await backends.start(k, echo))[1] for k in "ab"])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    bodies = [os.urandom(n) for n in (10, 70_000, 0, 300_000, 5)]
    for i, body in enumerate(bodies):
        c.send("POST", f"/{i}", body=body)
    assert [(await c.response()).body for _ in bodies] == bodies
    assert proxy.stats.errors == 0
    await c.close()
    await proxy.close()


async def test_no_content_and_backend_connection_close(backends: Backends) -> None:
    async def varied(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        if req.line.split()[1] == "/empty":
            w.write(encode("HTTP/1.1 204 No Content", []))
            return True
        w.write(encode("HTTP/1.1 200 OK", [("Connection", "close"), ("Content-Length", "3")]) + b"bye")
        return False

    b, backend = await backends.start("a", varied)
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    r = await c.get("/empty")
    assert r.status == 204 and not r.get("transfer-encoding") and not r.get("connection")
    r = await c.get("/bye")  # the backend closes, the client connection stays
    assert r.body == b"bye" and not r.get("connection")
    assert (await c.get("/empty")).status == 204
    assert b.accepts == 2  # the connection the backend closed was not reused
    await c.close()
    await proxy.close()


async def test_idle_pooled_connections_are_closed(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("node.proxy.http.POOL_IDLE", 0.2)
    b, backend = await backends.start("a")
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    assert (await c.get()).status == 200
    await wait_until(lambda: not b.tasks, 3.0, message="backend saw its idle connection closed")
    assert (await c.get()).status == 200 and b.accepts == 2
    await c.close()
    await proxy.close()


# -- failures ----------------------------------------------------------------------------------


async def test_refused_backend_is_retried_then_ejected(backends: Backends) -> None:
    bal = Balancer(OutlierConfig(consecutive_failures=3, base_ejection=60.0))
    dead = dead_backend("a")
    bal.set_endpoints([dead, (await backends.start("b"))[1], (await backends.start("c"))[1]])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    names = [(await c.get()).body.decode().strip() for _ in range(12)]
    assert set(names) == {"b", "c"}  # the client never notices
    # rotation a,b,c: requests 1, 3 and 5 hit `a`, retry on `b`; the third failure ejects it
    assert proxy.stats.retries == 3 and proxy.stats.errors == 0 and proxy.stats.ejections == 1
    assert bal.is_ejected(dead, time.monotonic())
    await c.close()
    await proxy.close()


async def test_get_retried_once_when_backend_closes_without_answering_post_is_not(
    backends: Backends,
) -> None:
    async def hang_up(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        return False

    closer, a = await backends.start("a", hang_up)
    good, b = await backends.start("b")
    bal = Balancer()
    bal.set_endpoints([a, b])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    r = await c.get()  # a hangs up, retried on b
    assert r.status == 200 and r.body == b"b\n" and proxy.stats.retries == 1
    c.send("POST", body=b"payment")  # picks a: hangs up, not retried
    r = await c.response()
    assert r.status == 502 and b'"web"' in r.body
    assert [m.method for m in closer.seen] == ["GET", "POST"] and [m.method for m in good.seen] == ["GET"]
    assert proxy.stats.retries == 1 and proxy.stats.errors == 1
    assert (await c.get()).status == 200  # a 502 keeps the client connection
    await c.close()
    await proxy.close()


async def test_every_replica_closing_gives_502_after_one_retry(backends: Backends) -> None:
    async def hang_up(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        return False

    bal = Balancer()
    bal.set_endpoints([(await backends.start(k, hang_up))[1] for k in "abc"])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    r = await c.get()
    assert r.status == 502 and r.body == b'bad gateway: a replica of service "web" failed to answer\n'
    assert proxy.stats.retries == 1 and proxy.stats.no_backend == 0
    await c.close()
    await proxy.close()


async def test_stale_pooled_connection_is_not_an_error(backends: Backends) -> None:
    async def one_per_connection(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            return False  # as if its keep-alive timeout fired just as the request came
        return await answer_name(b, req, w, n)

    _, backend = await backends.start("a", one_per_connection)
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    assert (await c.get()).status == 200
    assert (await c.get()).status == 200  # the pooled one fails, a fresh one answers
    c.send("DELETE")  # not idempotent, but no body was sent: safe to send again
    assert (await c.response()).status == 200
    c.send("POST", body=b"x")  # a body went out on a connection that then failed: not resent
    assert (await c.response()).status == 502
    assert proxy.stats.retries == 0 and proxy.stats.errors == 1
    await c.close()
    await proxy.close()


async def test_no_backend_answers_503_at_once() -> None:
    proxy = await started(Balancer())
    c = await Client.open(proxy.port)
    t0 = time.monotonic()
    r = await c.get()
    assert time.monotonic() - t0 < 1.0
    assert r.status == 503 and r.body == b'no healthy replica of service "web"\n'
    assert (await c.get()).status == 503  # keep-alive goes on
    assert proxy.stats.no_backend == 2 and proxy.stats.errors == 2 and proxy.stats.requests == 2
    await c.close()
    await proxy.close()
    assert proxy.stats.active == 0


async def test_every_backend_refusing_answers_503() -> None:
    bal = Balancer()
    bal.set_endpoints([dead_backend(k) for k in "abcde"])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    r = await c.get()
    assert r.status == 503 and b'"web"' in r.body
    assert proxy.stats.retries == 2 and proxy.stats.no_backend == 1  # 3 attempts in all
    await c.close()
    await proxy.close()


async def test_silent_backend_answers_504(backends: Backends) -> None:
    async def silent(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(30)
        return False

    _, backend = await backends.start("a", silent)
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal, response_timeout=0.3)
    c = await Client.open(proxy.port)
    t0 = time.monotonic()
    r = await c.get()
    assert r.status == 504 and b'"web"' in r.body and time.monotonic() - t0 < 2.0
    assert proxy.stats.errors == 1
    await c.close()
    await proxy.close()


async def test_malformed_request_gets_400_and_close(backends: Backends) -> None:
    bal = Balancer()
    bal.set_endpoints([(await backends.start("a"))[1]])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    c.writer.write(b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n")
    r = await c.response()
    assert r.status == 400 and await c.closed()
    await c.close()
    c = await Client.open(proxy.port)
    c.writer.write(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc")
    assert (await c.response()).status == 400 and await c.closed()
    await c.close()
    assert proxy.stats.errors == 2
    await proxy.close()


# -- connection semantics ------------------------------------------------------------------


async def test_http10_and_connection_close(backends: Backends) -> None:
    b, backend = await backends.start("a")
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    c = await Client.open(proxy.port)  # HTTP/1.0: closed after the response
    c.send(version="HTTP/1.0")
    r = await c.response()
    assert r.status == 200 and r.body == b"a\n" and await c.closed()
    await c.close()
    c = await Client.open(proxy.port)  # HTTP/1.0 asking for keep-alive: kept
    for _ in range(2):
        c.send(version="HTTP/1.0", headers=[("Connection", "keep-alive")])
        r = await c.response()
        assert r.body == b"a\n" and r.get("connection") == ["keep-alive"]
    await c.close()
    c = await Client.open(proxy.port)  # HTTP/1.1 with Connection: close
    r = await c.get(headers=[("Connection", "close")])
    assert r.body == b"a\n" and r.get("connection") == ["close"] and await c.closed()
    await c.close()
    assert b.accepts == 1  # the backend side stayed keep-alive throughout
    await proxy.close()


async def test_drain_lets_a_slow_request_finish_while_new_ones_go_elsewhere(backends: Backends) -> None:
    release = asyncio.Event()

    async def slow(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        await release.wait()
        return await answer_name(b, req, w, n)

    slow_b, a = await backends.start("a", slow)
    _, b = await backends.start("b")
    bal = Balancer()
    bal.set_endpoints([a, b])
    proxy = await started(bal, drain_timeout=5.0)
    c1 = await Client.open(proxy.port)
    c1.send()
    await wait_until(lambda: slow_b.seen, 2.0, message="slow request reached a")
    proxy.drain(bal.set_endpoints([b]))
    c2 = await Client.open(proxy.port)
    assert [(await c2.get()).body for _ in range(3)] == [b"b\n"] * 3
    release.set()
    r = await c1.response()
    assert r.status == 200 and r.body == b"a\n"
    await c1.close()
    await c2.close()
    await proxy.close()


async def test_drain_aborts_what_outlives_the_timeout(backends: Backends) -> None:
    async def silent(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(30)
        return False

    _, a = await backends.start("a", silent)
    bal = Balancer()
    bal.set_endpoints([a])
    proxy = await started(bal, drain_timeout=0.2)
    c = await Client.open(proxy.port)
    c.send("POST", body=b"x")
    await wait_until(lambda: proxy.stats.requests == 1, 2.0)
    proxy.drain(bal.set_endpoints([]))
    r = await c.response()
    assert r.status == 502
    await c.close()
    await proxy.close()


async def test_close_drains_in_flight_and_closes_idle_connections(backends: Backends) -> None:
    release = asyncio.Event()

    async def slow(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        await release.wait()
        return await answer_name(b, req, w, n)

    slow_b, a = await backends.start("a", slow)
    bal = Balancer()
    bal.set_endpoints([a])
    proxy = await started(bal, drain_timeout=5.0)
    port = proxy.port
    idle = await Client.open(port)
    busy = await Client.open(port)
    busy.send()
    await wait_until(lambda: slow_b.seen, 2.0, message="request reached the backend")
    closing = asyncio.create_task(proxy.close())
    assert await idle.closed(1.0)  # an idle keep-alive connection is closed once idle DRAIN_IDLE
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, port)
    assert not closing.done()
    release.set()
    r = await busy.response()
    assert r.status == 200 and r.get("connection") == ["close"] and await busy.closed()
    await asyncio.wait_for(closing, 2.0)
    assert proxy.stats.active == 0
    await idle.close()
    await busy.close()


async def test_a_connection_accepted_as_the_close_begins_is_served_then_closed(backends: Backends) -> None:
    """uvloop hands an accepted connection to the engine one loop step after the accept, so
    one can arrive after `close()` began (a retired port, a replaced worker): its request is
    answered, with `Connection: close`, not cut without a response."""
    _, a = await backends.start("a", answer_name)
    bal = Balancer()
    bal.set_endpoints([a])
    proxy = await started(bal, drain_timeout=5.0)
    proxy._begin_close()  # the close has begun; the listener still holds its accept queue
    late = await Client.open(proxy.port)
    late.send()
    r = await late.response()
    assert r.status == 200 and r.get("connection") == ["close"] and await late.closed()
    await late.close()
    await proxy.close()


async def test_idle_and_slow_client_connections_are_closed(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("node.proxy.http.CLIENT_IDLE", 0.3)
    bal = Balancer()
    bal.set_endpoints([(await backends.start("a"))[1]])
    proxy = await started(bal)
    idle = await Client.open(proxy.port)
    assert (await idle.get()).status == 200
    slow = await Client.open(proxy.port)
    slow.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
    assert await idle.closed(3.0) and await slow.closed(3.0)
    await wait_until(lambda: proxy.stats.active == 0, 2.0, message="client connections closed")
    await idle.close()
    await slow.close()
    await proxy.close()


async def test_stop_accepting_frees_the_port_and_keeps_connections(backends: Backends) -> None:
    bal = Balancer()
    bal.set_endpoints([(await backends.start("a"))[1]])
    proxy = await started(bal)
    port = proxy.port
    c = await Client.open(port)
    assert (await c.get()).status == 200
    proxy.stop_accepting()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, port)
    assert (await c.get()).status == 200
    await c.close()
    await proxy.close()


async def test_close_aborts_after_drain_timeout(backends: Backends) -> None:
    async def silent(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(30)
        return False

    _, a = await backends.start("a", silent)
    bal = Balancer()
    bal.set_endpoints([a])
    proxy = await started(bal, drain_timeout=0.2)
    c = await Client.open(proxy.port)
    c.send()
    await wait_until(lambda: proxy.stats.requests == 1, 2.0)
    await asyncio.wait_for(proxy.close(), 2.0)
    assert await c.closed()
    assert proxy.stats.active == 0
    await c.close()


async def test_closed_connections_are_freed_without_the_cyclic_gc(backends: Backends) -> None:
    bal = Balancer()
    bal.set_endpoints([(await backends.start("a"))[1]])
    proxy = await started(bal)

    def alive() -> list[object]:  # garbage in cycles too, until the cyclic GC runs
        return [o for o in gc.get_objects() if type(o) in (_Client, _Upstream)]

    gc.collect()
    gc.disable()
    try:
        c = await Client.open(proxy.port)
        assert (await c.get()).status == 200
        assert len(alive()) == 2
        await c.close()
        await wait_until(lambda: proxy.stats.active == 0, 2.0)
        await proxy.close()  # closes the pooled backend connection
        await wait_until(lambda: not alive(), 2.0, message="connections freed by reference counting")
    finally:
        gc.enable()


def test_under_uvloop() -> None:
    async def main() -> None:
        b = Backends()
        bal = Balancer()
        bal.set_endpoints([(await b.start(f"t{i}"))[1] for i in range(3)] + [dead_backend("z")])
        proxy = await started(bal)
        c = await Client.open(proxy.port)
        names = [(await c.get()).body.decode().strip() for _ in range(9)]
        assert Counter(names) == {"t0": 3, "t1": 3, "t2": 3}
        c.send("POST", body=b"y" * (3 * MiB))
        assert (await c.response()).status == 200
        await c.close()
        await proxy.close()
        await b.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def test_close_answers_a_busy_keep_alive_client_with_connection_close_never_a_bare_close(
    backends: Backends,
) -> None:
    """A keep-alive client sending every 20 ms while the proxy closes (a worker replaced
    by another build: decision 76) gets each request answered, the one after the close
    began with `Connection: close`; closing it while idle would race its next request
    (a connection closed without a response, the rolling-upgrade test saw one)."""
    bal = Balancer()
    bal.set_endpoints([(await backends.start("a"))[1]])
    proxy = await started(bal, drain_timeout=5.0)
    c = await Client.open(proxy.port)
    assert (await c.get()).status == 200
    await asyncio.sleep(0.02)  # idle a moment, as between a load's requests
    closing = asyncio.create_task(proxy.close())
    await asyncio.sleep(0)  # the close began: listening stopped, idle connections looked at
    with pytest.raises(TimeoutError):  # idle for less than DRAIN_IDLE: not closed under the client
        await c.closed(0.05)
    r = await c.get()
    assert r.status == 200 and r.get("connection") == ["close"] and await c.closed(1.0)
    await asyncio.wait_for(closing, 3.0)
    await c.close()
