"""Rolling updates through the leader's reconcile pass, on a MemoryStore.

The test plays the agents: it writes `status/` records (running, or failed) for the
tasks the leader assigns, and checks what the leader writes back: a window of
`parallelism` slots, handoffs (the old task kept until the new one is ready), the
rollout record, and a rollback to the previous version when new replicas fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace

import pytest

from leader import updates
from leader.loop import LeaderLoop
from leader.rollout import RolloutState, update_policy
from leader.scheduler import Snapshot, schedule
from node.model.domain import (
    Assignment,
    NodeSpec,
    RolloutRecord,
    ServiceRecord,
    TaskStatus,
    template_hash,
)
from node.model.keys import Keys
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_node, make_service, make_task
from tests.helpers import mirrors_caught_up

KEYS = Keys()


@dataclass
class World:
    store: MemoryStore
    loop: LeaderLoop

    async def put_service(self, service: ServiceRecord) -> None:
        await self.store.put(KEYS.service(service.name), service.to_json())
        await self.store.put(KEYS.history_version(service.name, service.version), service.to_json())

    async def reconcile(self) -> None:
        caches = (
            self.loop.services,
            self.loop.nodes,
            self.loop.tasks,
            self.loop.rollouts,
            self.loop.statuses,
            self.loop.nodespecs,
        )

        await mirrors_caught_up(self.store, caches)
        await self.loop.reconcile()

    async def tasks(self) -> dict[int, Assignment]:
        kvs, _ = await self.store.range(KEYS.service_tasks("web"))
        return {a.slot: a for a in (Assignment.from_json(kv.value) for kv in kvs)}

    async def report(self, task: Assignment, state: str = "running", restarts: int = 0) -> None:
        status = TaskStatus(task.task_id, task.service, task.slot, task.node, state, restarts=restarts)
        await self.store.put(KEYS.status(task.task_id), status.to_json())

    async def report_all(self, state: str = "running") -> None:
        for task in (await self.tasks()).values():
            await self.report(task, state)

    async def rollout(self) -> RolloutRecord:
        kv = await self.store.get(KEYS.rollout("web"))
        assert kv is not None
        return RolloutRecord.from_json(kv.value)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
    caches = [
        asyncio.create_task(c.run())
        for c in (loop.services, loop.nodes, loop.tasks, loop.rollouts, loop.statuses, loop.nodespecs)
    ]
    try:
        for n in ("n1", "n2", "n3"):
            await store.put(KEYS.node(n), make_node(n).to_json())
        yield World(store, loop)
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


def web(version: int, image: str, **update: object) -> ServiceRecord:
    return make_service("web", replicas=4, version=version, image=image, update={"monitor": 0.0, **update})


async def test_start_first_updates_a_window_of_slots_with_handoffs(world: World) -> None:
    await world.put_service(web(1, "img:1", parallelism=2))
    await world.reconcile()
    await world.report_all()
    await world.reconcile()
    v1 = await world.tasks()

    await world.put_service(web(2, "img:2", parallelism=2))
    await world.reconcile()
    tasks = await world.tasks()
    updated = sorted(s for s, t in tasks.items() if t.version == 2)
    assert updated == [1, 2], "a window of 2 slots"
    for s in updated:
        assert tasks[s].handed_off() == v1[s], "the old task keeps serving until the new one is ready"
    rollout = await world.rollout()
    assert (rollout.state, rollout.from_version, rollout.to_version, sorted(rollout.batch)) == (
        "updating", 1, 2, ["1", "2"],
    )  # fmt: skip

    await world.report(tasks[1])  # slot 1's new replica is ready
    await world.reconcile()
    tasks = await world.tasks()
    assert tasks[1].handoff == {}, "released: its old task may stop now"
    assert tasks[2].handed_off() == v1[2], "slot 2 not ready yet: still handing off"
    assert tasks[3].version == 2 and tasks[3].handed_off() == v1[3], "slot 1's place took slot 3"

    for _ in range(4):
        await world.report_all()
        await world.reconcile()
    tasks = await world.tasks()
    assert all(t.version == 2 and not t.handoff for t in tasks.values())
    assert (await world.rollout()).state == RolloutState.COMPLETED
    history = await world.store.get(KEYS.history_version("web", 2))
    assert history is not None and ServiceRecord.from_json(history.value).outcome == "completed"


async def test_stop_first_replaces_without_handoff(world: World) -> None:
    await world.put_service(web(1, "img:1", order="stop-first"))
    await world.reconcile()
    await world.report_all()
    await world.put_service(web(2, "img:2", order="stop-first"))
    await world.reconcile()
    tasks = await world.tasks()
    assert [s for s, t in tasks.items() if t.version == 2] == [1]
    assert tasks[1].handoff == {}


async def test_failing_new_replicas_roll_back_to_the_previous_version(world: World) -> None:
    await world.put_service(web(1, "img:1", parallelism=1))
    await world.reconcile()
    await world.report_all()
    await world.reconcile()
    v1 = await world.tasks()

    await world.put_service(web(2, "img:bad", parallelism=1))
    await world.reconcile()
    tasks = await world.tasks()
    assert tasks[1].version == 2
    await world.report(tasks[1], "exited", restarts=1)  # the new replica crashes
    await world.reconcile()
    rollout = await world.rollout()
    assert rollout.state == RolloutState.FAILED and "rolling back to version 1" in rollout.message

    service = ServiceRecord.from_json((await world.store.get(KEYS.service("web"))).value)  # type: ignore[union-attr]
    assert (service.version, service.rollback_of, service.spec.image) == (3, 2, "img:1")
    await world.reconcile()
    tasks = await world.tasks()
    assert tasks[1] == v1[1], "the old task, still running under the handoff, is restored as it was"
    for _ in range(3):
        await world.report_all()
        await world.reconcile()
    rollout = await world.rollout()
    assert (rollout.state, rollout.to_version, rollout.rollback_of) == (RolloutState.ROLLED_BACK, 3, 2)
    assert {t.task_id for t in (await world.tasks()).values()} == {t.task_id for t in v1.values()}
    failed = await world.store.get(KEYS.history_version("web", 2))
    assert failed is not None and ServiceRecord.from_json(failed.value).outcome == "failed"


def scaled(version: int, image: str, replicas: int, **update: object) -> ServiceRecord:
    """`web` at `replicas`: a new version with the same container template."""
    return make_service(
        "web", replicas=replicas, version=version, image=image, update={"monitor": 30.0, **update}
    )


async def test_a_scale_during_a_rollout_keeps_its_window_and_monitored_slots(world: World) -> None:
    """A new version with the same template (a scale) started the rollout from nothing:
    the slot in flight was forgotten and another one started beside it (parallelism
    exceeded), and the monitored slot went unwatched."""
    await world.put_service(scaled(1, "img:1", 4, parallelism=1))
    await world.reconcile()
    await world.report_all()
    await world.reconcile()
    await world.put_service(scaled(2, "img:2", 4, parallelism=1))
    await world.reconcile()
    await world.report((await world.tasks())[1])  # slot 1 ready: monitored, slot 2 in flight
    await world.reconcile()
    before = await world.rollout()
    assert (sorted(before.batch), sorted(before.monitored)) == (["2"], ["1"])

    await world.put_service(scaled(3, "img:2", 5, parallelism=1))
    await world.reconcile()
    tasks = await world.tasks()
    in_flight = sorted(s for s, t in tasks.items() if t.handoff)
    assert in_flight == [2], "one slot in flight, as parallelism says"
    after = await world.rollout()
    assert (after.to_version, after.started_at) == (3, before.started_at), "the same rollout, carried on"
    assert (after.batch, after.monitored) == (before.batch, before.monitored)


async def test_a_scale_does_not_resume_a_paused_rollout(world: World) -> None:
    """A paused rollout (a bad version, `failure_action: pause`) resumed at a scale: a new
    record started with no failed slot and went on updating to the bad template."""
    await world.put_service(scaled(1, "img:1", 4, parallelism=1, failure_action="pause"))
    await world.reconcile()
    await world.report_all()
    await world.reconcile()
    await world.put_service(scaled(2, "img:bad", 4, parallelism=1, failure_action="pause"))
    await world.reconcile()
    await world.report((await world.tasks())[1], "exited", restarts=1)
    await world.reconcile()
    assert (await world.rollout()).state == RolloutState.PAUSED
    bad = sorted(s for s, t in (await world.tasks()).items() if t.version == 2)

    await world.put_service(scaled(3, "img:bad", 5, parallelism=1, failure_action="pause"))
    await world.reconcile()
    rollout = await world.rollout()
    assert (rollout.state, rollout.to_version, rollout.failed) == (RolloutState.PAUSED, 3, [1])
    tasks = await world.tasks()
    assert sorted(s for s, t in tasks.items() if t.version in (2, 3) and s <= 4) == bad, (
        "nothing more updates"
    )
    entry = await world.store.get(KEYS.history_version("web", 3))
    assert entry is not None and ServiceRecord.from_json(entry.value).outcome == "paused"


def test_a_due_rollback_is_not_forgotten_by_a_scale() -> None:
    """A failed rollout whose rollback was not written yet (refused for a port, say) was
    replaced at a scale by a new `updating` record: the rollback never came."""
    v1 = make_service("web", replicas=2, version=1, image="img:1")
    v3 = make_service("web", replicas=3, version=3, image="img:bad")
    target = template_hash(v3.spec)
    tasks = {("web", 1): make_task(v1, 1, "n1"), ("web", 2): make_task(v3, 2, "n1")}
    failed = RolloutRecord("web", 1, 2, target, state=RolloutState.FAILED.value, failed=[2], started_at=5.0)
    decided = updates.decide({"web": v3}, tasks, {}, {"web": failed}, {"n1"}, now=10.0)
    assert [(r.from_version, r.to_version, r.state) for r in decided.rollbacks] == [(1, 3, "failed")]
    assert decided.allowed["web"] == frozenset()


async def test_a_rollback_returns_to_the_last_good_version_not_to_a_paused_one(world: World) -> None:
    """v2 paused (bad), then v3 (bad too, `failure_action: rollback`): the rollout of v3
    came from the newest outdated version, v2, and its rollback restored the bad v2."""
    await world.put_service(web(1, "img:1", parallelism=1, monitor=30.0))
    await world.reconcile()
    await world.report_all()
    await world.reconcile()
    await world.put_service(web(2, "img:bad2", parallelism=1, monitor=30.0, failure_action="pause"))
    await world.reconcile()
    await world.report((await world.tasks())[1], "exited", restarts=1)
    await world.reconcile()
    assert (await world.rollout()).state == RolloutState.PAUSED

    await world.put_service(web(3, "img:bad3", parallelism=1, monitor=30.0, failure_action="rollback"))
    await world.reconcile()
    assert (await world.rollout()).from_version == 1
    tasks = await world.tasks()
    [slot] = [s for s, t in tasks.items() if t.version == 3]
    await world.report(tasks[slot], "exited", restarts=1)
    await world.reconcile()
    service = ServiceRecord.from_json((await world.store.get(KEYS.service("web"))).value)  # type: ignore[union-attr]
    assert (service.version, service.rollback_of, service.spec.image) == (4, 3, "img:1")


async def test_a_drained_replica_keeps_serving_when_its_replacements_node_is_lost(world: World) -> None:
    """Draining n1 handed its replica off to a task on another node; that node was lost
    before its replica was ready, and the next pass placed a third task without the
    handoff: nothing held n1's healthy replica any more, so its agent stopped it and the
    service had none serving until the third one was ready."""
    await world.put_service(make_service("web", replicas=1, image="img:1"))
    await world.reconcile()
    await world.report_all()
    await world.reconcile()
    [first] = (await world.tasks()).values()
    await world.store.put(KEYS.nodespec(first.node), NodeSpec(availability="drain").to_json())
    await world.reconcile()
    moved = (await world.tasks())[1]
    assert moved.node != first.node and moved.handed_off() == first

    await world.store.delete(KEYS.node(moved.node))
    await world.reconcile()
    slot = (await world.tasks())[1]
    assert first in (slot, slot.handed_off()), "the drained replica is still assigned: it serves on"

    await world.reconcile()
    slot = (await world.tasks())[1]
    assert slot.node not in (first.node, moved.node)
    assert slot.handed_off() == first, "the replacement takes over from the replica still serving"
    assert "handoff" not in slot.handoff, "a handoff holds one task, never a chain"
    await world.report(slot)  # ready
    await world.reconcile()
    assert (await world.tasks())[1] == replace(slot, handoff={}), "released: the drained one stops"


async def test_an_update_drained_before_it_was_ready_keeps_the_old_replica_serving(world: World) -> None:
    """Slot 1's start-first update handed n1's replica off to a new task; that task's node
    was drained before it was ready, and the task moved off it held the unready one: n1's
    replica, the only one serving, was no longer assigned and its agent stopped it."""
    await world.put_service(make_service("web", replicas=1, image="img:1"))
    await world.reconcile()
    await world.report_all()
    await world.reconcile()
    first = (await world.tasks())[1]
    await world.put_service(make_service("web", replicas=1, version=2, image="img:2"))
    await world.reconcile()
    updating = (await world.tasks())[1]
    assert updating.version == 2 and updating.handed_off() == first
    await world.store.put(KEYS.nodespec(updating.node), NodeSpec(availability="drain").to_json())
    await world.reconcile()
    moved = (await world.tasks())[1]
    assert moved.node != updating.node and moved.version == 2
    assert moved.handed_off() == first, "the replica still serving is held until a new one is ready"
    await world.report(moved)  # ready
    await world.reconcile()
    assert (await world.tasks())[1] == replace(moved, handoff={}), "released only now"


def _lost_update(old_image: str) -> tuple[Assignment, Assignment, ServiceRecord]:
    """Slot 1's start-first update to img:2 was placed on n2, handing off n1's task; n2 is
    lost. Returns n1's task, n2's, and the service now (at `old_image` once more)."""
    v1 = make_service("web", version=1, image="img:1")
    v2 = make_service("web", version=2, image="img:2")
    old = make_task(v1, 1, "n1")
    lost = replace(make_task(v2, 1, "n2"), handoff={k: v for k, v in asdict(old).items() if k != "handoff"})
    now = make_service("web", version=3, image=old_image)
    return old, lost, now


def test_an_update_lost_with_its_node_keeps_the_old_replica_handed_off() -> None:
    """A start-first update's new task lost with its node was placed again without the
    handoff: the old replica, still serving, was stopped before any new one was ready."""
    old, lost, now = _lost_update("img:2")
    snap = Snapshot({n: make_node(n) for n in ("n1", "n3")}, {("web", 1): lost})
    plan = updates.with_handoffs(
        schedule(snap, now, epoch=2, new_id=lambda: "web-1-new"), update_policy(now.spec), {"n1", "n3"}
    )
    [placed] = plan.place
    assert placed.task_id == "web-1-new" and placed.handed_off() == old
    assert "handoff" not in placed.handoff, "the original old task, not the lost one"


def test_a_rollback_lost_with_its_node_restores_the_task_still_serving() -> None:
    """Rolled back while the update's new task was lost with its node: the old task,
    still serving under the handoff and already on the template wanted, was dropped for
    a third one."""
    old, lost, now = _lost_update("img:1")
    snap = Snapshot({n: make_node(n) for n in ("n1", "n3")}, {("web", 1): lost})
    plan = updates.with_handoffs(
        schedule(snap, now, epoch=2, new_id=lambda: "web-1-new"), update_policy(now.spec), {"n1", "n3"}
    )
    assert plan.place == [old], "restored as it was, container and all"


def test_a_lost_task_whose_old_replica_is_lost_too_is_placed_without_handoff() -> None:
    """Nothing to hand off when both nodes are gone: the new task starts on its own."""
    _, lost, now = _lost_update("img:2")
    snap = Snapshot({"n3": make_node("n3")}, {("web", 1): lost})
    plan = updates.with_handoffs(
        schedule(snap, now, epoch=2, new_id=lambda: "web-1-new"), update_policy(now.spec), {"n3"}
    )
    [placed] = plan.place
    assert (placed.node, placed.handoff) == ("n3", {})
