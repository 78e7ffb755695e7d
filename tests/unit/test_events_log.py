"""The cluster event log (issue 14): keys, batched writes, trimming by count and age, filters."""

from __future__ import annotations

import asyncio

import pytest

from leader.upkeep import Bounds, Upkeep
from node.model.domain import Event
from node.model.keys import Keys
from node.store import Fenced, StoreUnavailable
from node.store.memory import MemoryStore
from node.telemetry.events import MAX_MESSAGE, EventLog, Filter, decode, event_time_ns, trim_cut

KEYS = Keys()
NOW = 1.8e9
S = 10**9  # ns per second


# -- the rules ----------------------------------------------------------------------------


def test_trim_cut_by_count_keeps_the_newest() -> None:
    times = [int((NOW - i) * S) for i in range(10)]  # newest first: order does not matter
    cut = trim_cut(times, NOW, max_count=4, max_age=0)
    assert sorted(t for t in times if t >= cut) == sorted(times)[-4:]
    assert trim_cut(times, NOW, max_count=10, max_age=0) == 0, "at the bound: nothing to delete"


def test_trim_cut_by_age_and_the_stricter_bound_wins() -> None:
    times = [int((NOW - age) * S) for age in (10, 100, 1000, 5000)]
    cut = trim_cut(times, NOW, max_count=100, max_age=500)
    assert [t for t in times if t >= cut] == times[:2], "older than 500 s go"
    cut = trim_cut(times, NOW, max_count=1, max_age=500)
    assert [t for t in times if t >= cut] == times[:1], "the count is stricter here"
    assert trim_cut(times, NOW, max_count=100, max_age=10_000) == 0
    assert trim_cut([], NOW, max_count=1, max_age=1) == 0


def test_log_keys_sort_by_time_and_old_ring_keys_are_told_apart() -> None:
    a, b = KEYS.event(99 * S, "zz", 7), KEYS.event(100 * S, "aa", 0)
    assert a < b < KEYS.event_at(101 * S)
    assert KEYS.event_at(100 * S) < b, "an event at the cut is kept (the range end is exclusive)"
    assert event_time_ns(b, KEYS.events) == 100 * S
    assert event_time_ns(f"{KEYS.events}node-1/0003", KEYS.events) is None


def test_filter_by_since_service_kind_prefix_and_cause() -> None:
    events = [
        Event(NOW - 700, "service.applied", "n1", "web v1", "web", cause="c1"),
        Event(NOW - 60, "task.placed", "n2", "web.1", "web", "t1", cause="c1"),
        Event(NOW - 30, "task.started", "n3", "web.1", "web", "t1", cause="c1"),
        Event(NOW - 20, "task.started", "n3", "db.1", "db", "t2", cause="c2"),
        Event(NOW - 10, "node.joined", "n1", "node n4 joined"),
    ]

    def kinds(f: Filter) -> list[str]:
        return [f"{e.kind}:{e.service}" for e in events if f.match(e)]

    assert kinds(Filter(since=NOW - 600, service="web")) == ["task.placed:web", "task.started:web"]
    assert kinds(Filter(kind="task.started")) == ["task.started:web", "task.started:db"]
    assert kinds(Filter(kind="task.")) == ["task.placed:web", "task.started:web", "task.started:db"]
    assert kinds(Filter(kind="task")) == [], "an exact kind unless it ends in a dot"
    assert kinds(Filter(cause="c1")) == ["service.applied:web", "task.placed:web", "task.started:web"]
    assert len(kinds(Filter())) == 5


# -- the writer -------------------------------------------------------------------------


async def test_a_burst_is_written_in_batches_and_read_back_in_order() -> None:
    store = MemoryStore()
    log = EventLog(store, KEYS, "n1")
    for i in range(250):
        log.emit("config.created", f"config c{i} created", cause="c9")
    before = store.revision
    runner = asyncio.create_task(log.run())
    try:
        async with asyncio.timeout(5):
            while len((await store.range(KEYS.events))[0]) < 250:  # noqa: ASYNC110 (polls the store)
                await asyncio.sleep(0.01)
    finally:
        runner.cancel()
    assert store.revision - before == 3, "100 events per transaction: 3 revisions, not 250"
    kvs, _ = await store.range(KEYS.events)
    got = [e.message for _, e in decode(kvs, Filter(cause="c9"))]
    assert got == [f"config c{i} created" for i in range(250)], "all kept, oldest first"


async def test_a_long_message_is_cut_and_a_store_outage_drops_without_raising() -> None:
    store = MemoryStore()
    log = EventLog(store, KEYS, "n1")
    log.emit("task.failed", "x" * 10_000)
    event = log._queue.get_nowait()
    assert len(event.message) == MAX_MESSAGE
    store.unavailable = True
    await log.write([event])  # logged and dropped: events are for people
    assert log.dropped == 1
    store.unavailable = False
    await log.write([event])
    assert len((await store.range(KEYS.events))[0]) == 1


def test_a_full_queue_drops_and_counts_never_blocks() -> None:
    log = EventLog(MemoryStore(), KEYS, "n1")
    for _ in range(log._queue.maxsize + 5):
        log.emit("k", "m")
    assert log.dropped == 5


# -- the leader's trim ------------------------------------------------------------------


async def leading(store: MemoryStore) -> int:
    await store.put(KEYS.leader, b"n1")
    kv = await store.get(KEYS.leader)
    assert kv is not None
    return kv.create_revision


def upkeep(store: MemoryStore, epoch: int, **bounds: float) -> Upkeep:
    return Upkeep(store, KEYS, epoch, EventLog(store, KEYS, "n1"), Bounds(**bounds), wall=lambda: NOW)  # type: ignore[arg-type]


async def put_events(store: MemoryStore, ages: list[float], node: str = "n2") -> None:
    for seq, age in enumerate(ages):
        e = Event(NOW - age, "task.started", node, f"age {age:g}")
        await store.put(KEYS.event(int(e.time * S), node, seq), e.to_json())


async def test_trim_by_count_and_age_in_one_fenced_write_whoever_wrote_them() -> None:
    store = MemoryStore()
    epoch = await leading(store)
    await put_events(store, [5000, 4000, 3000], node="gone")  # a node that is no more: same rule
    await put_events(store, [float(a) for a in range(50, 0, -1)], node="n2")
    legacy = Event(NOW - 9000, "node.started", "old", "a ring entry of an older version")
    await store.put(f"{KEYS.events}old/0003", legacy.to_json())
    await store.put(f"{KEYS.events}old/0004", Event(NOW - 5.5, "k", "old", "recent").to_json())
    before = store.revision

    u = upkeep(store, epoch, events_max=20, events_max_age=3600)
    await u.trim()

    assert store.revision == before + 1, "one transaction"
    kept = [e.message for _, e in decode((await store.range(KEYS.events))[0])]
    assert kept == [f"age {a}" for a in range(20, 5, -1)] + ["recent"] + [f"age {a}" for a in range(5, 0, -1)]
    assert u.trimmed == 3 + 30 + 1
    await u.trim()
    assert store.revision == before + 1, "within bounds: no write"


async def test_trim_by_age_only_when_the_count_is_within_bounds() -> None:
    store = MemoryStore()
    epoch = await leading(store)
    await put_events(store, [7200, 3700, 3500, 10])
    await upkeep(store, epoch, events_max=100, events_max_age=3600).trim()
    assert [e.message for _, e in decode((await store.range(KEYS.events))[0])] == ["age 3500", "age 10"]


async def test_a_deposed_leader_trims_nothing_and_an_outage_skips_the_trim() -> None:
    store = MemoryStore()
    epoch = await leading(store)
    await put_events(store, [7200, 10])
    await store.delete(KEYS.leader)
    await leading(store)
    with pytest.raises(Fenced):
        await upkeep(store, epoch, events_max=100, events_max_age=3600).trim()
    assert len((await store.range(KEYS.events))[0]) == 2
    store.unavailable = True
    with pytest.raises(StoreUnavailable):
        await upkeep(store, epoch + 2, events_max=100, events_max_age=3600).trim()
