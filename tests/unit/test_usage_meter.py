"""The node's meter and the leader's roll-up on the in-memory store: crash paths
(decision 67): a meter that dies before or after its write, a write whose answer was
lost, a roll-up that dies before its transaction, a deposed leader, a raw key rewritten
while the leader rolls it up."""

from __future__ import annotations

import asyncio
import contextlib
import math

import pytest

from leader.usage_rollup import Rollup
from node.api.usage_report import usage_report
from node.daemon.usage_meter import Seen, UsageMeter, engine_time
from node.model.domain import NodeInfo, ServiceRecord
from node.model.keys import Keys
from node.model.usage_ledger import DAY, GIB, Record, UsageKeys
from node.pb import api_pb2
from node.runtime.base import LABELS
from node.store import Fenced, StoreError
from node.store.memory import MemoryStore
from tests.helpers import wait_until

T0 = 1_800_000_000 - 1_800_000_000 % DAY
KEYS = Keys("/t/")
UK = UsageKeys(KEYS.prefix)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Eyes:
    """The engine as the meter sees it: containers and their cgroup readings."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.cpu: dict[str, float] = {}

    def run(self, cid: str, task: str, started: float) -> None:
        labels = {LABELS.SERVICE: "web", LABELS.TASK: task, LABELS.VERSION: "1"}
        self.seen.append(Seen(cid, labels, True, started, 0.0))

    def look(self) -> list[Seen]:
        return list(self.seen)

    def reading(self, cid: str) -> tuple[float, int]:
        return self.cpu.get(cid, 0.0), 32 * 2**20


async def setup(store: MemoryStore) -> None:
    spec = {"name": "web", "image": "x", "replicas": 2, "resources": {"cpu": 0.5, "memory": "64Mi"}}
    record = ServiceRecord(name="web", version=1, spec=spec)  # type: ignore[arg-type]
    await store.put(KEYS.history_version("web", 1), record.to_json())
    info = NodeInfo(
        id="n1", address="127.0.0.1", grpc_port=1, labels={"shoal.pool": "burst"}, cpu=2.0, memory=4 * GIB
    )
    await store.put(KEYS.node("n1"), info.to_json())


async def raw_records(store: MemoryStore) -> list[Record]:
    kvs, _ = await store.range(UK.raw)
    return [Record.from_json(kv.value) for kv in kvs]


def reserved(records: list[Record]) -> float:
    return sum(r.tally.reserved_vcpu_s for r in records)


async def test_meter_counts_each_interval_once_across_a_crash() -> None:
    store, clock, eyes = MemoryStore(), Clock(T0 + 0.5), Eyes()
    await setup(store)
    eyes.run("c1", "t1", T0 + 0.0)
    eyes.run("c2", "t2", T0 + 0.0)
    meter = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await meter.close_due()  # nothing over yet: loads the cursor (none)
    clock.now = T0 + 10.5
    assert await meter.close_due() == 3 * 5  # 5 intervals x (2 tasks + the node)
    assert reserved(await raw_records(store)) == pytest.approx(2 * 0.5 * 10)
    # the daemon dies (kill -9) and comes back 10 s later: the containers ran on
    clock.now = T0 + 20.5
    again = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await again.close_due()
    records = await raw_records(store)
    assert reserved(records) == pytest.approx(2 * 0.5 * 20)  # the 10 s away counted, nothing twice
    assert sum(r.tally.reserved_gib_s for r in records) == pytest.approx(2 * 20 / 16)
    node = [r for r in records if r.task == "_node"]
    assert sum(r.tally.node_s for r in node) == pytest.approx(
        9.5
    )  # metered time only: from T0 + 0.5 to T0 + 10
    assert node[0].dims.labels == (("shoal.pool", "burst"),)


async def test_a_crash_between_batches_rewrites_and_a_lost_answer_is_found_out() -> None:
    store, clock, eyes = MemoryStore(), Clock(T0 + 0.5), Eyes()
    await setup(store)
    for i in range(120):  # more records than one transaction takes
        eyes.run(f"c{i}", f"t{i}", T0)
    meter = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await meter.close_due()
    clock.now = T0 + 2.5
    real_txn = store.txn
    calls = 0

    async def dies_at_cursor(compares, ops, else_ops=()):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if any(getattr(op, "key", "") == UK.cursor("n1") for op in ops):
            raise StoreError("etcd went away")  # the first batch is in, the cursor write is not
        return await real_txn(compares, ops, else_ops)

    store.txn = dies_at_cursor  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        await meter.close_due()
    assert calls == 2
    store.txn = real_txn  # type: ignore[method-assign]
    await meter.close_due()  # the same interval again: the first batch rewritten, not added
    assert reserved(await raw_records(store)) == pytest.approx(120 * 0.5 * 2)

    # a write that succeeded but whose answer was lost: the retry's compare fails
    clock.now = T0 + 4.5

    async def lost_answer(compares, ops, else_ops=()):  # type: ignore[no-untyped-def]
        result = await real_txn(compares, ops, else_ops)
        if any(getattr(op, "key", "") == UK.cursor("n1") for op in ops):
            raise StoreError("deadline exceeded")
        return result

    store.txn = lost_answer  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        await meter.close_due()
    store.txn = real_txn  # type: ignore[method-assign]
    meter.state.end -= 2  # type: ignore[union-attr]  # the meter believes nothing moved
    taken = (await store.range(UK.raw))[0][:50]
    rolled, gone = [kv.key for kv in taken], reserved([Record.from_json(kv.value) for kv in taken])
    for key in rolled:  # meanwhile the leader rolled those up and deleted them
        await store.delete(key)
    with pytest.raises(StoreError, match="cursor of n1 moved"):
        await meter.close_due()
    # the head batches are compared on the cursor too: nothing put back to be counted twice
    assert [key for key in rolled if await store.get(key) is not None] == []
    await meter.close_due()  # resumes from the cursor: nothing to do until the next interval
    assert reserved(await raw_records(store)) == pytest.approx(120 * 0.5 * 4 - gone)


async def fenced_rollup(store: MemoryStore, clock: Clock) -> Rollup:
    await store.put(KEYS.leader, b"n1")
    leader = await store.get(KEYS.leader)
    assert leader is not None
    return Rollup(store, KEYS, leader.create_revision, 60.0, 400, wall=clock)


async def test_rollup_keeps_totals_and_deletes_raw_in_one_step() -> None:
    store, clock, eyes = MemoryStore(), Clock(T0 + 0.5), Eyes()
    await setup(store)
    eyes.run("c1", "t1", T0)
    eyes.cpu["c1"] = 3.0
    meter = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await meter.close_due()
    clock.now = T0 + 100.5
    await meter.close_due()
    request = api_pb2.UsageReportRequest(since=0, until=T0 + DAY, by="service")
    before = await usage_report(store, KEYS, request)
    rollup = await fenced_rollup(store, clock)
    assert await rollup.roll() == 2 * 20  # task and node records of the 20 intervals over for 60 s
    clock.now = T0 + 200
    assert await rollup.roll() == 2 * 30  # the other 30
    assert await raw_records(store) == []
    after = await usage_report(store, KEYS, request)
    assert after.rows == before.rows
    assert after.rows[0].vcpu_hours_reserved == pytest.approx(0.5 * 100 / 3600)
    assert after.rows[0].vcpu_hours_used == pytest.approx(3.0 / 3600)
    assert (after.interval_records, after.day_records) == (0, 2)
    assert await rollup.roll() == 0  # again: nothing twice


async def test_rollup_of_a_deposed_leader_or_a_rewritten_key_changes_nothing() -> None:
    store, clock, eyes = MemoryStore(), Clock(T0 + 0.5), Eyes()
    await setup(store)
    eyes.run("c1", "t1", T0)
    meter = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await meter.close_due()
    clock.now = T0 + 10.5
    await meter.close_due()
    clock.now = T0 + 200
    rollup = await fenced_rollup(store, clock)
    # a raw key rewritten between the roll-up's read and its transaction: that group waits
    real_get = store.get
    target = UK.raw_key(T0, "n1", "t1")

    async def rewrite_first(key: str):  # type: ignore[no-untyped-def]
        if key.startswith(UK.days):
            kv = await real_get(target)
            if kv is not None:
                await store.put(target, kv.value)
        return await real_get(key)

    store.get = rewrite_first  # type: ignore[method-assign]
    rolled = await rollup.roll()
    store.get = real_get  # type: ignore[method-assign]
    assert rolled == 5  # the node's records; the task's group was left for the next pass
    assert len(await raw_records(store)) == 5
    assert await rollup.roll() == 5
    # another leader now: this one's writes are refused
    await store.delete(KEYS.leader)
    await store.put(KEYS.leader, b"n2")
    clock.now = T0 + 300.5
    await meter.close_due()
    with pytest.raises(Fenced):
        await rollup.roll()
    total = await usage_report(store, KEYS, api_pb2.UsageReportRequest(by="service", until=T0 + DAY))
    assert total.rows[0].vcpu_hours_reserved == pytest.approx(0.5 * 300 / 3600)


async def test_day_totals_are_kept_for_keep_days_only() -> None:
    store, clock = MemoryStore(), Clock(T0 + 0.5)
    rollup = await fenced_rollup(store, clock)
    for day in range(5):
        await store.put(UK.day_at(T0 - day * DAY) + "x", b"{}")
    rollup.keep_days = 2
    assert await rollup.expire() == 2
    kvs, _ = await store.range(UK.days)
    assert len(kvs) == 3


def test_engine_times() -> None:
    assert engine_time("0001-01-01T00:00:00Z") == 0.0
    assert engine_time("2026-12-06T03:47:12.5Z") == pytest.approx(1796528832.5)
    assert math.isclose(engine_time("2026-12-06T03:47:12.123456789Z") % 1, 0.123456789, abs_tol=1e-6)


async def test_meter_loop_survives_errors() -> None:
    store, eyes = MemoryStore(), Eyes()

    def broken() -> list[Seen]:
        raise OSError("engine away")

    eyes.look = broken  # type: ignore[method-assign]
    meter = UsageMeter(store, KEYS, "n1", eyes, 1)
    task = asyncio.create_task(meter.run())
    await wait_until(lambda: meter.last_error, 5, message="the meter noted the engine's error")
    assert "engine away" in meter.last_error and not task.done()
    task.cancel()


async def test_rollup_never_takes_keys_a_node_may_still_rewrite() -> None:
    """Raw keys at or after a node's cursor (a batch written before a failed cursor
    write) stay raw: rolled and then rewritten they would count twice."""
    store, clock, eyes = MemoryStore(), Clock(T0 + 0.5), Eyes()
    await setup(store)
    eyes.run("c1", "t1", T0)
    meter = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await meter.close_due()
    clock.now = T0 + 4.5
    await meter.close_due()  # cursor at T0 + 4
    late = Record.from_json((await store.get(UK.raw_key(T0, "n1", "t1"))).value)  # type: ignore[union-attr]
    ahead = Record(late.dims, T0 + 4, T0 + 6, late.tally, "t1")
    await store.put(UK.raw_key(T0 + 4, "n1", "t1"), ahead.to_json())  # a batch ahead of the cursor
    clock.now = T0 + 500
    rollup = await fenced_rollup(store, clock)
    assert await rollup.roll() == 4  # 2 intervals x (task, node)
    assert [r.start for r in await raw_records(store)] == [T0 + 4]


async def test_a_report_during_a_roll_up_counts_each_interval_once() -> None:
    """The report read the raw records, then the day totals: a roll-up committed between
    the two reads (raw keys moved into a day total in one transaction) was counted twice."""
    store, clock, eyes = MemoryStore(), Clock(T0 + 0.5), Eyes()
    await setup(store)
    eyes.run("c1", "t1", T0)
    meter = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await meter.close_due()
    clock.now = T0 + 100.5
    await meter.close_due()
    clock.now = T0 + 200
    rollup = await fenced_rollup(store, clock)
    request = api_pb2.UsageReportRequest(since=0, until=T0 + DAY, by="service")
    real_range, rolled = store.range, []

    async def roll_after_first_read(prefix: str):  # type: ignore[no-untyped-def]
        answer = await real_range(prefix)
        if prefix.startswith(f"{KEYS.prefix}usage/") and not rolled:
            store.range = real_range  # type: ignore[method-assign]
            rolled.append(await rollup.roll())  # the leader's pass lands between two reads
            store.range = roll_after_first_read  # type: ignore[method-assign]
        return answer

    store.range = roll_after_first_read  # type: ignore[method-assign]
    report = await usage_report(store, KEYS, request)
    store.range = real_range  # type: ignore[method-assign]
    assert rolled == [2 * 50]
    assert report.rows[0].vcpu_hours_reserved == pytest.approx(0.5 * 100 / 3600)
    after = await usage_report(store, KEYS, request)
    assert after.rows == report.rows


async def test_a_reading_missed_after_a_restart_does_not_count_the_cpu_again() -> None:
    """The engine did not answer the first reading after a daemon restart: the span had a
    counter of 0, taken as "went back" (a new container), and the next reading's whole
    counter, since the container started, was counted again."""
    store, clock, eyes = MemoryStore(), Clock(T0 + 0.5), Eyes()
    await setup(store)
    eyes.run("c1", "t1", T0)
    eyes.cpu["c1"] = 3.0
    meter = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await meter.close_due()
    clock.now = T0 + 2.5
    await meter.close_due()  # 3.0 s used by T0 + 2, in the cursor
    clock.now = T0 + 4.5  # the daemon restarts; the engine is slow to its first stats call
    again, real_reading = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock), eyes.reading

    def slow(cid: str) -> tuple[float, int]:
        raise TimeoutError("engine slow")

    eyes.reading = slow  # type: ignore[method-assign]
    await again.close_due()
    eyes.reading = real_reading  # type: ignore[method-assign]
    eyes.cpu["c1"] = 5.0
    clock.now = T0 + 6.5
    await again.close_due()
    used = sum(r.tally.used_cpu_s for r in await raw_records(store))
    assert used == pytest.approx(5.0)  # the counter's growth, once (was 8.0)


async def test_an_unreadable_day_total_or_raw_record_is_skipped_and_the_pass_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One unreadable `usage/day/` record stopped every pass (its group's chunk raised, so
    every group after it and the expiry waited forever); a raw record of the wrong shape
    did too. Now its group stays raw (counted once, by the report) and the rest is rolled."""
    store, clock, eyes = MemoryStore(), Clock(T0 + 0.5), Eyes()
    await setup(store)
    eyes.run("c1", "t1", T0)
    meter = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await meter.close_due()
    clock.now = T0 + 10.5
    await meter.close_due()
    task = next(r for r in await raw_records(store) if r.task == "t1")
    await store.put(UK.day_key(T0, task.dims), b"{not json")  # a hand edit, a newer format
    await store.put(
        UK.raw_key(T0, "n1", "zz"), b'{"dims": {"node": "n1"}, "start": 1, "end": 2, "tally": []}'
    )
    await store.put(UK.day_at(T0 - 500 * DAY) + "old", b"{}")  # past keep_days: expired all the same
    request = api_pb2.UsageReportRequest(since=0, until=T0 + DAY, by="service")
    before = await usage_report(store, KEYS, request)
    clock.now = T0 + 200
    rollup = await fenced_rollup(store, clock)
    with caplog.at_level("WARNING", logger="leader.usage_rollup"):
        assert await rollup.roll() == 5  # the node's own 5 records; the task's 5 stay raw
        assert await rollup.roll() == 0
        assert await rollup.expire() == 1
    warned = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warned) == 1 and UK.day_key(T0, task.dims) in warned[0]
    assert sorted(r.task for r in await raw_records_readable(store)) == ["t1"] * 5
    after = await usage_report(store, KEYS, request)
    assert after.rows == before.rows  # nothing counted twice, nothing lost
    assert after.rows[0].vcpu_hours_reserved == pytest.approx(0.5 * 10 / 3600)


async def raw_records_readable(store: MemoryStore) -> list[Record]:
    kvs, _ = await store.range(UK.raw)
    out = []
    for kv in kvs:
        with contextlib.suppress(ValueError):
            out.append(Record.from_json(kv.value))
    return out


async def test_the_cursor_of_a_node_gone_for_good_is_deleted_once_its_usage_is_rolled_up() -> None:
    """`usage/cursor/<node>` was never deleted: one key per node a pool ever started. It goes
    once the node is unregistered, idle for forget_after and rolled up; a crash between the
    roll-up and the delete leaves it for the next pass, and a node back later is metered
    from its return: nothing counted twice, nothing lost."""
    store, clock, eyes = MemoryStore(), Clock(T0 + 0.5), Eyes()
    await setup(store)
    eyes.run("c1", "t1", T0)
    meter = UsageMeter(store, KEYS, "n1", eyes, 2, wall=clock)
    await meter.close_due()
    clock.now = T0 + 10.5
    await meter.close_due()  # cursor at T0 + 10
    await store.put(UK.cursor("n2"), b'{"end": 0, "cpu": {}}')  # old, but n2 is registered
    await store.put(KEYS.node("n2"), b"{}")
    registration = await store.get(KEYS.node("n1"))
    assert registration is not None
    await store.delete(KEYS.node("n1"))  # n1's registration is gone (its lease ended)
    request = api_pb2.UsageReportRequest(since=0, until=T0 + DAY, by="node")
    before = await usage_report(store, KEYS, request)

    clock.now = T0 + 200
    rollup = await fenced_rollup(store, clock)
    rollup.forget_after = 300.0
    assert await rollup.forget() == 0  # gone for too short a time
    clock.now = T0 + 400
    assert await rollup.forget() == 0  # its records are not rolled up yet: the cursor says they are final
    assert await rollup.roll() == 10
    # the leader dies here, between the roll-up and the delete: the next one deletes it
    successor = await fenced_rollup(store, clock)
    successor.forget_after = 300.0
    assert await successor.forget() == 1
    assert await store.get(UK.cursor("n1")) is None and await store.get(UK.cursor("n2")) is not None
    assert await successor.forget() == 0
    assert (await usage_report(store, KEYS, request)).rows == before.rows

    await store.put(KEYS.node("n1"), registration.value)  # n1 comes back, its meter still running
    clock.now = T0 + 404.5
    with pytest.raises(StoreError, match="cursor of n1 moved"):
        await meter.close_due()
    await meter.close_due()  # from its return: nothing before the deleted cursor again
    clock.now = T0 + 406.5
    await meter.close_due()
    assert sorted({r.start for r in await raw_records(store)}) == [T0 + 404]
    after = await usage_report(store, KEYS, request)
    assert after.rows[0].vcpu_hours_reserved == pytest.approx(
        before.rows[0].vcpu_hours_reserved + 0.5 * 2 / 3600
    )


async def test_a_node_registered_again_before_its_cursor_is_deleted_keeps_it() -> None:
    store, clock = MemoryStore(), Clock(T0 + 1000)
    await store.put(UK.cursor("n1"), b'{"end": 0, "cpu": {}}')
    rollup = await fenced_rollup(store, clock)
    rollup.forget_after = 300.0
    real_txn = store.txn

    async def joins_first(compares, ops, else_ops=()):  # type: ignore[no-untyped-def]
        await store.put(KEYS.node("n1"), b"{}")  # registers between the read and the delete
        return await real_txn(compares, ops, else_ops)

    store.txn = joins_first  # type: ignore[method-assign]
    assert await rollup.forget() == 0
    assert await store.get(UK.cursor("n1")) is not None
