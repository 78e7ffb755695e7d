"""Upgrades through the L7 engine (node.proxy.http, node.proxy.http_tunnel): real sockets
on 127.0.0.1, a hand-made upgrade server (a 101 with a WebSocket-like handshake, then
an echo of raw bytes), a client through the engine."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from node.proxy.balancer import Backend, Balancer
from node.proxy.http import HttpProxy
from tests.unit.test_proxy_http import HOST, Client, Message, encode, read_body, read_head, started

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZQ==")]


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


Tunnel = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then say bye and close (a half-close passed on both ways)."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write(b"bye")
    await writer.drain()


async def close_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo one read, then close: the client's side must close too."""
    writer.write(await reader.read(65536))
    await writer.drain()


@dataclass
class UpgradeServer:
    """Answers an upgrade with 101 (then `tunnel`) when `accept`, else 426 with a body,
    keeping the connection for more HTTP requests (200 "plain")."""

    tunnel: Tunnel = echo
    accept: bool = True
    force: bool = False  # 101 whatever was asked
    seen: list[Message] = field(default_factory=list)
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, name: str = "a") -> Backend:
        self.server = await asyncio.start_server(self.handle, HOST, 0)
        return Backend(name, HOST, self.server.sockets[0].getsockname()[1], "n1")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            while (req := await read_head(reader)) is not None:
                await read_body(reader, req)
                self.seen.append(req)
                if (req.get("upgrade") and self.accept) or self.force:
                    key = (req.get("sec-websocket-key") or [""])[0]
                    hdrs = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                            ("Sec-WebSocket-Accept", accept_key(key))]  # fmt: skip
                    writer.write(encode("HTTP/1.1 101 Switching Protocols", hdrs))
                    await self.tunnel(reader, writer)
                    break
                if req.get("upgrade"):
                    writer.write(encode("HTTP/1.1 426 Upgrade Required", [("Upgrade", "websocket")], b"no"))
                else:
                    writer.write(encode("HTTP/1.1 200 OK", [], b"plain"))
                await writer.drain()
        writer.close()
        self.tasks.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def servers() -> AsyncIterator[list[UpgradeServer]]:
    made: list[UpgradeServer] = []
    yield made
    for s in made:
        await s.close()


async def proxied(
    servers: list[UpgradeServer], server: UpgradeServer, **kw: float
) -> tuple[HttpProxy, Backend]:
    servers.append(server)
    backend = await server.start()
    bal = Balancer()
    bal.set_endpoints([backend])
    return await started(bal, **kw), backend


async def upgrade(c: Client) -> Message:
    c.send("GET", "/chat", UPGRADE)
    async with asyncio.timeout(5):
        m = await read_head(c.reader)
    assert m is not None
    return m


async def read_exactly(c: Client, n: int) -> bytes:
    async with asyncio.timeout(5):
        return await c.reader.readexactly(n)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_101_passes_and_bytes_echo_both_ways(servers: list[UpgradeServer]) -> None:
    proxy, _ = await proxied(servers, UpgradeServer())
    c = await Client.open(proxy.port)
    m = await upgrade(c)
    assert m.status == 101
    assert m.get("upgrade") == ["websocket"] and m.get("connection") == ["upgrade"]
    assert m.get("sec-websocket-accept") == [accept_key("dGhlIHNhbXBsZQ==")]
    seen = servers[0].seen[0]
    assert seen.get("connection") == ["upgrade"] and seen.get("upgrade") == ["websocket"]
    assert seen.get("x-forwarded-for") == ["127.0.0.1"]
    c.writer.write(b"\x81\x04ping")
    assert await read_exactly(c, 6) == b"\x81\x04ping"
    big = bytes(range(256)) * 8192  # 2 MiB: through the flow control both ways
    c.writer.write(big)
    got = await read_exactly(c, len(big))
    assert got == big
    assert proxy.stats.upgrades == 1 and proxy.stats.tunnels == 1
    await c.close()
    await until(lambda: proxy.stats.tunnels == 0 and proxy.stats.active == 0)
    await proxy.close()


async def test_bytes_sent_before_the_101_reach_the_replica(servers: list[UpgradeServer]) -> None:
    proxy, _ = await proxied(servers, UpgradeServer())
    c = await Client.open(proxy.port)
    c.writer.write(encode("GET /chat HTTP/1.1", [("Host", "svc"), *UPGRADE]) + b"early")
    async with asyncio.timeout(5):
        m = await read_head(c.reader)
    assert m is not None and m.status == 101
    assert await read_exactly(c, 5) == b"early"
    await c.close()
    await proxy.close()


async def test_half_close_is_passed_on_both_ways(servers: list[UpgradeServer]) -> None:
    proxy, _ = await proxied(servers, UpgradeServer())
    c = await Client.open(proxy.port)
    assert (await upgrade(c)).status == 101
    c.writer.write(b"last")
    c.writer.write_eof()  # the replica sees EOF, answers, then closes
    async with asyncio.timeout(5):
        assert await c.reader.read() == b"lastbye"
    await until(lambda: proxy.stats.tunnels == 0 and proxy.buffered() == 0)
    await c.close()
    await proxy.close()


async def test_replica_closing_closes_the_client(servers: list[UpgradeServer]) -> None:
    proxy, _ = await proxied(servers, UpgradeServer(close_after_one))
    c = await Client.open(proxy.port)
    assert (await upgrade(c)).status == 101
    c.writer.write(b"one")
    assert await read_exactly(c, 3) == b"one"
    assert await c.closed()  # the replica's FIN is passed on (a half-close, like any)
    await c.close()  # and once the client closes too, the tunnel is gone
    await until(lambda: proxy.stats.tunnels == 0 and proxy.stats.active == 0)
    await proxy.close()


async def test_refused_upgrade_is_a_plain_answer_and_keeps_the_connection(
    servers: list[UpgradeServer],
) -> None:
    proxy, _ = await proxied(servers, UpgradeServer(accept=False))
    c = await Client.open(proxy.port)
    # the upgrade request and a plain one after it, in one write: the second is HTTP again
    c.writer.write(
        encode("GET /chat HTTP/1.1", [("Host", "svc"), *UPGRADE])
        + encode("GET / HTTP/1.1", [("Host", "svc")])
    )
    r = await c.response()
    assert r.status == 426 and r.body == b"no"
    r = await c.response()
    assert r.status == 200 and r.body == b"plain"
    r = await c.get()  # and keep-alive goes on
    assert r.status == 200 and r.body == b"plain"
    assert proxy.stats.upgrades == 0 and proxy.stats.tunnels == 0
    await c.close()
    await proxy.close()


async def test_101_not_asked_for_is_a_bad_gateway(servers: list[UpgradeServer]) -> None:
    proxy, _ = await proxied(servers, UpgradeServer(force=True))
    c = await Client.open(proxy.port)
    r = await c.get(headers=[("Upgrade", "websocket"), ("Sec-WebSocket-Key", "x")])  # no Connection: upgrade
    assert r.status == 502
    await c.close()
    await proxy.close()


async def test_idle_tunnel_is_closed(servers: list[UpgradeServer]) -> None:
    proxy, _ = await proxied(servers, UpgradeServer(), tunnel_idle=0.3)
    c = await Client.open(proxy.port)
    assert (await upgrade(c)).status == 101
    assert await c.closed(timeout=3)
    await until(lambda: proxy.stats.tunnels == 0)
    assert proxy.stats.timeouts == 1
    await proxy.close()


async def test_drain_closes_the_tunnel_of_a_withdrawn_replica_after_the_limit(
    servers: list[UpgradeServer],
) -> None:
    proxy, backend = await proxied(servers, UpgradeServer(), drain_timeout=0.5)
    c = await Client.open(proxy.port)
    assert (await upgrade(c)).status == 101
    t0 = time.monotonic()
    proxy.drain([backend])
    c.writer.write(b"still")  # within the limit the tunnel still works
    assert await read_exactly(c, 5) == b"still"
    assert await c.closed(timeout=3)
    assert time.monotonic() - t0 >= 0.45
    await until(lambda: proxy.stats.tunnels == 0 and proxy.stats.active == 0)
    await proxy.close()


async def test_close_waits_for_tunnels_up_to_the_drain_time(servers: list[UpgradeServer]) -> None:
    proxy, _ = await proxied(servers, UpgradeServer(), drain_timeout=0.3)
    c = await Client.open(proxy.port)
    assert (await upgrade(c)).status == 101
    await proxy.close()  # the tunnel is not idle: it is aborted after the drain time
    assert await c.closed()
    assert proxy.stats.tunnels == 0
