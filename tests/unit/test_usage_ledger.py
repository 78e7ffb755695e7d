"""The pure rules of usage metering (node.model.usage_ledger, decision 67)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.model.errors import InvalidArgument
from node.model.usage_ledger import (
    DAY,
    DEFAULT_CPU,
    DEFAULT_MEMORY,
    GIB,
    Dims,
    MeterState,
    Rates,
    Record,
    Span,
    Tally,
    check_by,
    check_length,
    close,
    counters,
    day_records,
    interval_start,
    report,
    reservation,
    roll_up,
)

T0 = 1_800_000_000 - 1_800_000_000 % DAY  # a UTC midnight


def span(task: str = "t1", start: float = T0, end: float | None = None, **kw: object) -> Span:
    base: dict[str, object] = {"service": "web", "stack": "", "cpu": 0.5, "memory": 64 * 2**20}
    base.update(kw)
    return Span(task, start=start, end=end, **base)  # type: ignore[arg-type]


def by_task(records: list[Record]) -> dict[tuple[str, int], Tally]:
    return {(r.task, r.start): r.tally for r in records}


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (T0, None, [10.0, 10.0, 10.0]),  # ran through every interval
        (T0 + 5, None, [5.0, 10.0, 10.0]),  # started in the first
        (T0, T0 + 25, [10.0, 10.0, 5.0]),  # ended in the last
        (T0 + 12, T0 + 14, [0.0, 2.0, 0.0]),  # inside one
        (T0 - 100, T0 - 1, [0.0, 0.0, 0.0]),  # before the range
        (T0 + 30, None, [0.0, 0.0, 0.0]),  # after it
    ],
)
def test_reserved_seconds_per_interval(start: float, end: float | None, expected: list[float]) -> None:
    records, state = close(
        [span(start=start, end=end)], MeterState(T0), T0 + 30, 10, "n1", {}, T0 + 100, (0, 0)
    )
    got = by_task(records)
    for i, seconds in enumerate(expected):
        tally = got.get(("t1", T0 + 10 * i), Tally())
        assert tally.reserved_vcpu_s == pytest.approx(0.5 * seconds)
        assert tally.reserved_gib_s == pytest.approx(seconds / 16)
    assert state.end == T0 + 30


def test_used_cpu_is_the_counter_growth_spread_by_time() -> None:
    state = MeterState(T0, {"t1": 4.0})
    records, after = close([span(cpu_seconds=7.0)], state, T0 + 20, 10, "n1", {}, T0, (2.0, 4 * GIB))
    got = by_task(records)
    assert got[("t1", T0)].used_cpu_s == pytest.approx(1.5)
    assert got[("t1", T0 + 10)].used_cpu_s == pytest.approx(1.5)
    assert after.cpu == {"t1": 7.0}
    node = by_task(records)[("_node", T0)]
    assert (node.node_s, node.node_vcpu_s, node.node_gib_s) == (10.0, 20.0, 40.0)


@pytest.mark.parametrize(
    ("before", "counter", "start", "used"),
    [
        (None, 3.0, T0 + 2, 3.0),  # a new container: all of its counter
        (None, 3.0, T0 - 50, 0.0),  # first closing, an old container: unknown, not guessed
        (5.0, 2.0, T0 - 50, 2.0),  # the counter went back: a new container under the same task
        (2.0, 2.0, T0 - 50, 0.0),  # nothing used
    ],
)
def test_used_cpu_edges(before: float | None, counter: float, start: float, used: float) -> None:
    state = MeterState(T0, {} if before is None else {"t1": before})
    records, _ = close([span(start=start, cpu_seconds=counter)], state, T0 + 10, 10, "n1", {}, T0, (0, 0))
    assert by_task(records)[("t1", T0)].used_cpu_s == pytest.approx(used)


@pytest.mark.parametrize(
    ("before", "start", "kept"),
    [
        (4.0, T0 - 50, {"t1": 4.0}),  # the cursor's counter stands for the next reading
        (None, T0 + 2, {"t1": 0.0}),  # started in the range: its counter began at 0
        (None, T0 - 50, {}),  # never read: the next reading is a first one (counts 0)
    ],
)
def test_a_span_without_a_reading_counts_nothing_and_keeps_the_counter(
    before: float | None, start: float, kept: dict[str, float]
) -> None:
    state = MeterState(T0, {} if before is None else {"t1": before})
    unread = span(start=start, sampled=False)
    records, after = close([unread], state, T0 + 10, 10, "n1", {}, T0, (0, 0))
    assert by_task(records)[("t1", T0)].used_cpu_s == 0.0
    assert by_task(records)[("t1", T0)].reserved_vcpu_s > 0  # its time is counted all the same
    assert after.cpu == kept


def test_node_time_counts_from_the_meters_start() -> None:
    records, _ = close([], MeterState(T0), T0 + 20, 10, "n1", {"shoal.pool": "burst"}, T0 + 15, (1.0, GIB))
    assert [(r.start, r.tally.node_s, r.dims.labels) for r in records] == [
        (T0 + 10, 5.0, (("shoal.pool", "burst"),))
    ]


def test_defaults_and_checks() -> None:
    assert reservation(None, None) == (DEFAULT_CPU, DEFAULT_MEMORY)
    assert reservation(2.0, GIB) == (2.0, GIB)
    assert check_length(60) == 60 and check_length(2) == 2
    for bad in (0, 7, 61):
        with pytest.raises(InvalidArgument, match="dividing 86400"):
            check_length(bad)
    assert interval_start(T0 + 61.5, 60) == T0 + 60
    for ok in ("service", "stack", "node", "label:shoal.pool"):
        assert check_by(ok) == ok
    for bad in ("label:", "task", ""):
        with pytest.raises(InvalidArgument, match="--by must be"):
            check_by(bad)


def test_rates_card() -> None:
    assert Rates.of({"vcpu_hour": 0.04048, "gib_hour": 0.004445}) == Rates(0.04048, 0.004445)
    assert Rates.from_json(Rates(1, 2, 3, "EUR").to_json()) == Rates(1, 2, 3, "EUR")
    with pytest.raises(InvalidArgument, match="unknown key"):
        Rates.of({"cpu_hour": 1})
    for bad in (-1, "x", True, math.inf):
        with pytest.raises(InvalidArgument, match="vcpu_hour must be a price"):
            Rates.of({"vcpu_hour": bad})


def test_report_groups_and_prices() -> None:
    pool = (("shoal.pool", "burst"),)
    recs = [
        Record(Dims("n1", "web", "shop", pool), T0, T0 + 60, Tally(3600.0, 7200.0, 1800.0, 100.0), "a"),
        Record(Dims("n2", "web", "shop"), T0, T0 + 60, Tally(3600.0, 0.0), "b"),
        Record(Dims("n2", "db", ""), T0 + 60, T0 + 120, Tally(7200.0, 3600.0), "c"),
        Record(Dims("n1", "", "", pool), T0, T0 + 60, Tally(node_s=3600.0), "_node"),
    ]
    rates = Rates(0.04048, 0.004445, 0.1)
    rows = {r.key: r for r in report(recs, 0, math.inf, "service", rates)}
    assert sorted(rows) == ["db", "web"]
    assert rows["web"].hours()["vcpu_hours_reserved"] == pytest.approx(2.0)
    assert rows["web"].hours()["vcpu_hours_used"] == pytest.approx(0.5)
    assert rows["web"].cost == pytest.approx(2 * 0.04048 + 2 * 0.004445)
    assert {r.key for r in report(recs, 0, math.inf, "stack", rates)} == {"", "shop"}
    by_node = {r.key: r for r in report(recs, 0, math.inf, "node", rates)}
    assert by_node["n1"].node_cost == pytest.approx(0.1)
    by_pool = {r.key: r.tally.node_s for r in report(recs, 0, math.inf, "label:shoal.pool", rates)}
    assert by_pool == {"burst": 3600.0, "": 0.0}
    assert [r.key for r in report(recs, T0 + 60, T0 + 120, "service", rates)] == ["db"]


def test_counters_by_service_and_kind() -> None:
    recs = [
        Record(Dims("n1", "web"), T0, T0 + 1, Tally(1.0, 2.0, 3.0, 4.0)),
        Record(Dims("n1"), T0, T0 + 1, Tally(9.0)),
    ]
    assert counters(recs) == {
        ("vcpu", "web", "reserved"): 1.0,
        ("gib", "web", "reserved"): 2.0,
        ("vcpu", "web", "used"): 3.0,
        ("gib", "web", "used"): 4.0,
    }


def test_record_json_round_trip() -> None:
    r = Record(Dims("n1", "web", "s", (("a", "b"),)), T0, T0 + 60, Tally(1.5, 2.5, 0.5, 0.25, 0, 0, 0), "t")
    assert Record.from_json(r.to_json()) == r
    assert MeterState.from_json(MeterState(T0, {"t": 1.5}).to_json()) == MeterState(T0, {"t": 1.5})


# -- roll-up then query == query of the raw records --------------------------------------------

dims_st = st.builds(
    Dims,
    node=st.sampled_from(["n1", "n2"]),
    service=st.sampled_from(["", "web", "db"]),
    stack=st.sampled_from(["", "shop"]),
    labels=st.sampled_from([(), (("shoal.pool", "burst"),)]),
)
tally_st = st.builds(
    Tally, *(st.integers(0, 10_000).map(float) for _ in range(7))
)  # whole seconds: sums are exact in any order
raw_st = st.builds(
    lambda dims, k, tally, task: Record(dims, T0 + 60 * k, T0 + 60 * k + 60, tally, task),
    dims_st,
    st.integers(0, 3 * 1440 - 1),
    tally_st,
    st.sampled_from(["a", "b", "c"]),
)


@settings(max_examples=200, deadline=None)
@given(
    raws=st.lists(raw_st, max_size=40),
    rolled=st.sets(st.integers(0, 39)),
    by=st.sampled_from(["service", "stack", "node", "label:shoal.pool"]),
    first=st.integers(0, 3),
    days=st.integers(1, 3),
)
def test_roll_up_then_query_equals_query_of_raw(
    raws: list[Record], rolled: set[int], by: str, first: int, days: int
) -> None:
    since, until = T0 + first * DAY, T0 + (first + days) * DAY  # day-aligned bounds
    rates = Rates(0.04048, 0.004445, 0.1)
    expected = report(raws, since, until, by, rates)
    # roll some of the raw records up (in two passes), keep the others raw
    into = [r for i, r in enumerate(raws) if i in rolled]
    kept = [r for i, r in enumerate(raws) if i not in rolled]
    half = len(into) // 2
    totals = roll_up(roll_up({}, into[:half]), into[half:])
    got = report([*day_records(totals), *kept], since, until, by, rates)
    assert got == expected


def test_a_task_restarted_in_place_is_one_record_with_both_containers() -> None:
    old = span(start=T0, end=T0 + 4, cpu_seconds=1.0, container="c1")
    new = span(start=T0 + 5, cpu_seconds=2.0, container="c2")
    state = MeterState(T0, {"c1": 0.5})
    records, after = close([old, new], state, T0 + 10, 10, "n1", {}, T0, (0, 0))
    (record,) = [r for r in records if r.task == "t1"]
    assert record.tally.reserved_vcpu_s == pytest.approx(0.5 * 9)
    assert record.tally.used_cpu_s == pytest.approx(0.5 + 2.0)
    assert after.cpu == {"c1": 1.0, "c2": 2.0}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SHOAL_USAGE_INTERVAL": "7"}, "usage_interval: 7 must be whole seconds dividing a day"),
        ({"SHOAL_USAGE_INTERVAL": "2", "SHOAL_USAGE_ROLLUP_AFTER": "3"}, "usage_rollup_after: 3 must be"),
        (
            {"SHOAL_USAGE_INTERVAL": "60", "SHOAL_USAGE_ROLLUP_AFTER": "100"},
            "usage_rollup_after: 100 must be",
        ),
        ({"SHOAL_USAGE_KEEP_DAYS": "0"}, "usage_keep_days: 0 must be between 1 and 3650"),
    ],
)
def test_usage_settings_are_checked(env: dict[str, str], message: str) -> None:
    from node.model.config import ConfigError, load

    with pytest.raises(ConfigError, match=message):
        load({}, env)
    ok = load({}, {"SHOAL_USAGE_INTERVAL": "2", "SHOAL_USAGE_ROLLUP_AFTER": "6"})
    assert (ok.usage_interval, ok.usage_rollup_after, ok.usage_keep_days) == (2, 6.0, 400)
