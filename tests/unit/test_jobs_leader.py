"""Jobs through the leader's pass (`LeaderLoop.reconcile` + `leader.jobrun`) on a MemoryStore:
tasks placed per index, outcomes recorded in `jobs/<name>` before the next task, counted
once across a leader that dies between the two (issue 18)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from leader import crashpoint
from leader.loop import LeaderLoop
from node.model.domain import Assignment, TaskState, TaskStatus
from node.model.jobs import JobRecord
from node.model.keys import Keys
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_node, make_service
from tests.helpers import mirrors_caught_up

KEYS = Keys()


class Crash(Exception):
    pass


async def _leader(store: MemoryStore) -> tuple[LeaderLoop, list[asyncio.Task[None]]]:
    await store.delete(KEYS.leader)
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
    caches = (loop.services, loop.nodes, loop.tasks, loop.statuses)
    return loop, [asyncio.create_task(c.run()) for c in caches]


async def _pass(store: MemoryStore, loop: LeaderLoop) -> None:
    await mirrors_caught_up(store, (loop.services, loop.nodes, loop.tasks, loop.statuses))
    await loop.reconcile()


async def _tasks(store: MemoryStore) -> dict[int, Assignment]:
    kvs, _ = await store.range(KEYS.tasks)
    return {a.slot: a for a in (Assignment.from_json(kv.value) for kv in kvs)}


async def _finish(store: MemoryStore, task: Assignment, code: int) -> None:
    state = TaskState.EXITED if code == 0 else TaskState.FAILED
    status = TaskStatus(
        task.task_id, task.service, task.slot, task.node, state, exit_code=code, terminal=True
    )
    await store.put(KEYS.status(task.task_id), status.to_json())


async def _record(store: MemoryStore) -> JobRecord:
    kv = await store.get(KEYS.job("batch"))
    assert kv is not None
    return JobRecord.from_json(kv.value)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    store = MemoryStore()
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    job = make_service("batch", kind="job", job={"completions": 3, "parallelism": 2})
    await store.put(KEYS.service("batch"), job.to_json())
    yield store


async def test_a_job_runs_its_completions_at_most_parallelism_at_once(store: MemoryStore) -> None:
    loop, caches = await _leader(store)
    try:
        await _pass(store, loop)
        first = await _tasks(store)
        assert sorted(first) == [1, 2]
        await _finish(store, first[1], 0)
        await _pass(store, loop)
        now = await _tasks(store)
        assert sorted(now) == [1, 2, 3] and now[1] == first[1]  # kept for its logs, not restarted
        assert (await _record(store)).counted == [first[1].task_id]
        for slot in (2, 3):
            await _finish(store, now[slot], 0)
        await _pass(store, loop)
        record = await _record(store)
        assert record.state == "succeeded" and len(record.counted) == 3
        await _pass(store, loop)
        assert await _tasks(store) == now, "a finished job places nothing more"
    finally:
        for c in caches:
            c.cancel()


async def test_a_leader_dying_between_record_and_start_counts_the_outcome_once(store: MemoryStore) -> None:
    loop, caches = await _leader(store)
    try:
        await _pass(store, loop)
        first = await _tasks(store)
        await _finish(store, first[1], 7)

        def crash(point: str) -> None:
            if point == crashpoint.JOB_RECORDED:
                raise Crash(point)

        loop.jobs.crash_point = crash
        with pytest.raises(Crash):
            await _pass(store, loop)
        assert (await _record(store)).failures == 1
        assert await _tasks(store) == first, "died before any task was placed"
    finally:
        for c in caches:
            c.cancel()
    loop, caches = await _leader(store)  # the next leader, a new epoch
    try:
        await _pass(store, loop)
        record = await _record(store)
        assert record.failures == 1 and record.counted == [first[1].task_id]
        assert record.state == "failed"  # retries 0: one failure ends it
        assert sorted(await _tasks(store)) == [1], "index 2, still running, is unassigned"
    finally:
        for c in caches:
            c.cancel()


async def test_a_removed_jobs_record_is_deleted(store: MemoryStore) -> None:
    loop, caches = await _leader(store)
    try:
        await _pass(store, loop)
        assert await store.get(KEYS.job("batch")) is not None
        await store.delete(KEYS.service("batch"))
        await _pass(store, loop)
        assert await store.get(KEYS.job("batch")) is None
    finally:
        for c in caches:
            c.cancel()


async def test_indices_that_may_not_start_take_no_capacity_from_other_services() -> None:
    """50 completions one at a time: the scheduler sees one index, not 50, so a service
    planned in the same pass finds the room the other 49 would have taken."""
    store = MemoryStore()
    node = replace(make_node("n1"), cpu=4.0, memory=2**30)
    await store.put(KEYS.node("n1"), node.to_json())
    big = make_service("big", kind="job", job={"completions": 50}, resources={"memory": 200 * 2**20})
    web = make_service("web", replicas=4, resources={"memory": 100 * 2**20})
    for s in (big, web):
        await store.put(KEYS.service(s.name), s.to_json())
    loop, caches = await _leader(store)
    try:
        await _pass(store, loop)
        kvs, _ = await store.range(KEYS.tasks)
        placed = sorted((a.service, a.slot) for a in (Assignment.from_json(kv.value) for kv in kvs))
        assert placed == [("big", 1), ("web", 1), ("web", 2), ("web", 3), ("web", 4)]
    finally:
        for c in caches:
            c.cancel()


async def _plain_after(stored: JobRecord, tasks: list[tuple[int, str, int | None]]) -> MemoryStore:
    """A plain job `batch` (uid u2, one completion) over what a scheduled job of that name
    left: its record `stored` and tasks (slot, incarnation uid, exit code or None: running)."""
    store = MemoryStore()
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    job = replace(make_service("batch", kind="job", job={"completions": 1}), uid="u2")
    await store.put(KEYS.service("batch"), job.to_json())
    await store.put(KEYS.job("batch"), stored.to_json())
    for slot, uid, code in tasks:
        task = Assignment(f"old{slot}", "batch", slot, "n1", 1, 1, "1", uid=uid)
        await store.put(KEYS.task("batch", slot), task.to_json())
        if code is not None:
            await _finish(store, task, code)
    return store


async def test_a_plain_job_after_a_scheduled_namesake_runs_once_and_unassigns_its_lanes() -> None:
    """The namesake's last run was in lane 1 (slot 1001). The new job computed its slots
    from that record's lane: it placed slot 1001, then (its own record in lane 0) slot 1
    too: two tasks for one completion, and slot 1001 never counted nor stopped."""
    store = await _plain_after(JobRecord("batch", "u1#1800000060", lane=1), [(1001, "u1", None)])
    loop, caches = await _leader(store)
    try:
        for _ in range(3):
            await _pass(store, loop)
        tasks = await _tasks(store)
        assert sorted(tasks) == [1] and tasks[1].uid == "u2", tasks
        record = await _record(store)
        assert (record.uid, record.state, record.lane) == ("u2", "running", 0)
    finally:
        for c in caches:
            c.cancel()


async def test_a_job_whose_schedule_was_taken_out_does_not_count_the_last_runs_task() -> None:
    """Same incarnation, `schedule:` removed: the run's finished slot-1 task was counted as
    the new plain job's, which then said "succeeded 1 of 1" without running."""
    store = await _plain_after(JobRecord("batch", "u2#1800000060", state="succeeded"), [(1, "u2", 0)])
    loop, caches = await _leader(store)
    try:
        await _pass(store, loop)
        await _pass(store, loop)
        record = await _record(store)
        assert (record.uid, record.state) == ("u2", "running"), record
        [task] = (await _tasks(store)).values()
        assert task.task_id != "old1", "a task of its own runs"
    finally:
        for c in caches:
            c.cancel()


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b'{"service": "batch", "uid": "u1", "counted": 5}',  # list(5): TypeError in every pass
        b'{"service": "batch", "uid": "u1", "indexes": {"1": {"retry_at": "soon"}}}',
        b'{"service": "batch", "uid": "u1", "indexes": "all"}',
    ],
    ids=["not-json", "counted", "retry_at", "indexes"],
)
async def test_a_job_record_that_cannot_be_read_leaves_that_job_alone(store: MemoryStore, bad: bytes) -> None:
    """`jobs/<name>` written around the leader failed every pass (nothing at all was
    reconciled); the job is left alone, its tasks as they are, and the others go on."""
    loop, caches = await _leader(store)
    try:
        await _pass(store, loop)
        before = await _tasks(store)
        assert sorted(before) == [1, 2]
        await store.put(KEYS.job("batch"), bad)
        await _finish(store, before[1], 0)  # not counted, and slot 3 not started meanwhile
        await store.put(KEYS.service("web"), make_service("web", replicas=2).to_json())
        await _pass(store, loop)
        kvs, _ = await store.range(KEYS.tasks)
        assert {kv.key for kv in kvs} == {
            KEYS.task("batch", 1),
            KEYS.task("batch", 2),
            KEYS.task("web", 1),
            KEYS.task("web", 2),
        }
        assert {kv.key: kv.value for kv in kvs if kv.key.startswith(KEYS.service_tasks("batch"))} == {
            KEYS.task("batch", s): t.to_json() for s, t in before.items()
        }
        assert (await store.get(KEYS.job("batch"))).value == bad  # type: ignore[union-attr]
        assert "batch" in loop.unreadable
    finally:
        for c in caches:
            c.cancel()


async def test_the_record_said_unreadable_is_forgotten_once_its_key_is_gone(store: MemoryStore) -> None:
    """The map that says each unreadable job record once per revision was never pruned."""
    loop, caches = await _leader(store)
    try:
        await store.put(KEYS.job("batch"), b"not json")
        await _pass(store, loop)
        assert set(loop.jobs._said) == {"batch"}
        await store.delete(KEYS.job("batch"))
        await _pass(store, loop)
        assert loop.jobs._said == {}
    finally:
        for c in caches:
            c.cancel()
