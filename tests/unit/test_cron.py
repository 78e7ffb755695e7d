"""node.model.cron: parsing, and the next tick across month ends, leap years and DST changes."""

from datetime import UTC, datetime
from typing import Any

import pytest

from node.model import cron as cron_module
from node.model.cron import CronError, next_tick, parse, ticks_between


def _t(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M")


# (expression, zone, after (UTC), the ticks that follow (UTC))
CASES = [
    # plain UTC
    ("*/5 * * * *", "UTC", "2026-01-01T10:02:30", ["2026-01-01T10:05", "2026-01-01T10:10"]),
    ("0 * * * *", "UTC", "2026-01-01T10:00:00", ["2026-01-01T11:00", "2026-01-01T12:00"]),
    ("5/20 * * * *", "UTC", "2026-01-01T10:00:00", ["2026-01-01T10:05", "2026-01-01T10:25"]),
    ("0 0 29 2 *", "UTC", "2026-03-01T00:00:00", ["2028-02-29T00:00", "2032-02-29T00:00"]),
    ("0 0 31 * *", "UTC", "2026-01-31T00:00:00", ["2026-03-31T00:00", "2026-05-31T00:00"]),
    ("0 0 13 * fri", "UTC", "2026-01-01T00:00:00", ["2026-01-02T00:00", "2026-01-09T00:00"]),  # either
    ("0 0 * * mon", "UTC", "2026-01-01T00:00:00", ["2026-01-05T00:00", "2026-01-12T00:00"]),
    ("0 0 * * 7", "UTC", "2026-01-01T00:00:00", ["2026-01-04T00:00"]),  # 7 is Sunday too
    ("0 12 * JAN-MAR/2 *", "UTC", "2026-01-31T12:00:00", ["2026-03-01T12:00"]),
    ("@hourly", "UTC", "2026-12-31T23:30:00", ["2027-01-01T00:00"]),
    ("@weekly", "UTC", "2026-01-01T00:00:00", ["2026-01-04T00:00"]),
    ("59 23 31 12 *", "UTC", "2026-06-01T00:00:00", ["2026-12-31T23:59", "2027-12-31T23:59"]),
    # Europe/Berlin, spring forward 2026-03-29: 02:00 CET -> 03:00 CEST (01:00 UTC)
    ("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00", ["2026-03-29T01:00", "2026-03-30T00:30"]),
    ("0 3 * * *", "Europe/Berlin", "2026-03-28T12:00:00", ["2026-03-29T01:00", "2026-03-30T01:00"]),
    ("*/30 * * * *", "Europe/Berlin", "2026-03-29T00:15:00", ["2026-03-29T00:30", "2026-03-29T01:00"]),
    ("30 * * * *", "Europe/Berlin", "2026-03-28T23:45:00", ["2026-03-29T00:30", "2026-03-29T01:30"]),
    # Europe/Berlin, fall back 2026-10-25: 03:00 CEST -> 02:00 CET (01:00 UTC); 02:xx twice
    ("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00", ["2026-10-25T00:30", "2026-10-26T01:30"]),
    (
        "*/30 * * * *",
        "Europe/Berlin",
        "2026-10-25T00:15:00",
        ["2026-10-25T00:30", "2026-10-25T01:00", "2026-10-25T01:30", "2026-10-25T02:00"],
    ),
    ("30 * * * *", "Europe/Berlin", "2026-10-25T00:00:00", ["2026-10-25T00:30", "2026-10-25T01:30"]),
    # America/New_York, fall back 2026-11-01: 02:00 EDT -> 01:00 EST (06:00 UTC)
    ("30 1 * * *", "America/New_York", "2026-10-31T12:00:00", ["2026-11-01T05:30", "2026-11-02T06:30"]),
    # America/New_York, spring forward 2026-03-08: 02:00 EST -> 03:00 EDT (07:00 UTC)
    ("15 2 * * *", "America/New_York", "2026-03-07T12:00:00", ["2026-03-08T07:00", "2026-03-09T06:15"]),
    ("15 2,3 * * *", "America/New_York", "2026-03-07T12:00:00", ["2026-03-08T07:00", "2026-03-08T07:15"]),
    # Australia/Lord_Howe moves by 30 minutes: 2026-10-04 02:00 +10:30 -> 02:30 +11 (15:30 UTC)
    ("15 2 * * *", "Australia/Lord_Howe", "2026-10-03T00:00:00", ["2026-10-03T15:30", "2026-10-04T15:15"]),
]


@pytest.mark.parametrize(("expr", "zone", "after", "expected"), CASES)
def test_next_ticks(expr: str, zone: str, after: str, expected: list[str]) -> None:
    cron = parse(expr, zone)
    got, t = [], _t(after)
    for _ in expected:
        t = next_tick(cron, t)
        got.append(_iso(t))
    assert got == expected


def test_ticks_between_counts_the_repeated_hour_once_for_a_fixed_time() -> None:
    cron = parse("0,30 2 * * *", "Europe/Berlin")
    ticks = ticks_between(cron, _t("2026-10-24T12:00:00"), _t("2026-10-25T12:00:00"))
    assert [_iso(t) for t in ticks] == ["2026-10-25T00:00", "2026-10-25T00:30"]


def test_ticks_between_is_bounded() -> None:
    assert len(ticks_between(parse("* * * * *"), 0.0, 10**9, limit=7)) == 7


def test_fixed_and_wildcard() -> None:
    assert parse("30 2 * * *").fixed and parse("0 9-17 * * 1-5").fixed
    assert not parse("*/15 * * * *").fixed and not parse("30 * * * *").fixed


@pytest.mark.parametrize(
    ("expr", "zone", "says"),
    [
        ("* * * *", None, "5 fields"),
        ("* * * * * * *", None, "5 fields"),
        ("60 * * * * *", None, "second: 60 is out of range 0-59"),
        ("", None, "needed"),
        ("61 * * * *", None, "minute: 61 is out of range 0-59"),
        ("* 24 * * *", None, "hour: 24 is out of range 0-23"),
        ("* * 0 * *", None, "day of month: 0 is out of range 1-31"),
        ("* * * foo *", None, "month: 'foo' is not a number or a name"),
        ("\u00b2 * * * *", None, "minute: '\u00b2' is not a number"),  # str.isdigit() said yes
        ("\u0661 * * * *", None, "minute: '\u0661' is not a number"),  # and int() read it as 1
        ("*/\u0662 * * * *", None, "minute"),
        ("* * * * 8", None, "day of week: 8 is out of range 0-7"),
        ("5-1 * * * *", None, "runs backwards"),
        ("*/0 * * * *", None, "step"),
        ("1,,2 * * * *", None, "empty item"),
        ("0 0 30 feb *", None, "never matches"),
        ("@every", None, "unknown macro"),
        ("* * * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_expressions_say_what_to_fix(expr: str, zone: str | None, says: str) -> None:
    with pytest.raises(CronError, match=says):
        parse(expr, zone)


def test_next_tick_is_strictly_after_and_on_a_minute() -> None:
    cron = parse("*/7 * * * *", "Asia/Kolkata")
    t = _t("2026-05-05T05:05:05")
    for _ in range(50):
        n = next_tick(cron, t)
        assert n > t and n % 60 == 0
        t = n


@pytest.mark.parametrize(
    ("expr", "zone", "after", "expected"),
    [
        ("*/20 * * * * *", "UTC", "2026-01-01T10:00:05", ["10:00:20", "10:00:40", "10:01:00"]),
        ("5,35 0 * * * *", "UTC", "2026-01-01T10:00:35", ["11:00:05", "11:00:35", "12:00:05"]),
        # a wildcard with seconds through Berlin's repeated hour follows real time
        ("*/30 * * * * *", "Europe/Berlin", "2026-10-25T00:59:40", ["01:00:00", "01:00:30"]),
    ],
)
def test_a_leading_seconds_field(expr: str, zone: str, after: str, expected: list[str]) -> None:
    cron = parse(expr, zone)
    got, t = [], _t(after)
    for _ in expected:
        t = next_tick(cron, t)
        got.append(datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S"))
    assert got == expected


def test_many_ticks_are_found_quickly() -> None:
    """Catching up a second-granular schedule: 1,000 ticks, away from any DST change."""
    assert len(ticks_between(parse("* * * * * *", "Europe/Berlin"), 1e9, 2e9, limit=1000)) == 1000


@pytest.mark.parametrize(
    "after",
    ["2026-03-29T00:30:00", "2026-03-29T01:20:00", "2026-10-25T00:40:00", "2026-10-25T01:20:00"],
)
def test_a_seconds_schedule_near_a_dst_change_costs_few_conversions(
    after: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Near Berlin's changes every second still fires once, in real time, and each tick
    costs a bounded number of time-zone conversions: the leader's pass catches up to
    1,000 ticks of such a schedule at once (it once took minutes, the loop stalled)."""
    calls = 0
    real = cron_module._local

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(cron_module, "_local", counted)
    start = _t(after)
    ticks = ticks_between(parse("* * * * * *", "Europe/Berlin"), start, start + 30, limit=30)
    assert ticks == [start + i for i in range(1, 31)]
    assert calls < 30 * 600  # the old search: ~86,000 per tick
