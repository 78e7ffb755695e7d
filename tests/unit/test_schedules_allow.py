"""`concurrency: allow` and per-run lanes (decision 69): the pure parts (`decide` under
allow and its cap, `lane`, `prune`, `slot`), then through the leader's pass on a
MemoryStore: overlapping runs each counted once with their own outcome, the cap skips a
tick, a leader killed after recording a tick while another run goes fires it once, and
history bounds the kept containers."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import UTC, datetime

import pytest

from leader import crashpoint
from leader.schedules import MAX_OVERLAP, Action, decide, lane, overlap_cap, prune
from node.model.keys import Keys
from node.model.runs import LANE, lane_of, slot
from node.model.spec import SpecError, parse_spec
from node.model.spec_schedule import ScheduleSpec
from tests.factories import respec
from tests.unit.test_schedules_leader import (
    T0,
    Clock,
    Crash,
    _cron,
    _finish,
    _job,
    _leader,
    _runs,
    _store,
    _tasks,
    clock,
)

KEYS = Keys()
__all__ = ["clock"]  # the fixture, imported


def _at(hms: str) -> float:
    return datetime.fromisoformat(f"2026-03-02T{hms}").replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("history", "running", "action"),
    [
        (None, 0, Action.FIRE),
        (None, 1, Action.FIRE),
        (None, MAX_OVERLAP - 1, Action.FIRE),
        (None, MAX_OVERLAP, Action.SKIP),
        (3, 2, Action.FIRE),
        (3, 3, Action.SKIP),
        (1, 1, Action.SKIP),
    ],
)
def test_allow_fires_alongside_running_runs_up_to_its_cap(
    history: int | None, running: int, action: Action
) -> None:
    schedule = ScheduleSpec(cron="*/5 * * * *", concurrency="allow", history=history)
    d = decide(schedule, _at("10:00:00"), running, _at("10:05:01"))
    assert (d.action, d.due) == (action, _at("10:05:00"))
    assert overlap_cap(schedule) == min(MAX_OVERLAP, schedule.keep)


def test_a_new_run_takes_the_lowest_lane_no_kept_record_holds() -> None:
    assert lane(set(), 10) == 0
    assert lane({0, 1, 3}, 10) == 2
    assert lane({0}, 1) == 1, "history 1: the kept run and the new one"
    assert lane({0, 1}, 1) is None
    assert lane({5, 7}, 2) == 0, "lanes of a longer history before it was lowered"


def test_prune_keeps_history_never_the_current_run_nor_one_still_going() -> None:
    records = [(100.0, True), (200.0, False), (300.0, True), (400.0, True)]
    assert prune(records, 400.0, 1, 3) == [100.0, 300.0]
    assert prune(records, 400.0, 1, 1) == [100.0, 300.0], "200 still goes, 400 is current"
    assert prune(records, 400.0, 0, 4) == []
    assert prune([], None, 1, 1) == []


def test_lanes_are_disjoint_slot_ranges_and_lane_0_is_the_plain_slots() -> None:
    assert [slot(0, i) for i in (1, LANE)] == [1, LANE]
    assert slot(3, 1) == 3 * LANE + 1
    assert [lane_of(s) for s in (1, LANE, LANE + 1, 2 * LANE, 2 * LANE + 1)] == [0, 0, 1, 1, 2]


async def test_overlapping_runs_go_at_once_and_each_is_counted_once(clock: Clock) -> None:
    store = await _store(_cron(concurrency="allow"))
    leader = await _leader(store)
    try:
        for minute in (1, 2, 3):
            clock.now = T0 + 60 * minute + 1
            await leader.pass_()
        runs = await _runs(store)
        assert [(r.outcome, r.lane) for r in runs] == [("running", 0), ("running", 1), ("running", 2)]
        tasks = await _tasks(store)
        assert sorted(tasks) == [1, LANE + 1, 2 * LANE + 1], "three runs at once, each in its lane"
        await _finish(store, tasks[LANE + 1], code=3)  # the middle run fails first
        await leader.pass_()
        await _finish(store, tasks[1])
        await leader.pass_()
        await leader.pass_()
        runs = await _runs(store)
        assert [r.outcome for r in runs] == ["succeeded", "failed", "running"]
        assert [r.tasks for r in runs[:2]] == [[tasks[1].task_id], [tasks[LANE + 1].task_id]]
        assert sorted(await _tasks(store)) == [1, LANE + 1, 2 * LANE + 1], "ended runs keep their containers"
        assert (await _job(store)).lane == 2 and (await _job(store)).state == "running"
        kvs, _ = await store.range(KEYS.jobruns)
        assert len(kvs) == 2, "the earlier runs' job records"
        await _finish(store, tasks[2 * LANE + 1])
        await leader.pass_()
        assert [r.outcome for r in await _runs(store)] == ["succeeded", "failed", "succeeded"]
        assert len(await _tasks(store)) == 3, "an outcome does not start the run again"
    finally:
        leader.stop()


async def test_the_cap_skips_a_tick_while_history_runs_go(clock: Clock) -> None:
    store = await _store(_cron(concurrency="allow", history=2))
    leader = await _leader(store)
    try:
        for minute in (1, 2, 3):
            clock.now = T0 + 60 * minute + 1
            await leader.pass_()
        runs = await _runs(store)
        assert [r.outcome for r in runs] == ["running", "running", "skipped"]
        assert "2 run(s) still going (concurrency: allow, at most 2)" in runs[2].message
        assert len(await _tasks(store)) == 2
    finally:
        leader.stop()


async def test_history_keeps_the_last_runs_containers_and_unassigns_the_pruned(clock: Clock) -> None:
    store = await _store(_cron(concurrency="allow", history=3))
    leader = await _leader(store)
    seen: list[str] = []
    try:
        for minute in range(1, 7):
            clock.now = T0 + 60 * minute + 1
            await leader.pass_()
            for task in (await _tasks(store)).values():
                if task.task_id not in seen:
                    seen.append(task.task_id)
                    await _finish(store, task)
            await leader.pass_()
        runs = await _runs(store)
        assert [(r.tick, r.outcome) for r in runs] == [(T0 + 60 * m, "succeeded") for m in (4, 5, 6)]
        left = {t.task_id for t in (await _tasks(store)).values()}
        assert left == {r.tasks[0] for r in runs} == set(seen[-3:]), "the last 3 runs' containers, no more"
        kvs, _ = await store.range(KEYS.jobruns)
        assert len(kvs) == 2, "pruned with their run records"
        await store.delete(KEYS.service("tick"))
        await leader.pass_()
        assert await _runs(store) == [] and (await store.range(KEYS.jobruns))[0] == []
    finally:
        leader.stop()


async def test_a_leader_killed_after_recording_a_tick_while_a_run_goes_fires_it_once(clock: Clock) -> None:
    store = await _store(_cron(concurrency="allow"))
    leader = await _leader(store)
    clock.now = T0 + 61
    try:
        await leader.pass_()

        def crash(point: str) -> None:
            if point == crashpoint.SCHEDULE_FIRED:
                raise Crash(point)

        leader.loop.jobs.schedules.crash_point = crash
        clock.now = T0 + 120.3
        with pytest.raises(Crash):
            await leader.pass_()
        assert sorted(await _tasks(store)) == [1], "died after the record, before the tick's task"
    finally:
        leader.stop()
    clock.now = T0 + 122
    leader = await _leader(store)
    try:
        await leader.pass_()
        await leader.pass_()
        runs = await _runs(store)
        assert [(r.tick, r.outcome, r.lane) for r in runs] == [
            (T0 + 60, "running", 0),
            (T0 + 120, "running", 1),
        ]
        assert sorted(await _tasks(store)) == [1, LANE + 1], "each run's task placed once"
    finally:
        leader.stop()


async def test_a_run_whose_outcome_a_dead_leader_did_not_write_gets_it_from_the_next(clock: Clock) -> None:
    store = await _store(_cron(concurrency="allow"))
    leader = await _leader(store)
    try:
        clock.now = T0 + 61
        await leader.pass_()
        clock.now = T0 + 121
        await leader.pass_()
        first = (await _tasks(store))[1]
        await _finish(store, first)

        async def lost(*_: object) -> None:  # died between the job record and the run record
            return None

        leader.loop.jobs.schedules.finish = lost  # type: ignore[method-assign]
        await leader.pass_()
        assert [r.outcome for r in await _runs(store)] == ["running", "running"]
    finally:
        leader.stop()
    leader = await _leader(store)
    try:
        await leader.pass_()
        runs = await _runs(store)
        assert [(r.outcome, r.tasks) for r in runs] == [("succeeded", [first.task_id]), ("running", [])]
    finally:
        leader.stop()


def test_allow_is_refused_for_a_job_with_volumes_whose_slots_are_kept() -> None:
    body = (
        "name: nightly\nimage: app\nkind: job\nvolumes: [{name: data, target: /data}]\n"
        "schedule: {cron: '@daily', concurrency: allow}\n"
    )
    with pytest.raises(SpecError) as err:
        parse_spec(body)
    assert "schedule.concurrency" in str(err.value) and "volumes" in str(err.value)
    assert parse_spec(body.replace("allow", "forbid")).schedule is not None


async def test_a_job_with_volumes_runs_every_run_in_lane_0(clock: Clock) -> None:
    store = await _store(respec(_cron(concurrency="replace"), volumes=[{"name": "data", "target": "/data"}]))
    leader = await _leader(store)
    try:
        clock.now = T0 + 61
        await leader.pass_()
        first = (await _tasks(store))[1]
        clock.now = T0 + 121
        await leader.pass_()
        assert sorted(await _tasks(store)) == [1], "no other slot: the slot's volume is every run's"
        assert [(r.outcome, r.lane) for r in await _runs(store)] == [("replaced", 0), ("running", 0)]
        assert (await _job(store)).counted == [first.task_id]
        assert (await store.range(KEYS.jobruns))[0] == [], "no earlier run is stepped on the shared slots"
    finally:
        leader.stop()


async def test_a_lowered_history_unassigns_the_pruned_runs_containers(clock: Clock) -> None:
    service = _cron(concurrency="allow", history=3)
    store = await _store(service)
    leader = await _leader(store)
    try:
        for minute in (1, 2, 3):
            clock.now = T0 + 60 * minute + 1
            await leader.pass_()
        for task in (await _tasks(store)).values():
            await _finish(store, task)
        await leader.pass_()
        assert sorted(await _tasks(store)) == [1, LANE + 1, 2 * LANE + 1]
        lowered = respec(service, schedule={"cron": "* * * * *", "concurrency": "allow", "history": 1})
        await store.put(KEYS.service("tick"), replace(lowered, version=2, updated_at=T0 + 185).to_json())
        clock.now = T0 + 190
        await leader.pass_()
        assert [r.tick for r in await _runs(store)] == [T0 + 180], "the latest run's record only"
        assert sorted(await _tasks(store)) == [2 * LANE + 1], "the pruned runs' containers go with them"
        assert (await store.range(KEYS.jobruns))[0] == []
    finally:
        leader.stop()


async def test_a_handoff_release_is_written_at_the_tasks_real_slot(clock: Clock) -> None:
    """A later run's task (slot 1001, view slot 1 of the job) whose handoff ends: it is
    written back at 1001, and the earlier run's task in slot 1 stays (`leader.loop`)."""
    store = await _store(_cron(concurrency="allow"))
    leader = await _leader(store)
    try:
        clock.now = T0 + 61
        await leader.pass_()
        first = (await _tasks(store))[1]
        await _finish(store, first)
        await leader.pass_()
        clock.now = T0 + 121
        await leader.pass_()
        second = (await _tasks(store))[LANE + 1]
        gone = asdict(replace(second, task_id="0123456789ab", node="n9"))  # its old node is not alive
        await store.put(KEYS.task("tick", LANE + 1), replace(second, handoff=gone).to_json())
        await leader.pass_()
        tasks = await _tasks(store)
        assert tasks[1] == first, "the earlier run's task is where it was"
        assert tasks[LANE + 1].task_id == second.task_id and tasks[LANE + 1].handoff == {}
    finally:
        leader.stop()
