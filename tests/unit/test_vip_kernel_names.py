"""The names component with the kernel path (node.proxy.vips + vipkernel, decision 74)
over a MemoryStore, a fake engine list and a fake `nft`: the rule follows the replicas
and the host's containers, keeps to the service's networks, survives the engine not
answering and etcd going away (the last known rules stay, as the listeners keep the last
known replicas), and the table is deleted when the component stops."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from node.model.domain import EndpointRecord, ServiceRecord, new_service_uid
from node.proxy.mesh import Mesh, MeshSettings
from node.proxy.sources import SourceMap
from node.proxy.vipkernel import VipKernel
from node.proxy.vipnat import removal
from node.proxy.vips import Names
from node.runtime.base import LABELS, Container
from node.store.memory import MemoryStore
from tests.factories import make_service, make_task
from tests.helpers import wait_until
from tests.unit.test_names_server import HOST, KEYS, free_udp_port
from tests.unit.test_vipkernel import FakeNft


@dataclass
class Engine:
    containers: list[Container] = field(default_factory=list)
    answering: bool = True

    async def list(self) -> list[Container]:
        if not self.answering:
            raise ConnectionError("the engine does not answer")
        return list(self.containers)

    def run(self, service: str, ip: str, task: str = "") -> None:
        labels = {LABELS.SERVICE: service, **({LABELS.TASK: task} if task else {})}
        self.containers.append(Container(f"c-{ip}", f"c-{ip}", labels, "running", ip=ip))


@dataclass
class Kernel:
    store: MemoryStore
    engine: Engine
    nft: FakeNft
    kernel: VipKernel
    names: Names
    runs: list[asyncio.Task[None]]

    async def service(
        self, name: str, ports: tuple[int, ...] = (), networks: list[str] | None = None
    ) -> ServiceRecord:
        extra: dict[str, object] = {"ports": [{"container": p} for p in ports]}
        if networks:
            extra["networks"] = networks
        record = replace(make_service(name, replicas=3, **extra), uid=new_service_uid())
        await self.store.put(KEYS.service(name), record.to_json())
        return record

    async def replica(self, record: ServiceRecord, slot: int, ip: str, node: str = "n1") -> str:
        task = replace(make_task(record, slot, node), uid=record.uid)
        await self.store.put(KEYS.task(record.name, slot), task.to_json())
        port = record.spec.ports[0].container
        endpoint = EndpointRecord(
            task.task_id, record.name, node, HOST, 30000 + slot, port, {str(port): 30000 + slot}, ip
        )
        await self.store.put(KEYS.endpoint(record.name, task.task_id), endpoint.to_json())
        if node == "n1":
            self.engine.run(record.name, ip, task.task_id)
        return task.task_id

    def rule(self) -> tuple[tuple[str, ...], frozenset[str]] | None:
        rules = self.kernel.rules
        return (rules[0].targets, rules[0].sources) if len(rules) == 1 else None


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Kernel]:
    store, engine, nft = MemoryStore(), Engine(), FakeNft()
    bridge = tmp_path / "bridge"
    bridge.write_text("1")
    mesh = Mesh(store, KEYS, "n1", HOST, settings=MeshSettings(connect_timeout=0.5, rebind_interval=0.2))
    mesh.onlink = lambda address: address.startswith("172.17.")  # type: ignore[assignment]
    sources = SourceMap(engine.list, (ipaddress.IPv4Network("127.0.0.0/8"),))
    kernel = VipKernel("shoal_vip_t_n1", nft="sh", bridge_nf=bridge, runner=nft)
    names = Names(
        mesh,
        ipaddress.IPv4Network("127.79.0.0/24"),
        [],
        dns_port=free_udp_port(HOST),
        sources=sources,
        kernel=kernel,
    )
    runs = [asyncio.create_task(mesh.run()), asyncio.create_task(names.run())]
    w = Kernel(store, engine, nft, kernel, names, runs)
    yield w
    for t in w.runs:
        t.cancel()
    await asyncio.gather(*w.runs, return_exceptions=True)


async def test_the_rule_follows_replicas_and_clients_and_keeps_to_networks(world: Kernel) -> None:
    web = await world.service("web", ports=(80,), networks=["backnet"])
    await world.service("client", networks=["backnet"])
    await world.service("outsider", networks=["frontnet"])
    world.engine.run("client", "172.17.0.20")
    world.engine.run("outsider", "172.17.0.30")
    t1 = await world.replica(web, 1, "172.17.0.5")
    await world.replica(web, 2, "172.17.0.6")
    # never the outsider (it shares no network with web), nor web's own replicas (no hairpin)
    clients = frozenset({"172.17.0.20"})
    await wait_until(lambda: world.rule() == (("172.17.0.5", "172.17.0.6"), clients), 5.0, message="the rule")

    # a replica leaves the rotation: the rule loses it, and its container (still running,
    # draining) may now call web like any other container on backnet
    await world.store.delete(KEYS.endpoint("web", t1))
    clients |= {"172.17.0.5"}
    await wait_until(lambda: world.rule() == (("172.17.0.6",), clients), 5.0, message="one replica left")

    # a client container starts: the next list of the engine adds it, with no other change,
    # even when asked within MIN_REFRESH of the last list
    world.engine.run("client", "172.17.0.21")
    world.names._refresh_sources()  # as a sync or a VIP listener's gate on an unknown source does
    await wait_until(
        lambda: world.rule() == (("172.17.0.6",), clients | {"172.17.0.21"}), 5.0, message="the new client"
    )


async def test_a_replica_on_another_host_keeps_the_whole_vip_on_the_listener(world: Kernel) -> None:
    web = await world.service("web", ports=(80,))
    await world.service("client")
    world.engine.run("client", "172.17.0.20")
    await world.replica(web, 1, "172.17.0.5")
    await wait_until(lambda: world.rule() is not None, 5.0, message="the rule")
    await world.replica(web, 2, "172.17.0.5", node="n2")  # same address, another host's engine
    await wait_until(lambda: world.kernel.rules == () and world.kernel.up, 5.0, message="no rule")
    assert any("not reachable here" in why for why in world.names.kernel_skipped.values())


async def test_the_engine_away_keeps_what_it_knew_and_a_stop_deletes_the_table(world: Kernel) -> None:
    web = await world.service("web", ports=(80,))
    await world.service("client")
    world.engine.run("client", "172.17.0.20")
    t1 = await world.replica(web, 1, "172.17.0.5")
    await world.replica(web, 2, "172.17.0.6")
    clients = frozenset({"172.17.0.20"})
    await wait_until(lambda: world.rule() == (("172.17.0.5", "172.17.0.6"), clients), 5.0, message="the rule")
    world.engine.answering = False  # every list fails from now on
    world.engine.containers = []
    await world.store.delete(KEYS.endpoint("web", t1))  # a change: the loop syncs, the list fails
    # the map kept the client and the replicas: the rule follows the endpoints still
    await wait_until(
        lambda: world.rule() == (("172.17.0.6",), clients | {"172.17.0.5"}),
        5.0,
        message="the rule, engine away",
    )
    for t in world.runs:
        t.cancel()
    await asyncio.gather(*world.runs, return_exceptions=True)
    assert world.nft.texts[-1] == "table ip shoal_vip_t_n1 {}\ndelete table ip shoal_vip_t_n1\n"


async def test_names_with_the_path_off_for_good_remove_a_left_table_at_start(tmp_path: Path) -> None:
    """Before, with `vip_kernel = false` nothing ran nft: a table a kill -9 left stayed."""
    nft = FakeNft()
    kernel = VipKernel("shoal_vip_t_n1", nft="sh", enabled=False, bridge_nf=tmp_path / "none", runner=nft)
    names = Names(
        Mesh(MemoryStore(), KEYS, "n1", HOST), ipaddress.IPv4Network("127.79.0.0/24"), [], kernel=kernel
    )
    run = asyncio.create_task(names.run())
    try:
        await wait_until(lambda: nft.texts == [removal("shoal_vip_t_n1")], 2.0, message="the table removed")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
