"""Records of removed services are cleaned, and the leader's loop never busy-loops.

`shoal service rm` deletes a service's `rollouts/` record in its transaction, but a
leader pass that planned the service just before can write the record again right
after: an orphan. Its deadlines (a progress deadline, a monitor window) are never
stepped, and the loop used to re-arm a ~30 ms timer for them forever. The same goes for
`pending/` records written while the service was being removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import pytest

from leader.loop import LeaderLoop
from leader.rollout import PROGRESS_DEADLINE, RolloutState
from node.model.domain import RolloutRecord, TaskStatus
from node.model.keys import Keys
from node.store import Compare, Delete, StoreUnavailable
from node.store.base import Op, TxnResult
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_node, make_service, make_task
from tests.helpers import mirrors_caught_up, wait_until

KEYS = Keys()


class RacingStore(MemoryStore):
    """Runs `before_rollout_write` (once) just before the first transaction that writes a
    `rollouts/` key: the moment an `rm` can slip in between a pass's plan and its commit."""

    def __init__(self) -> None:
        super().__init__()
        self.before_rollout_write: list[Op] = []
        self.lose_answer_of: str = ""  # a key prefix: the txn writing it is applied, its answer lost

    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], else_ops: Sequence[Op] = ()
    ) -> TxnResult:
        if self.before_rollout_write and any(op.key.startswith(KEYS.rollouts) for op in ops):
            self._commit(self.before_rollout_write)
            self.before_rollout_write = []
        result = await super().txn(compares, ops, else_ops)
        if self.lose_answer_of and any(op.key.startswith(self.lose_answer_of) for op in ops):
            self.lose_answer_of = ""
            raise StoreUnavailable("etcd applied the transaction; its answer was lost")
        return result


@pytest.fixture
async def leader() -> AsyncIterator[tuple[RacingStore, LeaderLoop]]:
    store = RacingStore()
    loop = LeaderLoop(
        store, KEYS, await store.put(KEYS.leader, b'{"node": "n1"}'), EventLog(store, KEYS, "n1")
    )
    yield store, loop


@contextlib.asynccontextmanager
async def running(loop: LeaderLoop) -> AsyncIterator[None]:
    task = asyncio.create_task(loop.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def mirrors(loop: LeaderLoop) -> AsyncIterator[None]:
    caches = [
        asyncio.create_task(c.run())
        for c in (loop.services, loop.nodes, loop.tasks, loop.rollouts, loop.statuses, loop.nodespecs)
    ]
    try:
        yield
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


async def pass_when_mirrored(store: MemoryStore, loop: LeaderLoop) -> None:
    await mirrors_caught_up(store, (loop.services, loop.tasks, loop.rollouts, loop.statuses))
    with contextlib.suppress(StoreUnavailable):
        await loop.reconcile()


def orphan(service: str, age: float) -> RolloutRecord:
    """An active rollout record whose new task was given `age` seconds ago."""
    t = time.time() - age
    return RolloutRecord(service, 1, 2, "t2", state=RolloutState.UPDATING.value, batch={"1": t}, started_at=t)


async def test_an_orphan_rollout_record_is_deleted_and_wakes_the_loop_a_bounded_number_of_times(
    leader: tuple[RacingStore, LeaderLoop],
) -> None:
    store, loop = leader
    await store.put(KEYS.rollout("gone"), orphan("gone", PROGRESS_DEADLINE + 100).to_json())
    async with running(loop):
        await wait_until(lambda: loop.passes >= 1, timeout=5, message="a first pass")
        # a measurement window, not a wait for convergence: with resync 5 s, an idle loop
        # makes at most a pass or two here; a re-armed ~30 ms timer makes ~30
        await asyncio.sleep(1.0)
        passes = loop.passes
    assert passes <= 3, f"{passes} passes in 1 s with nothing to do: the loop busy-loops"
    assert await store.get(KEYS.rollout("gone")) is None, "the removed service's record is deleted"


async def test_a_rollout_deadline_a_pass_has_seen_arms_no_timer(
    leader: tuple[RacingStore, LeaderLoop],
) -> None:
    store, loop = leader
    web = make_service("web", replicas=1, version=2, update={"monitor": 5.0})
    await store.put(KEYS.service("web"), web.to_json())
    await store.put(KEYS.rollout("web"), orphan("web", PROGRESS_DEADLINE + 1).to_json())
    async with mirrors(loop):
        await wait_until(lambda: loop.rollouts.items and loop.services.items, timeout=5, message="mirrored")
        before = loop.next_rollout_deadline()
        assert before is not None and before < 0.1, "a deadline no pass has seen: a pass now"
        loop._last_pass = time.time()  # a pass ran after it (and could not clear it)
        assert loop.next_rollout_deadline() is None, "a deadline already seen must not re-arm a timer"
        ahead = orphan("web", PROGRESS_DEADLINE - 2)  # its progress deadline is 2 s away
        await store.put(KEYS.rollout("web"), ahead.to_json())
        await wait_until(
            lambda: loop.rollouts.items[KEYS.rollout("web")].value == ahead.to_json(), 5, message="mirrored"
        )
        left = loop.next_rollout_deadline()
        assert left is not None and 1 < left < 3, "a deadline still ahead is kept"


async def test_rm_racing_a_rollout_leaves_no_record_behind(leader: tuple[RacingStore, LeaderLoop]) -> None:
    store, loop = leader
    for n in ("n1", "n2"):
        await store.put(KEYS.node(n), make_node(n).to_json())
    v1 = make_service("web", replicas=2, version=1, image="img:1")
    v2 = make_service("web", replicas=2, version=2, image="img:2")
    async with mirrors(loop):
        await store.put(KEYS.service("web"), v1.to_json())
        await pass_when_mirrored(store, loop)
        tasks, _ = await store.range(KEYS.tasks)
        for kv in tasks:
            task = loop.assignments([kv])[kv.key]
            status = TaskStatus(task.task_id, "web", task.slot, task.node, "running")
            await store.put(KEYS.status(task.task_id), status.to_json())
        await store.put(KEYS.service("web"), v2.to_json())
        # `shoal service rm web` commits between the pass's plan and its commit
        store.before_rollout_write = [
            Delete(KEYS.service("web")),
            Delete(KEYS.history("web"), prefix=True),
            Delete(KEYS.rollout("web")),
        ]
        await pass_when_mirrored(store, loop)
        assert not store.before_rollout_write, "the rm ran inside the pass"
        for _ in range(2):
            await pass_when_mirrored(store, loop)
        assert await store.get(KEYS.rollout("web")) is None, "no orphan rollout record"
        assert (await store.range(KEYS.tasks))[0] == [], "nor tasks"


async def test_a_pending_record_whose_write_answer_was_lost_is_deleted_with_its_service(
    leader: tuple[RacingStore, LeaderLoop],
) -> None:
    store, loop = leader
    async with mirrors(loop):
        await store.put(KEYS.service("web"), make_service("web", replicas=2).to_json())  # no node: pending
        store.lose_answer_of = KEYS.pendings
        await pass_when_mirrored(store, loop)
        assert await store.get(KEYS.pending("web")) is not None
        await store.delete(KEYS.service("web"))
        await pass_when_mirrored(store, loop)
        assert await store.get(KEYS.pending("web")) is None, "no orphan pending record"


async def test_an_active_record_no_pass_steps_does_not_make_the_loop_busy(
    leader: tuple[RacingStore, LeaderLoop],
) -> None:
    """A record left `updating` that no pass steps (here: a scale to version 3 while the
    rollout to version 2 waited on a slot that was already on the target template) and whose
    progress deadline passed: a pass sees it once, the timer is not re-armed for it."""
    store, loop = leader
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    v3 = make_service("web", replicas=1, version=3, image="img:2")
    await store.put(KEYS.service("web"), v3.to_json())
    task = make_task(v3, 1, "n1")
    await store.put(KEYS.task("web", 1), task.to_json())
    await store.put(KEYS.status(task.task_id), TaskStatus(task.task_id, "web", 1, "n1", "running").to_json())
    stuck = orphan("web", PROGRESS_DEADLINE + 100)
    await store.put(KEYS.rollout("web"), replace(stuck, target=task.template).to_json())
    async with running(loop):
        await wait_until(lambda: loop.passes >= 1, timeout=5, message="a first pass")
        await asyncio.sleep(1.0)  # a measurement window (see above)
        passes = loop.passes
    assert passes <= 3, f"{passes} passes in 1 s with nothing to do: the loop busy-loops"
