"""The tick decision of scheduled jobs (`leader.schedules.decide`), table-tested; and the
`schedule:` field's checks. Next-tick times across DST: tests/unit/test_cron.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from leader.schedules import Action, decide
from node.model.spec import SpecError, parse_spec
from node.model.spec_schedule import ScheduleSpec


def _t(hhmmss: str, day: str = "2026-03-29") -> float:
    return datetime.fromisoformat(f"{day}T{hhmmss}").replace(tzinfo=UTC).timestamp()


def _s(**kw: object) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"cron": "*/5 * * * *", **kw})


# (schedule, since, running, now) -> (action, due, missed)
CASES = [
    ("nothing due yet", _s(), "10:00:00", False, "10:04:59", Action.NONE, None, []),
    ("due on the tick", _s(), "10:00:00", False, "10:05:00", Action.FIRE, "10:05:00", []),
    ("due within the deadline", _s(), "10:00:00", False, "10:06:59", Action.FIRE, "10:05:00", []),
    ("past the deadline: missed", _s(), "10:00:00", False, "10:07:01", Action.NONE, None, ["10:05:00"]),
    (
        "a short deadline",
        _s(starting_deadline="10s"),
        "10:00:00",
        False,
        "10:05:11",
        Action.NONE,
        None,
        ["10:05:00"],
    ),
    (
        "two due: the latest fires, the earlier is missed",
        _s(cron="* * * * *"),
        "10:00:00",
        False,
        "10:02:30",
        Action.FIRE,
        "10:02:00",
        ["10:01:00"],
    ),
    (
        "an outage: old ticks missed, the one in the deadline fires",
        _s(),
        "10:00:00",
        False,
        "10:21:00",
        Action.FIRE,
        "10:20:00",
        ["10:05:00", "10:10:00", "10:15:00"],
    ),
    ("forbid while a run goes: skipped", _s(), "10:00:00", True, "10:05:00", Action.SKIP, "10:05:00", []),
    (
        "forbid is the default",
        _s(concurrency="forbid"),
        "10:00:00",
        True,
        "10:05:01",
        Action.SKIP,
        "10:05:00",
        [],
    ),
    (
        "replace while a run goes",
        _s(concurrency="replace"),
        "10:00:00",
        True,
        "10:05:00",
        Action.REPLACE,
        "10:05:00",
        [],
    ),
    (
        "replace with nothing running fires",
        _s(concurrency="replace"),
        "10:00:00",
        False,
        "10:05:00",
        Action.FIRE,
        "10:05:00",
        [],
    ),
    ("the recorded tick is not decided again", _s(), "10:05:00", False, "10:06:00", Action.NONE, None, []),
    (
        "Berlin wall time, spring forward: 02:30 fires at the jump (01:00 UTC)",
        _s(cron="30 2 * * *", timezone="Europe/Berlin"),
        "00:00:00",
        False,
        "01:00:30",
        Action.FIRE,
        "01:00:00",
        [],
    ),
    (
        "seconds field",
        _s(cron="*/10 * * * * *", starting_deadline="5s"),
        "10:00:00",
        False,
        "10:00:25",
        Action.FIRE,
        "10:00:20",
        ["10:00:10"],
    ),
]


@pytest.mark.parametrize(
    ("schedule", "since", "running", "now", "action", "due", "missed"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide(
    schedule: ScheduleSpec,
    since: str,
    running: bool,
    now: str,
    action: Action,
    due: str | None,
    missed: list[str],
) -> None:
    d = decide(schedule, _t(since), running, _t(now))
    assert d.action == action
    assert d.due == (_t(due) if due else None)
    assert d.missed == [_t(m) for m in missed] and d.missed_count == len(missed)
    assert d.wake > _t(now)


def test_missed_records_are_bounded_by_history_and_counted() -> None:
    d = decide(_s(cron="* * * * *", history=3), _t("00:00:00"), False, _t("02:00:30"))
    assert d.action == Action.FIRE and d.due == _t("02:00:00")
    assert d.missed == [_t("01:57:00"), _t("01:58:00"), _t("01:59:00")] and d.missed_count == 119


def test_a_long_outage_of_a_seconds_schedule_is_caught_up_in_bounded_passes() -> None:
    d = decide(_s(cron="* * * * * *", history=5), _t("00:00:00"), False, _t("06:00:00"))
    assert d.action == Action.NONE and d.missed_count == 1000 and len(d.missed) == 5
    assert d.wake <= _t("06:00:00"), "more ticks remain: a pass at once, not at the next tick"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("schedule: {cron: '* * * * *'}", "schedule: a schedule needs kind: job"),
        ("kind: job\nschedule: {cron: '61 * * * *'}", "schedule.cron: minute: 61 is out of range"),
        (
            "kind: job\nschedule: {cron: '* * * * *', timezone: Moon/Base}",
            "schedule.timezone: unknown time zone",
        ),
        (
            "kind: job\nschedule: {cron: '* * * * *', history: 0}",
            "schedule.history: must be between 1 and 100",
        ),
        ("kind: job\nschedule: {cron: '* * * * *', starting_deadline: 0s}", "schedule.starting_deadline"),
        ("kind: job\nschedule: {cron: '* * * * *', every: 5}", "unknown field 'every'"),
    ],
)
def test_a_bad_schedule_says_what_to_fix(body: str, says: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(f"name: nightly\nimage: app:1\n{body}\n", "nightly.yaml")
    assert says in str(err.value)


def test_defaults() -> None:
    spec = parse_spec("name: n\nimage: a:1\nkind: job\nschedule: {cron: '@daily'}\n", "n.yaml")
    assert spec.schedule is not None
    assert (spec.schedule.policy, spec.schedule.deadline, spec.schedule.keep) == ("forbid", 120.0, 10)
