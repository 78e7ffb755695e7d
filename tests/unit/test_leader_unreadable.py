"""Task, node and node-settings records with fields of the wrong type (`node.model.readable`),
written around the API: every leader pass failed on them (a slot "2" sorted with ints, a
node's cpu [1] compared with 0), so nothing at all was reconciled. Now the pass goes on,
and what it does about them is safe: a service with an unreadable slot is left alone (the
slot must not look empty: a duplicate replica), a node whose record or settings cannot be
read keeps its tasks and takes no new ones, and is not lost (decision 85)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from leader.loop import LeaderLoop
from node.model.domain import Assignment
from node.model.keys import Keys
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_node, make_service
from tests.helpers import mirrors_caught_up

KEYS = Keys()


@dataclass
class Leader:
    store: MemoryStore
    loop: LeaderLoop

    async def reconcile(self) -> None:
        caches = (self.loop.services, self.loop.nodes, self.loop.tasks, self.loop.nodespecs)
        await mirrors_caught_up(self.store, caches)
        await self.loop.reconcile()

    async def raw_tasks(self) -> dict[str, dict[str, Any]]:
        kvs, _ = await self.store.range(KEYS.tasks)
        return {kv.key: json.loads(kv.value) for kv in kvs}

    async def tasks(self) -> dict[tuple[str, int], Assignment]:
        kvs, _ = await self.store.range(KEYS.tasks)
        out = {}
        for kv in kvs:
            service, slot = KEYS.parse_task(kv.key)
            out[(service, slot)] = Assignment.from_json(kv.value)
        return out


@pytest.fixture
async def leader() -> AsyncIterator[Leader]:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
    caches = [asyncio.create_task(c.run()) for c in (loop.services, loop.nodes, loop.tasks, loop.nodespecs)]
    try:
        yield Leader(store, loop)
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


async def started(leader: Leader) -> None:
    """web (2 replicas) and api (1) placed on n1 and n2."""
    await leader.store.put(KEYS.node("n1"), make_node("n1").to_json())
    await leader.store.put(KEYS.node("n2"), make_node("n2").to_json())
    await leader.store.put(KEYS.service("web"), make_service("web", replicas=2).to_json())
    await leader.store.put(KEYS.service("api"), make_service("api", replicas=1).to_json())
    await leader.reconcile()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("slot", "2"),  # sorted with the other slots: TypeError in every pass
        ("slot", 1),  # another slot's: its own looked empty and got a second replica
        ("cpu", [1]),  # added to the node's load
        ("node", ["n1"]),  # a set of nodes made of it: unhashable
        ("handoff", {"task_id": "old", "cpu": "lots"}),  # the old task a handoff holds: its load
    ],
)
async def test_a_task_record_of_the_wrong_type_leaves_its_service_alone(
    leader: Leader, field: str, value: object
) -> None:
    await started(leader)
    before = await leader.raw_tasks()
    key = KEYS.task("web", 2)
    bad = {**before[key], field: value}
    if field == "handoff":
        bad["handoff"] = {**before[key], **value}  # type: ignore[dict-item]
    await leader.store.put(key, json.dumps(bad).encode())
    await leader.store.put(KEYS.service("web"), make_service("web", replicas=3, version=2).to_json())
    await leader.store.put(KEYS.service("api"), make_service("api", replicas=2, version=2).to_json())
    await leader.reconcile()
    after = await leader.raw_tasks()
    web = {k: v for k, v in after.items() if k.startswith(KEYS.service_tasks("web"))}
    assert web == {KEYS.task("web", 1): before[KEYS.task("web", 1)], key: bad}, "web is left alone"
    assert sorted(k for k in after if k.startswith(KEYS.service_tasks("api"))) == [
        KEYS.task("api", 1),
        KEYS.task("api", 2),
    ], "the other services go on"
    assert leader.loop.unreadable == {"web"}


async def test_the_unreadable_task_of_a_removed_service_goes_with_its_other_tasks(leader: Leader) -> None:
    await started(leader)
    key = KEYS.task("web", 2)
    bad = {**(await leader.raw_tasks())[key], "slot": "2"}
    await leader.store.put(key, json.dumps(bad).encode())
    await leader.store.delete(KEYS.service("web"))
    await leader.reconcile()
    assert sorted(await leader.tasks()) == [("api", 1)]


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        ("node", "cpu", [1]),  # compared with 0 for its capacity: TypeError in every pass
        ("node", "labels", {"zone": 5}),  # compared with constraints
        ("node", "id", "n9"),  # another node's record under n2's key
        ("nodespec", "availability", 5),
        ("nodespec", "labels", "zone=a"),  # merged into the node's labels
    ],
)
async def test_a_node_whose_record_cannot_be_read_keeps_its_tasks_and_takes_no_new_ones(
    leader: Leader, where: str, field: str, value: object
) -> None:
    await started(leader)
    before = await leader.tasks()
    on_n2 = {k: t for k, t in before.items() if t.node == "n2"}
    assert on_n2, "the spread put some task on n2"
    if where == "node":
        bad = {**json.loads(make_node("n2").to_json()), field: value}
        await leader.store.put(KEYS.node("n2"), json.dumps(bad).encode())
    else:
        await leader.store.put(KEYS.nodespec("n2"), json.dumps({field: value}).encode())
    await leader.store.put(KEYS.service("web"), make_service("web", replicas=4, version=2).to_json())
    await leader.reconcile()
    after = await leader.tasks()
    assert {k: t for k, t in after.items() if t.node == "n2"} == on_n2, "n2's tasks stay as they are"
    assert sorted(after) == [("api", 1), ("web", 1), ("web", 2), ("web", 3), ("web", 4)]
    assert {after[("web", 3)].node, after[("web", 4)].node} == {"n1"}, "nothing new on n2"
    assert leader.loop.held == {"n2"}
    assert "n2" in leader.loop._gossiping_nodes(), "still registered: not lost"


async def test_unreadable_records_are_said_once_per_revision_and_forgotten_when_removed(
    leader: Leader, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable service was logged on every pass (every event, every resync); and the
    map that says each unreadable key once was never pruned: it grew with every bad key
    ever seen. Now each is said once per revision, and forgotten once its key is gone."""
    await started(leader)
    bad = {
        KEYS.service("odd"): b"not json",
        KEYS.task("web", 9): b"not json",
        KEYS.node("n3"): b"not json",
        KEYS.nodespec("n4"): b"not json",
    }
    for key, value in bad.items():
        await leader.store.put(key, value)
    caplog.clear()
    for _ in range(3):
        await leader.reconcile()
    said = [m for m in (r.getMessage() for r in caplog.records) if "cannot be read" in m or "not JSON" in m]
    assert len(said) == len(bad), said
    assert set(leader.loop._said) == set(bad)
    for key in bad:
        await leader.store.delete(key)
    leader.loop._refused["odd"] = "odd: cannot roll back: port 80 is taken"  # said once, then removed
    await leader.reconcile()
    assert leader.loop._said == {} and leader.loop._refused == {}
