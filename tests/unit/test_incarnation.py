"""A service removed and applied again is another service (issue 11, item 1).

The API, the leader and an agent, wired on a MemoryStore and a FakeRuntime: `rm web`
then `apply` of a new `web` (another image and env; it restarts at version 1) must
never run the removed spec, whether the leader saw the removal before the new apply
or not. Also: the uid of records written before uids, and the agent's bounded cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from leader.incarnation import stale_incarnation
from leader.loop import LeaderLoop
from leader.scheduler import Plan
from node.agent.agent import Agent
from node.agent.containers import SpecNotFound, SpecSource
from node.api.services import ServiceWriter
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import Assignment, EndpointRecord, ServiceRecord
from node.model.keys import Keys
from node.proxy.mesh import Mesh
from node.proxy.routes import Route
from node.proxy.stats import ProxyStats
from node.runtime.base import LABELS
from node.store.memory import MemoryStore
from node.store.session import Session
from node.telemetry.events import EventLog
from tests.factories import CLUSTER, make_node, make_service, make_task
from tests.helpers import mirrors_caught_up

KEYS = Keys()
NODE = "n1"

OLD = "name: web\nimage: shoal-demo/web:1\nreplicas: 2\nenv: {GREETING: alpha, ONLY_OLD: 'yes'}\n"
NEW = "name: web\nimage: shoal-demo/web:2\nreplicas: 2\nenv: {GREETING: beta}\n"


@dataclass
class World:
    store: MemoryStore
    api: ServiceWriter
    leader: LeaderLoop
    agent: Agent
    runtime: FakeRuntime

    async def leader_pass(self) -> None:
        caches = (self.leader.services, self.leader.nodes, self.leader.tasks, self.leader.rollouts)

        await mirrors_caught_up(self.store, caches)
        await self.leader.reconcile()

    async def agent_pass(self) -> None:
        await self.agent.tasks.relist()
        await self.agent.reconcile()
        await self.agent.stopped()

    def running(self) -> list[tuple[str, dict[str, str]]]:
        """(image, env) of every running container."""
        out = []
        for c in self.runtime.running():
            spec = self.runtime.specs[c.id]
            out.append((spec.image, dict(spec.env)))
        return sorted(out, key=str)

    async def tasks(self) -> list[Assignment]:
        kvs, _ = await self.store.range(KEYS.tasks)
        return [Assignment.from_json(kv.value) for kv in kvs]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    await store.put(KEYS.node(NODE), make_node(NODE).to_json())
    events = EventLog(store, KEYS, NODE)
    leader = LeaderLoop(store, KEYS, epoch, events)
    mirrors = (leader.services, leader.nodes, leader.tasks, leader.rollouts, leader.statuses)
    caches = [asyncio.create_task(c.run()) for c in mirrors]
    session = Session(store, ttl=10)
    await session.start()
    runtime = FakeRuntime()
    agent = Agent(store, KEYS, NODE, CLUSTER, runtime, session, events, "127.0.0.1", drain=0)
    try:
        yield World(store, ServiceWriter(store, KEYS, NODE), leader, agent, runtime)
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


NEW_RUNNING = [("shoal-demo/web:2", {"GREETING": "beta"})] * 2


async def start_old(world: World) -> None:
    await world.api.apply(OLD, "web.yaml")
    await world.leader_pass()
    await world.agent_pass()
    assert world.running() == [("shoal-demo/web:1", {"GREETING": "alpha", "ONLY_OLD": "yes"})] * 2


async def test_recreated_after_the_old_tasks_are_gone_runs_only_the_new_spec(world: World) -> None:
    """The agent had cached (web, version 1) of the removed service."""
    await start_old(world)
    await world.api.remove("web")
    await world.leader_pass()
    await world.agent_pass()
    assert world.runtime.running() == []

    new, _ = await world.api.apply(NEW, "web.yaml")
    assert new.version == 1  # a new service starts at version 1 again: the name and version collide
    await world.leader_pass()
    await world.agent_pass()
    assert world.running() == NEW_RUNNING
    assert {c.labels[LABELS.UID] for c in world.runtime.running()} == {new.uid}


async def test_recreated_before_the_leader_saw_the_removal_replaces_the_old_tasks(world: World) -> None:
    """rm and apply between two leader passes: the old tasks are still assigned when the
    new service appears; they are replaced, never kept, updated or handed off from."""
    await start_old(world)
    old_tasks = {t.task_id for t in await world.tasks()}
    await world.api.remove("web")
    new, _ = await world.api.apply(NEW, "web.yaml")
    await world.leader_pass()
    tasks = await world.tasks()
    assert {t.uid for t in tasks} == {new.uid} and len(tasks) == 2
    assert not {t.task_id for t in tasks} & old_tasks
    assert all(not t.handoff for t in tasks), "no handoff from a task of the removed service"
    await world.agent_pass()
    await world.agent_pass()
    assert world.running() == NEW_RUNNING


async def test_a_task_of_the_removed_service_never_gets_the_new_spec(world: World) -> None:
    """The agent sees an old task (its uid) while history holds the new service's version 1:
    it does not start it from the new spec either; it waits for the leader to replace it."""
    await world.api.apply(NEW, "web.yaml")
    kv = await world.store.get(KEYS.service("web"))
    assert kv is not None
    current = ServiceRecord.from_json(kv.value)
    stale = replace(make_task(current, 1, NODE), uid="0123456789abcdef")
    await world.store.put(KEYS.task("web", 1), stale.to_json())
    await world.agent_pass()
    assert world.runtime.running() == []
    with pytest.raises(SpecNotFound, match="removed and created again"):
        await world.agent.specs.spec("web", 1, stale.uid)


def test_records_without_a_uid_are_one_legacy_incarnation() -> None:
    """Records written before uids read as uid "": such a service and its tasks still match."""
    record = make_service("web")
    stored = b'{"name": "web", "version": 3, "spec": {"name": "web", "image": "i", "replicas": 1}}'
    legacy_service = ServiceRecord.from_json(stored)
    assert legacy_service.uid == ""
    legacy_task = Assignment.from_json(make_task(record, 1, NODE).to_json().replace(b'"uid":"",', b""))
    assert legacy_task.uid == ""
    tasks = {("web", 1): legacy_task}
    assert stale_incarnation({"web": legacy_service}, tasks) == {}
    assert stale_incarnation({"web": replace(legacy_service, uid="abc")}, tasks) == tasks


async def test_the_spec_cache_is_bounded_and_forgets_unassigned_services() -> None:
    store = MemoryStore()
    source = SpecSource(store, KEYS, size=3)
    for i in range(5):
        record = replace(make_service(f"s{i}"), uid=f"u{i}")
        await store.put(KEYS.service(record.name), record.to_json())
        assert (await source.spec(record.name, 1, record.uid)).name == f"s{i}"
    assert len(source) == 3
    source.retain({("s4", "u4")})
    assert len(source) == 1
    with pytest.raises(SpecNotFound):
        await source.spec("s4", 1, "another")


async def test_the_mesh_routes_no_task_of_a_removed_namesake() -> None:
    """Until the leader replaces them, the old web's tasks (and endpoints) are still in etcd:
    the new web's listener never sends traffic to them."""
    store = MemoryStore()
    new = replace(make_service("web"), uid="new")
    old_task = replace(make_task(new, 1, NODE, task_id="old"), uid="old")
    new_task = replace(make_task(new, 2, NODE, task_id="fresh"), uid="new")
    await store.put(KEYS.service("web"), new.to_json())
    for t in (old_task, new_task):
        await store.put(KEYS.task("web", t.slot), t.to_json())
        endpoint = EndpointRecord(t.task_id, "web", NODE, "127.0.0.1", 30000 + t.slot, 8080)
        await store.put(KEYS.endpoint("web", t.task_id), endpoint.to_json())
    mesh = Mesh(store, KEYS, NODE, "127.0.0.1")
    for cache in (mesh.services, mesh.tasks, mesh.endpoints, mesh.down):
        await cache.relist()
    assert [e.task_id for e in mesh.routable()] == ["fresh"]


async def test_the_mesh_forgets_the_counters_of_a_removed_route() -> None:
    store = MemoryStore()
    mesh = Mesh(store, KEYS, NODE, "127.0.0.1")
    route = Route("web", 18433, 8080, "tcp")
    mesh.stats[route] = ProxyStats()
    for cache in (mesh.services, mesh.tasks, mesh.endpoints, mesh.down):
        await cache.relist()
    await mesh.sync()
    assert mesh.stats == {}


def test_the_leader_forgets_the_pending_reason_of_a_removed_service() -> None:
    store = MemoryStore()
    leader = LeaderLoop(store, KEYS, 1, EventLog(store, KEYS, NODE))
    leader._pending_events([Plan("web", unplaced=[1], reason="0/1 nodes available")])
    assert set(leader._pending) == {"web"}
    leader._pending_events([Plan("api")])  # web is gone: it has no plan any more
    assert leader._pending == {}


async def test_a_task_without_uid_from_a_leader_older_than_uids_still_starts(world: World) -> None:
    """During an upgrade an old leader assigns tasks without uid for a service with one:
    the agent runs them from the spec etcd holds, as before, without caching that spec."""
    record, _ = await world.api.apply(NEW, "web.yaml")
    assert record.uid
    await world.store.put(KEYS.task("web", 1), make_task(record, 1, NODE).to_json())
    await world.agent_pass()
    assert world.running() == [("shoal-demo/web:2", {"GREETING": "beta"})]
    assert len(world.agent.specs) == 0
