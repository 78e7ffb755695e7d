"""Cron expressions and the next tick after a time, in a time zone. Pure: no clock, no I/O.

Why: a schedule (`schedule.cron`, issue 18) must fire at the instants a person reading
`30 2 * * *` with `timezone: Europe/Berlin` expects, including on the two nights a year
the wall clock jumps. The leader asks `next_tick(cron, after)` and nothing else.

Syntax: five fields, `minute hour day-of-month month day-of-week`, each `*`, a number,
a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from a to the end), or a comma list of
these. Months and days of week also take names (`jan`..`dec`, `sun`..`sat`, any case);
day of week 0 and 7 are both Sunday. When both day fields are restricted (neither
starts with `*`), a day matches when either does (Vixie cron's rule); otherwise both
must. Macros: `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`),
`@hourly`. An expression that can never match (`0 0 30 feb *`) is refused.
Six fields: a leading *seconds* field (`*/10 * * * * *`: every 10 s), as Quartz and
robfig/cron's optional seconds have it; ticks then fall on those seconds of each minute.
It exists for short schedules and for tests that must not wait minutes per tick.

Time zones: any IANA name `zoneinfo` knows (`UTC` when none is given). Daylight saving
follows cronie (and Vixie cron before it), not Kubernetes' CronJob (robfig/cron), which
skips a fixed time that falls in a gap and runs one in a repeated hour twice:

- A *fixed-time* expression (neither the minute nor the hour field starts with `*`,
  e.g. `30 2 * * *`, `0 9-17 * * 1-5`) whose wall time does not exist on a spring-forward
  night fires once, at the instant the clocks jump (03:00 when 02:00 jumps to 03:00):
  a nightly job is neither skipped nor run twice. On a fall-back night a fixed time in
  the repeated hour fires once, at its first occurrence.
- A *wildcard* expression (`*/15 * * * *`, `30 * * * *`) follows real time: wall times
  in a gap do not exist and do not fire; in a repeated hour it fires in both passes, so
  `*/15` still fires every 15 real minutes.

Guarantees: `next_tick(c, t) > t`, ticks are whole minutes (whole seconds with a seconds
field) in UTC, and the answer is
found in a bounded number of steps (the search covers 8 years, which holds a 29 Feb).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SECONDS = ("second", 0, 59, ())
_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),
)
_SEARCH_YEARS = 8
_MINUTE = timedelta(minutes=1)
_WINDOW = timedelta(hours=4)  # wider than any DST shift: candidates this far past t are all later


class CronError(ValueError):
    """An expression or time zone that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression and its time zone. `fixed`: neither minute nor hour is a wildcard."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6
    any_day: bool  # day of month is `*...`
    any_weekday: bool  # day of week is `*...`
    fixed: bool
    zone: str = "UTC"
    seconds: tuple[int, ...] = (0,)  # sorted; (0,) for five fields

    @property
    def tz(self) -> tzinfo:
        return ZoneInfo(self.zone)

    def matches_day(self, d: datetime) -> bool:
        in_month = d.day in self.days
        in_week = (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week


def _number(text: str, field: str, lo: int, hi: int, names: tuple[str, ...]) -> int:
    low = text.lower()
    if names and low in names:
        return names.index(low) + (1 if field == "month" else 0)
    if not (text.isascii() and text.isdigit()):
        named = f" or a name ({', '.join(names[:3])}, ...)" if names else ""
        raise CronError(f"{field}: {text!r} is not a number{named}")
    n = int(text)
    if not lo <= n <= hi:
        raise CronError(f"{field}: {n} is out of range {lo}-{hi}")
    return n


def _field(text: str, index: int) -> frozenset[int]:
    field, lo, hi, names = _FIELDS[index] if index >= 0 else _SECONDS
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field}: empty item in list {text!r}")
        body, _, step_text = part.partition("/")
        step = 1
        if step_text or part.endswith("/"):
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise CronError(f"{field}: step in {part!r} must be a whole number above 0")
            step = int(step_text)
        if body == "*":
            start, end = lo, hi
        elif "-" in body:
            a, _, b = body.partition("-")
            start, end = _number(a, field, lo, hi, names), _number(b, field, lo, hi, names)
            if start > end:
                raise CronError(f"{field}: range {body!r} runs backwards")
        else:
            start = _number(body, field, lo, hi, names)
            end = hi if step_text else start  # `a/n`: from a to the end
        out.update(range(start, end + 1, step))
    if index == 4 and 7 in out:
        out.discard(7)
        out.add(0)
    return frozenset(out)


def parse(text: str, zone: str | None = None) -> Cron:
    """A checked `Cron`; `CronError` naming the field and what is allowed otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise CronError("a cron expression is needed: 5 fields, e.g. '*/5 * * * *', or @hourly, @daily, ...")
    expanded = MACROS.get(text.strip().lower(), text)
    if expanded.strip().startswith("@"):
        raise CronError(f"unknown macro {text.strip()!r}: use one of {', '.join(MACROS)}")
    parts = expanded.split()
    seconds: tuple[int, ...] = (0,)
    if len(parts) == 6:
        seconds, parts = tuple(sorted(_field(parts[0], -1))), parts[1:]
    if len(parts) != 5:
        raise CronError(
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"or 6 with seconds first; got {len(parts)} in {text!r}"
        )
    zone = zone or "UTC"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {zone!r}: an IANA name, e.g. Europe/Berlin or UTC") from None
    sets = [_field(p, i) for i, p in enumerate(parts)]
    cron = Cron(
        text=text.strip(),
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=sets[4],
        any_day=parts[2].startswith("*"),
        any_weekday=parts[4].startswith("*"),
        fixed=not (parts[0].startswith("*") or parts[1].startswith("*")),
        zone=zone,
        seconds=seconds,
    )
    if cron.any_weekday and not any(min(cron.days) <= _longest(m) for m in cron.months):
        raise CronError(f"{text!r} never matches: no month in it has day {min(cron.days)}")
    return cron


def _longest(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _walls(cron: Cron, start: datetime) -> Iterator[datetime]:
    """Matching naive wall times >= `start` (minute-aligned), in order, for 8 years at most."""
    d, end = start, start.replace(year=start.year + _SEARCH_YEARS, day=1)
    while d < end:
        if d.month not in cron.months:
            d = (d.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
        elif not cron.matches_day(d):
            d = (d + timedelta(days=1)).replace(hour=0, minute=0)
        elif d.hour not in cron.hours:
            d = (d + timedelta(hours=1)).replace(minute=0)
        elif d.minute not in cron.minutes:
            d += _MINUTE
        else:
            yield d
            d += _MINUTE


def _local(wall: datetime, tz: tzinfo, fold: int) -> datetime:
    return wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)


def _instants(cron: Cron, wall: datetime, tz: tzinfo) -> list[datetime]:
    """The UTC instants at which `wall` fires (see the module docstring for the DST rule)."""
    early, late = _local(wall, tz, 0), _local(wall, tz, 1)
    if early == late:
        return [early]
    if early < late:  # repeated (fall back): fold 0 is the first pass
        return [early] if cron.fixed else [early, late]
    if not cron.fixed:  # a gap: this wall time does not exist
        return []
    lo, hi = late, early  # the jump is between them: find its instant, to the minute
    while hi - lo > _MINUTE:
        mid = max(lo + _MINUTE, (lo + (hi - lo) / 2).replace(second=0, microsecond=0))
        if mid.astimezone(tz).utcoffset() == early.astimezone(tz).utcoffset():
            hi = mid
        else:
            lo = mid
    return [hi]


def _steady(tz: tzinfo, at: datetime) -> bool:
    """No offset change within `_WINDOW` of `at`: wall time and real time move together."""
    return (at - _WINDOW).astimezone(tz).utcoffset() == (at + _WINDOW).astimezone(tz).utcoffset()


def _offsets(tz: tzinfo, at: datetime) -> list[timedelta]:
    """The UTC offsets in force within `_WINDOW` of `at`, sampled every half hour."""
    samples = (at + k * timedelta(minutes=30) for k in range(-8, 9))
    return [offset for point in samples if (offset := point.astimezone(tz).utcoffset()) is not None]


def _fires(cron: Cron, minute: datetime, tz: tzinfo) -> list[datetime]:
    """Every instant at which a second of wall `minute` fires. When each fold's offset is
    the same through the minute (all minutes but those at an offset change), second `s`
    fires at that fold's instant of the minute plus `s`, so a minute costs four
    conversions whatever its seconds; the others are looked at second by second
    (`_instants`, which says which folds fire)."""
    early, late = _local(minute, tz, 0), _local(minute, tz, 1)
    following = minute + _MINUTE
    uniform = _local(following, tz, 0) == early + _MINUTE and _local(following, tz, 1) == late + _MINUTE
    if uniform and (early <= late or not cron.fixed):
        starts = [early] if early == late or cron.fixed else [early, late] if early < late else []
        return [base + timedelta(seconds=s) for base in starts for s in cron.seconds]
    return [i for second in cron.seconds for i in _instants(cron, minute.replace(second=second), tz)]


def next_tick(cron: Cron, after: float) -> float:
    """The first instant (unix seconds) strictly after `after` at which `cron` fires.
    Away from an offset change the first matching wall time is the answer. Near one, a
    wall time `w` fires at `w - offset` for an offset in force there, so the walls looked
    at start where `w - (the least offset)` can pass `after`, and stop at the first wall
    whose earliest instant comes after the best found (earliest instants never go back
    from one wall to the next: a gap's walls fire at the jump, a repeated hour's first
    pass comes before the second), or where `w - (the greatest offset)` does. Each minute
    costs a few conversions (`_fires`), so catching up a seconds schedule near a change
    does not stall the leader's pass. CronError if none is found within 8 years."""
    tz = cron.tz
    t = datetime.fromtimestamp(after, UTC)
    wall_t = t.astimezone(tz).replace(tzinfo=None)
    back = timedelta(0)
    if not _steady(tz, t):
        here = t.astimezone(tz).utcoffset() or timedelta(0)
        back = max(back, here - min(_offsets(tz, t)))
    start = (wall_t - back).replace(second=0, microsecond=0)
    horizon = None
    best: datetime | None = None
    for minute in _walls(cron, start):
        if horizon is not None and minute > horizon:
            break
        fires = _fires(cron, minute, tz)
        if best is not None and fires and min(fires) > best:
            break  # a wall's earliest instant never comes before an earlier wall's earliest
        found = min((at for at in fires if at > t), default=None)
        if found is not None and (best is None or found < best):
            best = found
        if best is not None and horizon is None:
            if _steady(tz, best):
                break
            horizon = best.replace(tzinfo=None) + max(_offsets(tz, best))
    if best is None:
        raise CronError(f"{cron.text!r} has no tick in the {_SEARCH_YEARS} years after {t.isoformat()}")
    return best.timestamp()


def ticks_between(cron: Cron, after: float, until: float, limit: int = 1000) -> list[float]:
    """Every tick in (after, until], at most `limit` (the first ones)."""
    out: list[float] = []
    t = after
    while len(out) < limit:
        t = next_tick(cron, t)
        if t > until:
            break
        out.append(t)
    return out
