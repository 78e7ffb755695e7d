"""Requests held while a service is scaled to zero (node.proxy.coldstart, issue 15 item 2):
which services hold, release when the mesh routes a replica, give up at the timeout."""

from __future__ import annotations

import asyncio
import time

from node.model.domain import ServiceRecord
from node.model.spec import parse_spec
from node.proxy.balancer import Backend, Balancer
from node.proxy.coldstart import ColdStart
from tests.helpers import wait_until
from tests.unit.test_proxy_http import Backends, Client, HttpBackend, Message, answer_name, backends, started
from tests.unit.test_proxy_tcp import started as tcp_started

__all__ = ["backends"]  # the fixture


def _record(name: str, autoscale: str) -> ServiceRecord:
    spec = parse_spec(f"name: {name}\nimage: x\n{autoscale}", f"{name}.yaml")
    return ServiceRecord(name, 1, spec, 0.0, "n1")


def _cold() -> ColdStart:
    cold = ColdStart()
    cold.update(
        [
            _record(
                "zero",
                "autoscale: {min: 0, max: 2, target: {requests_per_replica: 5}, cold_start_timeout: 0.3}\n",
            ),
            _record("one", "autoscale: {min: 1, max: 2, target: {requests_per_replica: 5}}\n"),
            _record("plain", ""),
        ]
    )
    return cold


def test_only_services_with_min_zero_and_no_replica_hold() -> None:
    cold, empty, full = _cold(), Balancer(), Balancer()
    full.set_endpoints([Backend("t1", "127.0.0.1", 8080)])
    assert cold.timeouts == {"zero": 0.3}
    assert cold.hold("zero", empty).now() and not cold.hold("zero", full).now()
    assert not cold.hold("one", empty).now() and not cold.hold("plain", empty).now()


async def test_a_held_request_goes_on_when_a_replica_is_routed_and_wakes_the_reporter() -> None:
    cold, balancer = _cold(), Balancer()
    told: list[str] = []
    cold.on_hold.append(told.append)
    waiter = asyncio.create_task(cold.hold("zero", balancer).wait())
    await asyncio.sleep(0)
    assert told == ["zero"] and cold.held["zero"] == 1
    cold.changed()  # a sync with still no replica: it waits on
    await asyncio.sleep(0)
    assert not waiter.done()
    balancer.set_endpoints([Backend("t1", "127.0.0.1", 8080)])
    cold.changed()
    assert await waiter is True
    assert "zero" not in cold.held


async def test_a_held_request_gives_up_after_the_cold_start_timeout() -> None:
    cold = _cold()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await cold.hold("zero", Balancer()).wait() is False
    assert 0.25 <= loop.time() - start < 2.0 and not cold.held


# -- the engines, on loopback ------------------------------------------------------------------


async def test_http_a_held_request_is_served_by_the_first_replica_even_before_it_listens(
    backends: Backends,
) -> None:
    cold, balancer = _cold(), Balancer()
    proxy = await started(balancer)
    proxy.cold = cold.hold("zero", balancer)
    client = await Client.open(proxy.port)
    try:
        client.send()
        await wait_until(lambda: cold.held["zero"] == 1, 2.0)

        async def not_yet(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
            if (
                b.accepts <= 2
            ):  # accepted, closed without an answer: Docker's port proxy before the app listens
                return False
            return await answer_name(b, req, w, n)

        _, backend = await backends.start("r1", not_yet)
        balancer.set_endpoints([backend])
        cold.changed()
        reply = await client.response(timeout=3.0)
        assert reply.status == 200 and reply.get("x-backend") == ["r1"]
    finally:
        await client.close()
        await proxy.close()


async def test_http_a_held_request_gets_503_after_the_cold_start_timeout() -> None:
    cold, balancer = _cold(), Balancer()
    proxy = await started(balancer)
    proxy.cold = cold.hold("zero", balancer)
    client = await Client.open(proxy.port)
    try:
        start = time.monotonic()
        reply = await client.get()
        assert reply.status == 503 and 0.25 <= time.monotonic() - start < 2.0
    finally:
        await client.close()
        await proxy.close()


async def test_tcp_a_held_connection_goes_to_the_first_replica() -> None:
    cold, balancer = _cold(), Balancer()
    proxy = await tcp_started(balancer)
    proxy.cold = cold.hold("zero", balancer)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"hello\n")
        await wait_until(lambda: cold.held["zero"] == 1, 2.0)
        balancer.set_endpoints([Backend("r1", "127.0.0.1", server.sockets[0].getsockname()[1])])
        cold.changed()
        async with asyncio.timeout(3):
            assert await reader.readline() == b"hello\n"
        writer.close()
    finally:
        server.close()
        await proxy.close()
