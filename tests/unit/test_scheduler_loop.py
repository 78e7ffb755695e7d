"""The leader loop with the placement scheduler: drain and labels from `nodespec/`, pending
reasons as events, on a MemoryStore."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from leader.loop import LeaderLoop
from node.model.domain import Assignment, NodeInfo, NodeSpec, ServiceRecord
from node.model.keys import Keys
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_service
from tests.helpers import mirrors_caught_up

KEYS = Keys()
GIB = 2**30


class Recorded(EventLog):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, KEYS, "n1")
        self.seen: list[tuple[str, str]] = []

    def emit(self, kind: str, message: str, service: str = "", task: str = "", cause: str = "") -> None:
        self.seen.append((kind, message))


class Leader:
    def __init__(self, store: MemoryStore, loop: LeaderLoop, events: Recorded) -> None:
        self.store, self.loop, self.events = store, loop, events

    async def put(self, key: str, record: NodeInfo | NodeSpec | ServiceRecord) -> None:
        await self.store.put(key, record.to_json())

    async def reconcile(self) -> None:
        caches = (self.loop.services, self.loop.nodes, self.loop.tasks, self.loop.nodespecs)

        await mirrors_caught_up(self.store, caches)
        await self.loop.reconcile()

    async def nodes_of(self, service: str) -> list[str]:
        kvs, _ = await self.store.range(KEYS.service_tasks(service))
        return sorted(Assignment.from_json(kv.value).node for kv in kvs)


@pytest.fixture
async def leader() -> AsyncIterator[Leader]:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    events = Recorded(store)
    loop = LeaderLoop(store, KEYS, epoch, events)
    caches = [asyncio.create_task(c.run()) for c in (loop.services, loop.nodes, loop.tasks, loop.nodespecs)]
    try:
        yield Leader(store, loop, events)
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


def node(name: str, memory: int = 4 * GIB, **labels: str) -> NodeInfo:
    return NodeInfo(name, "127.0.0.1", 7070, dict(labels), 2.0, memory)


async def test_drain_moves_tasks_and_activate_takes_new_ones_again(leader: Leader) -> None:
    for n in ("n1", "n2"):
        await leader.put(KEYS.node(n), node(n))
    await leader.put(KEYS.service("web"), make_service("web", replicas=4))
    await leader.reconcile()
    assert await leader.nodes_of("web") == ["n1", "n1", "n2", "n2"]
    await leader.put(KEYS.nodespec("n2"), NodeSpec(availability="drain"))
    await leader.reconcile()
    assert await leader.nodes_of("web") == ["n1"] * 4
    assert any("replacing" in m and "(drain)" in m for k, m in leader.events.seen if k == "task.placed")
    await leader.put(KEYS.nodespec("n2"), NodeSpec(availability="active"))
    await leader.put(KEYS.service("web"), make_service("web", replicas=6, version=2))
    await leader.reconcile()
    assert await leader.nodes_of("web") == ["n1"] * 4 + ["n2"] * 2


async def test_operator_labels_feed_constraints(leader: Leader) -> None:
    await leader.put(KEYS.node("n1"), node("n1", zone="a"))
    await leader.put(KEYS.node("n2"), node("n2", zone="b"))
    web = make_service("web", replicas=2, placement={"constraints": ["node.labels.zone == a"]})
    await leader.put(KEYS.service("web"), web)
    await leader.reconcile()
    assert await leader.nodes_of("web") == ["n1", "n1"]
    await leader.put(KEYS.nodespec("n1"), NodeSpec(labels={"zone": "b"}))
    await leader.put(KEYS.nodespec("n2"), NodeSpec(labels={"zone": "a"}))
    await leader.reconcile()
    assert await leader.nodes_of("web") == ["n2", "n2"]


async def test_a_pending_service_says_why_once_and_when_it_is_placed(leader: Leader) -> None:
    await leader.put(KEYS.node("n1"), node("n1", memory=1 * GIB))
    await leader.put(KEYS.service("big"), make_service("big", replicas=1, resources={"memory": 2 * GIB}))
    await leader.reconcile()
    await leader.reconcile()
    pending = [m for k, m in leader.events.seen if k == "service.pending"]
    assert pending == [
        "1 replica(s) pending: 0/1 nodes available: 1 lack memory (need 2.0 GiB, most free 1.0 GiB)"
    ]
    await leader.put(KEYS.node("n2"), node("n2", memory=4 * GIB))
    await leader.reconcile()
    assert await leader.nodes_of("big") == ["n2"]
    assert ("service.placed", "every replica has a node") in leader.events.seen
