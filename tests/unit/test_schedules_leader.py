"""Scheduled jobs through the leader's pass (`LeaderLoop.reconcile`, `leader.schedrun`) on
a MemoryStore with a controlled clock: each tick recorded once, fenced, before its task;
a leader dying at the tick neither skips nor doubles it; forbid, replace, history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest

from leader import crashpoint
from leader.loop import LeaderLoop
from node.model.domain import Assignment, ServiceRecord, TaskState, TaskStatus
from node.model.jobs import JobRecord
from node.model.keys import Keys
from node.model.runs import RunRecord
from node.store import Fenced
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_node, make_service, respec
from tests.helpers import mirrors_caught_up

KEYS = Keys()
T0 = 1_800_000_000.0  # a whole minute (UTC)


class Crash(Exception):
    pass


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 10

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr("leader.loop.time.time", c)
    yield c


class Leader:
    def __init__(self, store: MemoryStore, loop: LeaderLoop, caches: list[asyncio.Task[None]]) -> None:
        self.store, self.loop, self.caches = store, loop, caches

    async def pass_(self) -> None:
        lp = self.loop
        await mirrors_caught_up(self.store, (lp.services, lp.nodes, lp.tasks, lp.statuses))
        await lp.reconcile()

    def stop(self) -> None:
        for c in self.caches:
            c.cancel()


async def _leader(store: MemoryStore) -> Leader:
    await store.delete(KEYS.leader)
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
    caches = (loop.services, loop.nodes, loop.tasks, loop.statuses)
    return Leader(store, loop, [asyncio.create_task(c.run()) for c in caches])


def _cron(**schedule: object) -> ServiceRecord:
    s = make_service("tick", kind="job", schedule={"cron": "* * * * *", **schedule})
    return replace(s, uid="u1", updated_at=T0)


async def _store(service: ServiceRecord) -> MemoryStore:
    store = MemoryStore()
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    await store.put(KEYS.service(service.name), service.to_json())
    return store


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    yield await _store(_cron())


async def _tasks(store: MemoryStore) -> dict[int, Assignment]:
    kvs, _ = await store.range(KEYS.tasks)
    return {a.slot: a for a in (Assignment.from_json(kv.value) for kv in kvs)}


async def _runs(store: MemoryStore) -> list[RunRecord]:
    kvs, _ = await store.range(KEYS.runs)
    return [RunRecord.from_json(kv.value) for kv in kvs]


async def _finish(store: MemoryStore, task: Assignment, code: int = 0) -> None:
    state = TaskState.EXITED if code == 0 else TaskState.FAILED
    status = TaskStatus(
        task.task_id, task.service, task.slot, task.node, state, exit_code=code, terminal=True
    )
    await store.put(KEYS.status(task.task_id), status.to_json())


async def _job(store: MemoryStore) -> JobRecord:
    kv = await store.get(KEYS.job("tick"))
    assert kv is not None
    return JobRecord.from_json(kv.value)


async def test_no_task_before_the_first_tick_then_one_run_per_tick(store: MemoryStore, clock: Clock) -> None:
    leader = await _leader(store)
    try:
        await leader.pass_()
        assert await _tasks(store) == {} and await _runs(store) == []
        wake = leader.loop.jobs.next_deadline()
        assert wake is not None and wake > 0, "a pass is due at the next tick"
        clock.now = T0 + 60.5
        await leader.pass_()
        [run] = await _runs(store)
        assert (run.tick, run.outcome) == (T0 + 60, "running")
        first = (await _tasks(store))[1]
        assert (await _job(store)).uid == f"u1#{int(T0 + 60)}"
        await leader.pass_()
        assert len(await _runs(store)) == 1, "a recorded tick is not fired again"
        clock.now = T0 + 75
        await _finish(store, first)
        await leader.pass_()
        [run] = await _runs(store)
        assert (run.outcome, run.tasks, run.finished_at) == ("succeeded", [first.task_id], T0 + 75)
        clock.now = T0 + 121
        await leader.pass_()
        runs = await _runs(store)
        assert [(r.tick, r.outcome) for r in runs] == [(T0 + 60, "succeeded"), (T0 + 120, "running")]
        tasks = await _tasks(store)
        assert tasks[1] == first, "the last run's finished task stays in its own slots, for its logs"
        assert tasks[1001].task_id != first.task_id and (await _job(store)).lane == 1, "a lane of its own"
        assert (await _job(store)).counted == []
    finally:
        leader.stop()


async def test_a_leader_killed_after_recording_the_tick_does_not_fire_it_twice(
    store: MemoryStore, clock: Clock
) -> None:
    leader = await _leader(store)

    def crash(point: str) -> None:
        if point == crashpoint.SCHEDULE_FIRED:
            raise Crash(point)

    leader.loop.jobs.schedules.crash_point = crash
    clock.now = T0 + 60.2
    try:
        with pytest.raises(Crash):
            await leader.pass_()
        assert await _tasks(store) == {}, "died after the record, before any task"
        assert len(await _runs(store)) == 1
    finally:
        leader.stop()
    clock.now = T0 + 65  # the next leader, a new epoch
    leader = await _leader(store)
    try:
        await leader.pass_()
        await leader.pass_()
        assert [(r.tick, r.outcome) for r in await _runs(store)] == [(T0 + 60, "running")]
        assert sorted(await _tasks(store)) == [1], "the run's task is placed once"
    finally:
        leader.stop()


async def test_a_leader_killed_before_recording_leaves_the_tick_to_the_next_one(clock: Clock) -> None:
    """Dead before the commit: nothing is stored, so the next leader fires the tick within
    the deadline, or records it missed past it, never both, never late."""
    for late, outcome in ((80.0, "running"), (100.0, "missed")):  # the tick T0+60, deadline 30 s
        store = await _store(_cron(starting_deadline="30s"))
        clock.now = T0 + late
        leader = await _leader(store)
        try:
            await leader.pass_()
            assert [(r.tick, r.outcome) for r in await _runs(store)] == [(T0 + 60, outcome)]
            assert len(await _tasks(store)) == (outcome == "running")
        finally:
            leader.stop()


async def test_a_deposed_leader_records_nothing(store: MemoryStore, clock: Clock) -> None:
    old = await _leader(store)
    new = await _leader(store)  # a new epoch: the old one's writes are fenced
    clock.now = T0 + 60.5
    try:
        with pytest.raises(Fenced):
            await old.pass_()
        assert await _runs(store) == []
        await new.pass_()
        assert len(await _runs(store)) == 1
    finally:
        old.stop()
        new.stop()


@pytest.mark.parametrize(
    ("policy", "outcomes"),
    [
        ("forbid", ["running", "skipped"]),
        ("replace", ["replaced", "running"]),
        ("allow", ["running", "running"]),
    ],
)
async def test_a_tick_while_the_run_goes(policy: str, outcomes: list[str], clock: Clock) -> None:
    store = await _store(_cron(concurrency=policy))
    leader = await _leader(store)
    try:
        clock.now = T0 + 61
        await leader.pass_()
        first = (await _tasks(store))[1]
        clock.now = T0 + 121
        await leader.pass_()
        assert [r.outcome for r in await _runs(store)] == outcomes
        tasks = await _tasks(store)
        if policy == "forbid":
            assert tasks == {1: first}, "skipped: the run goes on alone"
        elif policy == "allow":
            assert sorted(tasks) == [1, 1001] and tasks[1] == first, "both runs go, each in its lane"
        else:
            assert sorted(tasks) == [1001], "the replaced run's task is stopped; the new run has its lane"
    finally:
        leader.stop()


async def test_history_bounds_the_records_and_a_removed_jobs_runs_go(clock: Clock) -> None:
    store = await _store(_cron(history=2))
    leader = await _leader(store)
    try:
        for minute in range(1, 6):
            clock.now = T0 + 60 * minute + 1
            await leader.pass_()
            for task in (await _tasks(store)).values():
                await _finish(store, task)
            await leader.pass_()
        runs = await _runs(store)
        assert [(r.tick, r.outcome) for r in runs] == [(T0 + 240, "succeeded"), (T0 + 300, "succeeded")]
        await store.delete(KEYS.service("tick"))
        await leader.pass_()
        assert await _runs(store) == []
    finally:
        leader.stop()


async def test_a_run_that_ended_while_its_leader_died_gets_its_outcome_from_the_next(
    store: MemoryStore, clock: Clock
) -> None:
    leader = await _leader(store)
    clock.now = T0 + 61
    try:
        await leader.pass_()
        await _finish(store, (await _tasks(store))[1], code=3)

        async def died(*_: object) -> None:  # the job record ended; the run record not yet
            return None

        leader.loop.jobs.schedules.finish = died  # type: ignore[method-assign]
        await leader.pass_()
        assert (await _job(store)).state == "failed"
        assert [r.outcome for r in await _runs(store)] == ["running"]
    finally:
        leader.stop()
    leader = await _leader(store)
    try:
        await leader.pass_()
        [run] = await _runs(store)
        assert run.outcome == "failed" and run.tasks
    finally:
        leader.stop()


async def test_a_run_in_a_reused_lane_after_completions_were_lowered_unassigns_the_slots_above(
    clock: Clock,
) -> None:
    narrow = _cron(history=2)  # the third run prunes the first and takes its lane (the lowest free)
    wide = respec(narrow, job={"completions": 3, "parallelism": 3})
    store = await _store(wide)
    leader = await _leader(store)
    try:
        clock.now = T0 + 61
        await leader.pass_()
        first = await _tasks(store)
        assert sorted(first) == [1, 2, 3]
        for task in first.values():
            await _finish(store, task)
        await leader.pass_()
        await store.put(KEYS.service("tick"), replace(narrow, version=2, updated_at=T0 + 62).to_json())
        clock.now = T0 + 121
        await leader.pass_()
        assert sorted(await _tasks(store)) == [1, 2, 3, 1001], "the first run's containers are kept"
        await _finish(store, (await _tasks(store))[1001])
        await leader.pass_()
        clock.now = T0 + 181
        await leader.pass_()
        tasks = await _tasks(store)
        assert sorted(tasks) == [1, 1001], "lane 0 reused: its slots 2 and 3 are unassigned"
        assert tasks[1].task_id != first[1].task_id
        held = {t.task_id for t in first.values()}
        assert set((await _job(store)).counted) == held, "the pruned run's tasks: no outcome of this one"
        runs = [(r.tick, r.outcome, r.lane) for r in await _runs(store)]
        assert runs == [(T0 + 120, "succeeded", 1), (T0 + 180, "running", 0)]
    finally:
        leader.stop()


async def test_runs_of_a_namesake_or_of_a_removed_schedule_are_deleted(
    store: MemoryStore, clock: Clock
) -> None:
    leader = await _leader(store)
    try:
        clock.now = T0 + 61
        await leader.pass_()
        assert len(await _runs(store)) == 1
        await store.put(KEYS.service("tick"), replace(_cron(), uid="u2", updated_at=T0 + 100).to_json())
        await leader.pass_()
        assert await _runs(store) == [], "u1's runs are not u2's"
        clock.now = T0 + 121
        await leader.pass_()
        assert [r.uid for r in await _runs(store)] == ["u2"]
        plain = make_service("tick", kind="job")
        await store.put(KEYS.service("tick"), replace(plain, uid="u2", version=2).to_json())
        await leader.pass_()
        assert await _runs(store) == []
    finally:
        leader.stop()


NEVER = {"cron": "* 2 25-31 3 */7", "timezone": "Europe/Berlin"}  # only in the spring-forward gap


async def test_a_stored_cron_that_never_fires_is_said_once_and_the_leader_goes_on(clock: Clock) -> None:
    """It passed the model's checks (stored before the API asked for a tick ahead). Once it
    raised out of the pass: the leader loop died, the next leader too, and nothing was
    reconciled anywhere. Now an event says so and other services are placed."""
    store = await _store(_cron(**NEVER))
    await store.put(KEYS.service("web"), make_service("web", replicas=2).to_json())
    leader = await _leader(store)
    emitted: list[tuple[str, str]] = []
    runner = leader.loop.jobs.schedules
    runner.events.emit = lambda kind, message, *_, **__: emitted.append((kind, message))  # type: ignore[method-assign]
    try:
        await leader.pass_()
        await leader.pass_()
        kvs, _ = await store.range(KEYS.tasks)
        assert sorted(Assignment.from_json(kv.value).service for kv in kvs) == ["web", "web"]
        stuck = [m for kind, m in emitted if kind == "schedule.stuck"]
        assert len(stuck) == 1 and "tick: schedule not run" in stuck[0], emitted
        await store.delete(KEYS.service("tick"))
        await leader.pass_()
        assert runner.stuck == {}, "a removed job's message is not kept"
    finally:
        leader.stop()


def test_the_api_refuses_a_cron_that_would_never_run() -> None:
    from node.api.services import ServiceWriter
    from node.model.errors import InvalidArgument

    async def apply() -> None:
        w = ServiceWriter(MemoryStore(), KEYS, "n1")
        text = (
            "name: tick\nimage: x:1\nkind: job\n"
            f"schedule: {{cron: '{NEVER['cron']}', timezone: {NEVER['timezone']}}}\n"
        )
        with pytest.raises(InvalidArgument, match=r"schedule.cron: .* no tick .* would never run"):
            await w.apply(text, "tick.yaml")

    asyncio.run(apply())


async def test_an_apply_of_something_else_just_after_a_tick_does_not_lose_that_tick(
    store: MemoryStore, clock: Clock
) -> None:
    """The tick at T+120 had not fired yet when a new image was applied at T+120.4: ticks
    counted from the latest version's apply, so T+120 was neither run nor recorded as
    missed. The last tick recorded under the same schedule counts instead; a changed
    schedule still starts at its apply."""
    leader = await _leader(store)
    try:
        clock.now = T0 + 60.5
        await leader.pass_()
        [run] = await _runs(store)
        assert run.schedule == "* * * * * UTC"
        clock.now = T0 + 75
        await _finish(store, (await _tasks(store))[1])
        await leader.pass_()
        clock.now = T0 + 120.5
        kv = await store.get(KEYS.service("tick"))
        assert kv is not None
        service = ServiceRecord.from_json(kv.value)
        newer = replace(
            service, version=2, updated_at=T0 + 120.4, spec=service.spec.model_copy(update={"image": "x:2"})
        )
        await store.put(KEYS.service("tick"), newer.to_json())
        await leader.pass_()
        ticks = sorted((r.tick, r.outcome) for r in await _runs(store))
        assert ticks == [(T0 + 60, "succeeded"), (T0 + 120, "running")]
        changed = newer.spec.schedule.model_copy(update={"cron": "*/2 * * * *"})  # type: ignore[union-attr]
        clock.now = T0 + 180.5
        again = replace(
            newer, version=3, updated_at=T0 + 180.4, spec=newer.spec.model_copy(update={"schedule": changed})
        )
        await store.put(KEYS.service("tick"), again.to_json())
        await leader.pass_()
        assert len(await _runs(store)) == 2, "a changed schedule starts at its apply (next tick T+240)"
    finally:
        leader.stop()


async def _raw_tasks(store: MemoryStore) -> dict[str, bytes]:
    kvs, _ = await store.range(KEYS.tasks)
    return {kv.key: kv.value for kv in kvs}


@pytest.mark.parametrize(
    ("where", "bad"),
    [
        ("run", b"not json"),
        ("run", b'{"service": "tick", "uid": "u1", "tick": "soon"}'),  # int("soon") in every pass
        ("jobrun", b"not json"),
        ("jobrun-key", JobRecord("tick", "u1#1").to_json()),  # a tick that is no number
        ("job", b"not json"),  # `jobs/tick`, read by the schedule too
    ],
    ids=["run-not-json", "run-tick", "jobrun-not-json", "jobrun-key", "job-not-json"],
)
async def test_a_run_record_that_cannot_be_read_leaves_that_job_alone_and_the_others_go_on(
    where: str, bad: bytes, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A `runs/`, `jobruns/` or `jobs/` record of a scheduled job written around the leader
    failed every pass (nothing at all was reconciled). Now that job is left alone (no tick
    decided, no task started or stopped, nothing deleted), logged once, and the others go on."""
    store = await _store(_cron(concurrency="allow"))
    leader = await _leader(store)
    try:
        clock.now = T0 + 61
        await leader.pass_()
        clock.now = T0 + 121
        await leader.pass_()  # a second run: the first one's job record moves to `jobruns/`
        key = {
            "run": KEYS.run("tick", T0 + 60),
            "jobrun": KEYS.jobrun("tick", T0 + 60),
            "jobrun-key": KEYS.jobruns + "tick/abc",
            "job": KEYS.job("tick"),
        }[where]
        await store.put(key, bad)
        before = await _raw_tasks(store)
        assert sorted(before) == [KEYS.task("tick", 1), KEYS.task("tick", 1001)]
        await _finish(store, Assignment.from_json(before[KEYS.task("tick", 1)]))
        await store.put(KEYS.service("web"), make_service("web", replicas=2).to_json())
        records = {p: (await store.range(p))[0] for p in (KEYS.runs, KEYS.jobruns, KEYS.jobs)}
        caplog.clear()
        for minute in (3, 4):  # ticks go by: none of them is decided
            clock.now = T0 + 60 * minute + 1
            await leader.pass_()
        tasks = await _raw_tasks(store)
        assert {k: v for k, v in tasks.items() if "/tick/" in k} == before, "left as it was"
        assert sorted(k for k in tasks if "/web/" in k) == [KEYS.task("web", 1), KEYS.task("web", 2)]
        assert {p: (await store.range(p))[0] for p in records} == records, "nothing written or deleted"
        assert "tick" in leader.loop.unreadable
        said = [r for r in caplog.records if "cannot be read" in r.getMessage()]
        assert len(said) == 1, said
        await store.delete(key)  # fixed: the schedule goes on
        await leader.pass_()
        assert "tick" not in leader.loop.unreadable
        assert leader.loop.jobs.schedules._said == {}, "forgotten once its key is gone"
    finally:
        leader.stop()


async def test_finish_leaves_a_run_record_that_cannot_be_read_as_it_is(store: MemoryStore) -> None:
    leader = await _leader(store)
    try:
        service = _cron()
        await store.put(KEYS.run("tick", T0 + 60), b"not json")
        job = JobRecord("tick", f"u1#{int(T0 + 60)}", state="succeeded", finished_at=T0 + 70)
        await leader.loop.jobs.schedules.finish(service, job)
        kv = await store.get(KEYS.run("tick", T0 + 60))
        assert kv is not None and kv.value == b"not json"
    finally:
        leader.stop()
