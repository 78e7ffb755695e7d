"""`schedule:` of a `kind: job` service (issue 18): run the job at each tick of a cron.

    schedule: {cron: "*/5 * * * *", timezone: Europe/Berlin, concurrency: forbid,
               starting_deadline: 2m, history: 10}

Each tick is one *run* of the job: a fresh job record (completions, parallelism and
retries as `job:` says) whose tasks take a slot range of their own (a lane, decision
69). `concurrency` says what a tick does while an earlier run still goes: `forbid` (the
default) records the tick as skipped, `replace` ends the previous run (its tasks are
stopped) and starts the new one, `allow` starts it alongside, up to
`leader.schedules.overlap_cap` runs at once (10, or `history` if lower; a tick beyond
is skipped). A job with `volumes:` keeps its slots across runs (`own_slots`): `allow` is
refused for it. A tick the leader could not fire within `starting_deadline`
(no leader, a failover) is recorded as missed, not run late. `history` run records are
kept. The cron syntax and the time zone rule: `node.model.cron`.

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

from node.model.cron import Cron, CronError, next_tick
from node.model.cron import parse as parse_cron
from node.model.spec_lifecycle import _duration, _duration_within

MAX_HISTORY = 100
DEFAULT_DEADLINE = 120.0  # s: a tick later than this after its time is missed
DEFAULT_HISTORY = 10
_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
_Deadline = Annotated[float, BeforeValidator(_duration), _duration_within(1, 86400)]


def _fail(message: str, at: tuple[Any, ...] = ()) -> PydanticCustomError:
    return PydanticCustomError("spec", "{msg}", {"msg": message, "at": at})


def _history(v: int) -> int:
    if not 1 <= v <= MAX_HISTORY:
        raise _fail(f"must be between 1 and {MAX_HISTORY}, got {v}")
    return v


class ScheduleSpec(BaseModel):
    """When a scheduled job runs; `cron` is checked (with `timezone`) by `node.model.cron`."""

    model_config = _STRICT
    cron: str  # 5 fields (or 6, seconds first) or a macro such as @daily
    timezone: str | None = None  # IANA name; None: UTC
    concurrency: Literal["allow", "forbid", "replace"] | None = None  # None: forbid
    starting_deadline: _Deadline | None = None  # None: DEFAULT_DEADLINE
    history: Annotated[int, AfterValidator(_history)] | None = None  # None: DEFAULT_HISTORY

    @property
    def key(self) -> str:
        """What makes its ticks: the cron and the time zone (recorded in each run record)."""
        return f"{self.cron} {self.timezone or 'UTC'}"

    def parsed(self) -> Cron:
        return parse_cron(self.cron, self.timezone)

    @property
    def policy(self) -> str:
        return self.concurrency or "forbid"

    @property
    def deadline(self) -> float:
        return DEFAULT_DEADLINE if self.starting_deadline is None else self.starting_deadline

    @property
    def keep(self) -> int:
        return DEFAULT_HISTORY if self.history is None else self.history


def check_schedule(spec: Any) -> None:
    """`ServiceSpec`'s rule for `schedule` (called by its validator)."""
    schedule: ScheduleSpec | None = spec.schedule
    if schedule is None:
        return
    if spec.kind != "job":
        raise _fail("a schedule needs kind: job (a service runs all the time)", ("schedule",))
    if schedule.concurrency == "allow" and not own_slots(spec):
        raise _fail(
            "concurrency: allow runs each run in slots of its own, but a job with volumes: keeps "
            "its slots (and their volumes) across runs: use forbid or replace, or drop volumes:",
            ("schedule", "concurrency"),
        )
    try:
        schedule.parsed()
    except CronError as exc:
        where = "timezone" if "time zone" in str(exc) else "cron"
        raise _fail(str(exc), ("schedule", where)) from None


def never_fires(spec: Any, now: float) -> str:
    """Why the spec's schedule has no tick ahead of `now` ("" when it has one, or none is
    set). A cron can pass its checks and still never fire: day fields that meet only in a
    time zone's spring-forward gap, or 29 February on a weekday that will not come. Asked
    at apply, not in the model (a stored spec must stay readable whatever the date)."""
    schedule: ScheduleSpec | None = getattr(spec, "schedule", None)
    if schedule is None:
        return ""
    try:
        next_tick(schedule.parsed(), now)
    except CronError as exc:
        return f"schedule.cron: {exc}: it would never run; change the cron or the time zone"
    return ""


def own_slots(spec: Any) -> bool:
    """Each run in slots of its own (a lane, decision 69); not a job with `volumes:`, whose
    slots' volumes must be the same for every run: its runs share lane 0, one at a time."""
    return not getattr(spec, "volumes", None)


def scheduled(spec: Any) -> ScheduleSpec | None:
    return spec.schedule if getattr(spec, "kind", None) == "job" else None
