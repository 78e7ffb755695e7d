"""`node.agent.probes.Prober` against real sockets on 127.0.0.1: one probe, one result,
never an exception, always within the check's timeout."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from node.agent.health import Check
from node.agent.probes import Prober
from node.dev.fakeruntime import FakeRuntime
from node.runtime.base import Container

ANSWERS = {b"/health": b"HTTP/1.1 200 OK", b"/broken": b"HTTP/1.1 500 Internal Server Error"}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, release: asyncio.Event) -> None:
    line = await reader.readline()
    path = line.split()[1] if len(line.split()) > 1 else b""
    while (await reader.readline()).strip():
        pass
    if path == b"/hang":
        await release.wait()
    elif path == b"/garbage":
        writer.write(b"SSH-2.0-OpenSSH\r\n")
    else:
        writer.write(ANSWERS.get(path, b"HTTP/1.1 404 Not Found") + b"\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture
async def server() -> AsyncIterator[int]:
    release = asyncio.Event()
    srv = await asyncio.start_server(lambda r, w: handle(r, w, release), "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    release.set()
    srv.close()
    await srv.wait_closed()


def container(ip: str = "127.0.0.1", host_ports: dict[int, int] | None = None, **labels: str) -> Container:
    return Container("c1", "web.1.t1", dict(labels), "running", host_ports=host_ports or {}, ip=ip)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_http_status_decides(server: int) -> None:
    prober = Prober(FakeRuntime(), "127.0.0.1")
    assert await prober.probe(Check("http", server, "/health"), container()) == (True, "HTTP 200")
    ok, message = await prober.probe(Check("http", server, "/broken"), container())
    assert (ok, message) == (False, "HTTP 500 from GET /broken (expected 2xx or 3xx)")
    assert await prober.probe(Check("http", server, "/missing", 404), container()) == (True, "HTTP 404")


async def test_http_timeout_and_garbage(server: int) -> None:
    prober = Prober(FakeRuntime(), "127.0.0.1")
    started = time.monotonic()
    ok, message = await prober.probe(Check("http", server, "/hang", timeout=0.2), container())
    assert time.monotonic() - started < 1.0
    assert (ok, message) == (False, f"GET :{server}/hang: no answer within 0.2s")
    ok, message = await prober.probe(Check("http", server, "/garbage"), container())
    assert not ok and "not an HTTP answer" in message


async def test_tcp_accepts_or_refuses(server: int) -> None:
    prober = Prober(FakeRuntime(), "127.0.0.1")
    assert await prober.probe(Check("tcp", server), container()) == (True, f"tcp :{server} accepted")
    port = closed_port()
    ok, message = await prober.probe(Check("tcp", port), container())
    assert not ok and message.startswith(f"tcp :{port}: ") and "refused" in message.lower()


async def test_without_a_container_address_the_published_port_is_used(server: int) -> None:
    prober = Prober(FakeRuntime(), "127.0.0.1")
    published = container(ip="", host_ports={8080: server})
    assert (await prober.probe(Check("http", 8080, "/health"), published))[0]
    ok, message = await prober.probe(Check("tcp", 9000), container(ip=""))
    assert not ok and "no address" in message


async def test_a_simulated_replica_passes() -> None:
    prober = Prober(FakeRuntime(), "127.0.0.1")
    simulated = container(ip="", **{"io.shoal.simulated": "true"})
    assert (await prober.probe(Check("tcp", 1), simulated))[0]


async def test_grpc_health_protocol_decides() -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await servicer.set("shop.Cart", health_pb2.HealthCheckResponse.NOT_SERVING)
        prober = Prober(FakeRuntime(), "127.0.0.1")
        assert await prober.probe(Check("grpc", port), container()) == (True, f"grpc health :{port}: SERVING")
        ok, message = await prober.probe(Check("grpc", port, service="shop.Cart"), container())
        assert (ok, message) == (False, f"grpc health :{port} shop.Cart: NOT_SERVING")
        ok, message = await prober.probe(Check("grpc", port, service="shop.Nope"), container())
        assert not ok and message.startswith(f"grpc health :{port} shop.Nope: NOT_FOUND")
    finally:
        await server.stop(0)
    dead = closed_port()
    started = time.monotonic()
    ok, message = await prober.probe(Check("grpc", dead, timeout=2.0), container())
    assert not ok and message.startswith(f"grpc health :{dead}: UNAVAILABLE"), message
    assert time.monotonic() - started < 2.5


async def test_grpc_check_of_a_plain_http_server_fails_clearly(server: int) -> None:
    ok, message = await Prober(FakeRuntime(), "127.0.0.1").probe(
        Check("grpc", server, timeout=1.0), container()
    )
    assert not ok and message.startswith(f"grpc health :{server}: "), message
