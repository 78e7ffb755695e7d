"""Local replicas by container address (node.proxy.direct, issue 17 item 5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.model.domain import EndpointRecord
from node.proxy.direct import OnLink, direct, parse_routes
from tests.factories import make_service, make_task
from tests.helpers import wait_until
from tests.unit.test_proxy_mesh import HOST, KEYS, World, ask, free_port

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
br1\t000012AC\t00000000\t0000\t0\t0\t0\t0000FFFF\t0\t0\t0
via\t000013AC\t010200C0\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0
bad\tzz\t0\t0001
"""


def record(node: str, address: str = "172.17.0.5", ports: dict[str, int] | None = None) -> EndpointRecord:
    return EndpointRecord("t1", "web", node, "10.0.0.1", 32001, 8080, ports or {"8080": 32001}, address)


def test_parse_routes_keeps_on_link_networks_that_are_up() -> None:
    # the default route and one via a gateway are not on-link; a route that is down is not used
    assert [str(n) for n in parse_routes(ROUTES)] == ["172.17.0.0/16", "192.0.2.0/24"]


def test_only_this_nodes_replicas_with_a_reachable_address_go_direct() -> None:
    def on_docker0(a: str) -> bool:
        return a.startswith("172.17.")

    mine, theirs = record("n1"), record("n2")
    unreachable, old = record("n1", "10.9.9.9"), record("n1", "")
    got = direct([mine, theirs, unreachable, old], "n1", on_docker0)
    assert (got[0].address, got[0].host_port(8080)) == ("172.17.0.5", 8080)
    assert got[1:] == [theirs, unreachable, old]  # published port, as before


def test_every_published_container_port_goes_direct() -> None:
    got = direct([record("n1", ports={"8080": 32001, "9090": 32002})], "n1", lambda a: True)[0]
    assert (got.host_port(8080), got.host_port(9090), got.host_port(7070)) == (8080, 9090, 0)


def test_on_link_reads_the_route_table_and_refreshes_it(tmp_path: Path) -> None:
    path, now = tmp_path / "route", [0.0]
    path.write_text(ROUTES)
    onlink = OnLink(path, clock=lambda: now[0])
    assert onlink("172.17.0.9") and not onlink("172.19.0.9") and not onlink("not an ip")
    path.write_text(ROUTES.splitlines()[0] + "\n")  # docker0 went away
    assert onlink("172.17.0.9")  # the table read less than REFRESH ago is kept
    now[0] = 60.0
    assert not onlink("172.17.0.9")
    path.unlink()
    now[0] = 120.0
    assert not onlink("172.17.0.9")  # unreadable: nothing is direct, published ports it is


def test_old_and_new_readers_of_the_endpoint_record() -> None:
    new = record("n1")
    old_json = {k: v for k, v in json.loads(new.to_json()).items() if k != "container_address"}
    assert EndpointRecord.from_json(json.dumps(old_json)).container_address == ""
    assert EndpointRecord.from_json(new.to_json()) == new


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    w.mesh.onlink = lambda address: address == HOST  # type: ignore[assignment]
    runner = asyncio.create_task(w.mesh.run())
    yield w
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await w.close()


async def say(world: World, text: str) -> int:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text.encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    world.servers.append(server)
    return int(server.sockets[0].getsockname()[1])


async def test_the_mesh_reaches_its_own_replica_by_container_address(world: World) -> None:
    """One replica on this node (n1), one on n2: the first is reached at its container
    port on its container address, the other at its published port."""
    port, container = free_port(), await say(world, "container")
    web = make_service(
        "web", replicas=2, ports=[{"container": container, "published": port, "protocol": "tcp"}]
    )
    await world.store.put(KEYS.service("web"), web.to_json())
    for slot, node in ((1, "n1"), (2, "n2")):
        task = make_task(web, slot, node)
        published = await say(world, f"published@{node}")
        rec = EndpointRecord(
            task.task_id, "web", node, HOST, published, container, {str(container): published}, HOST
        )
        await world.store.put(KEYS.task("web", slot), task.to_json())
        await world.store.put(KEYS.endpoint("web", task.task_id), rec.to_json())
    await wait_until(
        lambda: len(world.mesh.listeners.get(port, ()) and world.mesh.listeners[port].balancer) == 2, 3.0
    )
    assert sorted([await ask(port) for _ in range(4)]) == ["container"] * 2 + ["published@n2"] * 2
    world.mesh.settings = type(world.mesh.settings)(direct=False)  # proxy_direct = false
    await world.mesh.sync()
    assert sorted([await ask(port) for _ in range(4)]) == ["published@n1"] * 2 + ["published@n2"] * 2
