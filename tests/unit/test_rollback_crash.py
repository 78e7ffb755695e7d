"""An automatic rollback survives a crash, a deposed leader or an etcd error at any step.

A rollout fails (its new replica crashes) and the leader must roll the service back to
the previous version. We stop the leader at each step of that path, with a crash point
(`LeaderLoop.crash_point`) or with a store that dies at its k-th write (before the write
is applied, or after it is applied and before the answer comes back), then let a fresh
leader (a new epoch, new mirrors) on the same store go on. Whatever the step, the
service ends on the previous version, rolled back exactly once: one new version
(`rollback_of` the failed one), one history entry for it, and no second rollback later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from leader import crashpoint
from leader.loop import LeaderLoop
from leader.rollout import RolloutState
from leader.scheduler import template_hash
from node.model.domain import Assignment, RolloutRecord, ServiceRecord, TaskStatus
from node.model.keys import Keys
from node.store import Compare, Delete, Fenced, Put, StoreUnavailable
from node.store.base import Op, TxnResult
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_node, make_service
from tests.helpers import mirrors_caught_up

KEYS = Keys()


class Crash(Exception):
    """The leader process dies here (nothing after this line of it runs)."""


class DyingStore(MemoryStore):
    """Fails its `fail_at`-th write (0 = the first) once armed: `after=False` before the write
    is applied, `after=True` after it is applied (the answer is what is lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_at: int | None = None
        self.after = False
        self.error: type[Exception] = Crash
        self.writes = 0
        self.only: Callable[[Sequence[Op]], bool] = lambda ops: True  # the writes counted

    def arm(
        self,
        fail_at: int,
        after: bool,
        error: type[Exception] = Crash,
        only: Callable[[Sequence[Op]], bool] = lambda ops: True,
    ) -> None:
        self.fail_at, self.after, self.error, self.writes, self.only = fail_at, after, error, 0, only

    def disarm(self) -> bool:
        """Disarm; whether the failure happened."""
        armed, self.fail_at = self.fail_at, None
        return armed is None

    def _due(self, ops: Sequence[Op]) -> bool:
        if not self.only(ops):
            return False
        hit = self.fail_at is not None and self.writes == self.fail_at
        self.writes += 1
        if hit:
            self.fail_at = None
        return hit

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        hit = self._due([Put(key, value)])
        if hit and not self.after:
            raise self.error(f"dies before put {key}")
        revision = await super().put(key, value, lease)
        if hit:
            raise self.error(f"dies after put {key}")
        return revision

    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], else_ops: Sequence[Op] = ()
    ) -> TxnResult:
        hit = self._due(ops)
        if hit and not self.after:
            raise self.error("dies before txn")
        result = await super().txn(compares, ops, else_ops)
        if hit:
            raise self.error("dies after txn")
        return result


class Leader:
    """A leader loop with its mirrors running, on `store`, at a fresh epoch."""

    def __init__(self, store: DyingStore, epoch: int) -> None:
        self.store = store
        self.loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
        self.caches = [
            asyncio.create_task(c.run())
            for c in (
                self.loop.services,
                self.loop.nodes,
                self.loop.tasks,
                self.loop.rollouts,
                self.loop.statuses,
                self.loop.nodespecs,
            )
        ]

    async def reconcile(self) -> None:
        caches = (self.loop.services, self.loop.tasks, self.loop.rollouts, self.loop.statuses)

        await mirrors_caught_up(self.store, caches)
        await self.loop.reconcile()

    async def drop(self) -> None:
        for task in self.caches:
            task.cancel()
        await asyncio.gather(*self.caches, return_exceptions=True)


async def new_epoch(store: MemoryStore) -> int:
    """The old leader's key is gone (lease expired); the next one takes it: a new epoch."""
    await store.delete(KEYS.leader)
    return await store.put(KEYS.leader, b'{"node": "n1"}')


def web(version: int, image: str) -> ServiceRecord:
    return make_service("web", replicas=3, version=version, image=image, update={"monitor": 0.0})


async def tasks(store: MemoryStore) -> dict[int, Assignment]:
    kvs, _ = await store.range(KEYS.service_tasks("web"))
    return {a.slot: a for a in (Assignment.from_json(kv.value) for kv in kvs)}


async def report_all(store: MemoryStore, bad: str = "img:bad") -> None:
    """Play the agents: replicas of `bad` crash-loop, the others run."""
    services, _ = await store.range(KEYS.history("web"))
    images = {r.version: r.spec.image for r in (ServiceRecord.from_json(kv.value) for kv in services)}
    for t in (await tasks(store)).values():
        failing = images.get(t.version) == bad
        state, restarts = ("exited", 1) if failing else ("running", 0)
        status = TaskStatus(t.task_id, t.service, t.slot, t.node, state, restarts=restarts)
        await store.put(KEYS.status(t.task_id), status.to_json())


async def service(store: MemoryStore) -> ServiceRecord:
    kv = await store.get(KEYS.service("web"))
    assert kv is not None
    return ServiceRecord.from_json(kv.value)


async def rollout(store: MemoryStore) -> RolloutRecord:
    kv = await store.get(KEYS.rollout("web"))
    assert kv is not None
    return RolloutRecord.from_json(kv.value)


@pytest.fixture
async def failing() -> AsyncIterator[tuple[DyingStore, Leader]]:
    """v1 running on 3 nodes, v2 (a crashing image) applied; its first new replica placed and
    reported crashed: the next pass of the leader decides the rollout failed."""
    store = DyingStore()
    leader = Leader(store, await store.put(KEYS.leader, b'{"node": "n1"}'))
    try:
        for n in ("n1", "n2", "n3"):
            await store.put(KEYS.node(n), make_node(n).to_json())
        for record in (web(1, "img:1"), web(2, "img:bad")):
            if record.version == 2:
                await leader.reconcile()
                await report_all(store)
                await leader.reconcile()
            await store.put(KEYS.service("web"), record.to_json())
            await store.put(KEYS.history_version("web", record.version), record.to_json())
        await leader.reconcile()
        assert sum(t.version == 2 for t in (await tasks(store)).values()) == 1, "one slot updated"
        await report_all(store)  # it crashes
        yield store, leader
    finally:
        await leader.drop()


async def ends_rolled_back_once(store: DyingStore, leader: Leader) -> None:
    """Passes of `leader` until the rollback completed; then the invariants."""
    for _ in range(12):
        await report_all(store)
        await leader.reconcile()
        r = await rollout(store)
        if r.state == RolloutState.ROLLED_BACK:
            break
    svc = await service(store)
    assert (svc.version, svc.rollback_of, svc.spec.image) == (3, 2, "img:1"), "on the previous version"
    for _ in range(3):  # more passes: no second rollback
        await report_all(store)
        await leader.reconcile()
    assert (await service(store)).version == 3, "rolled back exactly once"
    history, _ = await store.range(KEYS.history("web"))
    outcomes = {r.version: r.outcome for r in (ServiceRecord.from_json(kv.value) for kv in history)}
    assert sorted(outcomes) == [1, 2, 3] and (outcomes[2], outcomes[3]) == ("failed", "rolled_back"), outcomes
    r = await rollout(store)
    assert (r.state, r.to_version, r.rollback_of) == (RolloutState.ROLLED_BACK, 3, 2)
    assert all(
        t.version in (1, 3) and t.template == template_hash(svc.spec) for t in (await tasks(store)).values()
    )


async def test_the_failure_and_its_rollback_are_one_transaction(failing: tuple[DyingStore, Leader]) -> None:
    store, leader = failing
    seen: list[tuple[str, int, str]] = []

    def look(point: str) -> None:
        if point == crashpoint.ROLLBACK_DUE:
            seen.append((point, store.revision, ""))

    leader.loop.crash_point = look
    before = store.revision
    await leader.reconcile()
    assert seen and seen[0][1] == before, "nothing of the failure is written before the rollback"
    assert (await rollout(store)).state == RolloutState.FAILED
    assert (await service(store)).version == 3


@pytest.mark.parametrize("point", [crashpoint.ROLLBACK_DUE, crashpoint.ROLLBACK_WRITTEN])
async def test_a_leader_crashing_at_a_step_of_the_rollback_is_completed_by_the_next(
    failing: tuple[DyingStore, Leader], point: str
) -> None:
    store, leader = failing

    def die(at: str) -> None:
        if at == point:
            raise Crash(at)

    leader.loop.crash_point = die
    with pytest.raises(Crash):
        await leader.reconcile()
    await leader.drop()
    successor = Leader(store, await new_epoch(store))
    try:
        await ends_rolled_back_once(store, successor)
    finally:
        await successor.drop()


@pytest.mark.parametrize("after", [False, True], ids=["before-applied", "after-applied"])
@pytest.mark.parametrize("k", range(3))
async def test_a_leader_dying_at_any_write_of_the_failing_pass_is_completed_by_the_next(
    failing: tuple[DyingStore, Leader], k: int, after: bool
) -> None:
    store, leader = failing
    store.arm(k, after)
    with contextlib.suppress(Crash):
        await leader.reconcile()
    store.disarm()  # past the pass's last write (this leader makes one, in one transaction): no crash
    await leader.drop()
    successor = Leader(store, await new_epoch(store))
    try:
        await ends_rolled_back_once(store, successor)
    finally:
        await successor.drop()


@pytest.mark.parametrize("after", [False, True], ids=["before-applied", "after-applied"])
@pytest.mark.parametrize("k", range(3))
async def test_an_etcd_error_at_any_write_of_the_failing_pass_is_completed_by_the_same_leader(
    failing: tuple[DyingStore, Leader], k: int, after: bool
) -> None:
    store, leader = failing
    store.arm(k, after, StoreUnavailable)
    with contextlib.suppress(StoreUnavailable):
        await leader.reconcile()  # the loop logs it and passes again
    store.disarm()  # past the pass's last write (this leader makes one, in one transaction): no crash
    await ends_rolled_back_once(store, leader)


def completes_the_rollback(ops: Sequence[Op]) -> bool:
    """The write that stores the rollback's rollout as `rolled_back`."""
    return any(
        isinstance(op, Put)
        and op.key == KEYS.rollout("web")
        and RolloutRecord.from_json(op.value).state == RolloutState.ROLLED_BACK
        for op in ops
    )


@pytest.mark.parametrize("error", [Crash, StoreUnavailable], ids=["killed", "etcd-error"])
@pytest.mark.parametrize("after", [False, True], ids=["before-applied", "after-applied"])
async def test_a_leader_dying_as_the_rollback_completes_still_stores_its_outcome(
    failing: tuple[DyingStore, Leader], after: bool, error: type[Exception]
) -> None:
    """The pass that ends the rollback's rollout dies at that write: applied or not, the
    version's `rolled_back` outcome is in `history/` in the end (the same leader goes on
    after an etcd error, a new one after a kill). Written apart from the rollout record,
    the outcome was lost when the record had been applied and the pass went no further."""
    store, leader = failing
    store.arm(0, after, error, only=completes_the_rollback)
    for _ in range(12):
        await report_all(store)
        with contextlib.suppress(error):
            await leader.reconcile()
        if store.fail_at is None:
            break
    assert store.disarm(), "the rollback's rollout reached its end"
    if error is Crash:
        await leader.drop()
        leader = Leader(store, await new_epoch(store))
    try:
        await ends_rolled_back_once(store, leader)
    finally:
        await leader.drop()


async def test_a_leader_deposed_before_the_rollback_writes_nothing_and_the_next_rolls_back(
    failing: tuple[DyingStore, Leader],
) -> None:
    store, leader = failing

    def deposed(at: str) -> None:
        if at == crashpoint.ROLLBACK_DUE:  # its lease expires, another node leads: a new epoch
            store._commit([Delete(KEYS.leader)])
            store._commit([Put(KEYS.leader, b'{"node": "n2"}')])

    leader.loop.crash_point = deposed
    with pytest.raises(Fenced):
        await leader.reconcile()
    assert (await service(store)).version == 2, "a deposed leader writes no rollback"
    assert (await rollout(store)).state == RolloutState.UPDATING, "nor the failure"
    await leader.drop()
    epoch = (await store.get(KEYS.leader)).create_revision  # type: ignore[union-attr]
    successor = Leader(store, epoch)
    try:
        await ends_rolled_back_once(store, successor)
    finally:
        await successor.drop()


async def test_a_failed_record_stored_without_its_rollback_is_rolled_back_by_a_fresh_leader() -> None:
    """The state a leader of an earlier version left when it died between the two steps."""
    store = DyingStore()
    for n in ("n1", "n2", "n3"):
        await store.put(KEYS.node(n), make_node(n).to_json())
    v1, v2 = web(1, "img:1"), web(2, "img:bad")
    for record in (v1, v2):
        await store.put(KEYS.history_version("web", record.version), record.to_json())
    await store.put(KEYS.service("web"), v2.to_json())
    failed = RolloutRecord(
        "web",
        1,
        2,
        template_hash(v2.spec),
        state=RolloutState.FAILED.value,
        failed=[1],
        message="1 of 3 failed",
    )
    await store.put(KEYS.rollout("web"), failed.to_json())
    leader = Leader(store, await store.put(KEYS.leader, b'{"node": "n1"}'))
    try:
        await leader.reconcile()
        svc = await service(store)
        assert (svc.version, svc.rollback_of, svc.spec.image) == (3, 2, "img:1")
        for _ in range(3):
            await report_all(store)
            await leader.reconcile()
        assert (await service(store)).version == 3
    finally:
        await leader.drop()


async def test_a_rollback_whose_good_version_is_gone_pauses_once_and_is_not_retried() -> None:
    store = DyingStore()
    for n in ("n1", "n2", "n3"):
        await store.put(KEYS.node(n), make_node(n).to_json())
    v2 = web(2, "img:bad")
    await store.put(KEYS.history_version("web", 2), v2.to_json())  # version 1's entry is gone
    await store.put(KEYS.service("web"), v2.to_json())
    failed = RolloutRecord(
        "web", 1, 2, template_hash(v2.spec), state=RolloutState.FAILED.value, message="failed"
    )
    await store.put(KEYS.rollout("web"), failed.to_json())
    leader = Leader(store, await store.put(KEYS.leader, b'{"node": "n1"}'))
    try:
        await leader.reconcile()
        r = await rollout(store)
        assert r.state == RolloutState.PAUSED and "version 1 is no longer in the history" in r.message
        assert (await service(store)).version == 2, "nothing to roll back to: the service is left as it is"
        bad = await store.get(KEYS.history_version("web", 2))
        assert bad is not None and ServiceRecord.from_json(bad.value).outcome == "paused", "in the history"
        kv = await store.get(KEYS.rollout("web"))
        await leader.reconcile()
        assert await store.get(KEYS.rollout("web")) == kv, "reported once, not retried every pass"
    finally:
        await leader.drop()


async def test_a_newer_apply_between_the_decision_and_the_write_wins_over_the_rollback(
    failing: tuple[DyingStore, Leader],
) -> None:
    store, leader = failing
    fixed = web(3, "img:fixed")

    def apply_meanwhile(at: str) -> None:
        if at == crashpoint.ROLLBACK_DUE:  # `shoal service apply` of a fixed spec lands now
            store._commit([Put(KEYS.service("web"), fixed.to_json())])
            store._commit([Put(KEYS.history_version("web", 3), fixed.to_json())])

    leader.loop.crash_point = apply_meanwhile
    await leader.reconcile()
    for _ in range(3):
        await report_all(store)
        await leader.reconcile()
    svc = await service(store)
    assert (svc.version, svc.spec.image, svc.rollback_of) == (3, "img:fixed", 0), (
        "the operator's apply stands"
    )
