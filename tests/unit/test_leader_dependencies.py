"""The depends_on gate inside the leader's pass (`LeaderLoop.reconcile`), on a MemoryStore:
a service waits for its dependency's condition with the reason published in `pending/`,
starts once it holds, and is not touched when the dependency turns unhealthy later."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from leader.loop import LeaderLoop
from node.model.domain import Assignment, PendingRecord, TaskStatus
from node.model.keys import Keys
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_node, make_service
from tests.helpers import mirrors_caught_up

KEYS = Keys()


@pytest.fixture
async def loop() -> AsyncIterator[tuple[MemoryStore, LeaderLoop]]:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    leader = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
    caches = [
        asyncio.create_task(c.run()) for c in (leader.services, leader.nodes, leader.tasks, leader.statuses)
    ]
    try:
        yield store, leader
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


async def _pass(store: MemoryStore, leader: LeaderLoop) -> dict[str, list[Assignment]]:
    await mirrors_caught_up(store, (leader.services, leader.nodes, leader.tasks, leader.statuses))
    await leader.reconcile()
    kvs, _ = await store.range(KEYS.tasks)
    out: dict[str, list[Assignment]] = {}
    for task in (Assignment.from_json(kv.value) for kv in kvs):
        out.setdefault(task.service, []).append(task)
    return out


async def _status(store: MemoryStore, task: Assignment, health: str) -> None:
    status = TaskStatus(task.task_id, task.service, task.slot, task.node, "running", health=health)
    await store.put(KEYS.status(task.task_id), status.to_json())


async def test_web_waits_for_db_healthy_then_starts_and_is_not_cascaded(
    loop: tuple[MemoryStore, LeaderLoop],
) -> None:
    store, leader = loop
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    db = make_service("shop_db", stack="shop")
    web = make_service("shop_web", replicas=2, stack="shop", depends_on={"shop_db": "healthy"})
    for record in (db, web):
        await store.put(KEYS.service(record.name), record.to_json())

    tasks = await _pass(store, leader)
    assert list(tasks) == ["shop_db"]
    kv = await store.get(KEYS.pending("shop_web"))
    assert kv is not None
    pending = PendingRecord.from_json(kv.value)
    assert pending.reason == "waiting for db (healthy)" and pending.slots == [1, 2]

    (db_task,) = tasks["shop_db"]
    await _status(store, db_task, "starting")  # running, not yet routable: still waiting
    assert "shop_web" not in await _pass(store, leader)

    await _status(store, db_task, "healthy")
    tasks = await _pass(store, leader)
    assert len(tasks["shop_web"]) == 2
    assert await store.get(KEYS.pending("shop_web")) is None

    await _status(store, db_task, "unhealthy")  # shown by `stack ps`, never cascaded
    after = await _pass(store, leader)
    assert [t.task_id for t in after["shop_web"]] == [t.task_id for t in tasks["shop_web"]]
