"""What a scheduled job's ticks call for at one pass of the leader (issue 18 item 3). Pure.

`decide(schedule, since, running, now)` looks at the ticks in (since, now], `since` being
the last tick already recorded (or when the schedule was written, if none is):

- a tick more than `starting_deadline` before `now` is **missed**: no leader fired it in
  time (the leader was down, a failover took too long); it is recorded, never run late;
- of the ticks within the deadline, the latest is **due**; any earlier one is missed too
  (two runs are never started at once to catch up);
- a due tick while the previous run still goes: `forbid` -> **skip** (recorded as
  skipped), `replace` -> **replace** (the previous run ends as replaced, this one starts);
  otherwise -> **fire**.

The caller records every decided tick in etcd, create-only and fenced, before it acts
on it (`leader.schedrun`): so the next pass, of this leader or of the next, starts from
there and decides no tick twice. `wake` is the instant of the next pass the schedule
needs. At most `LIMIT` ticks are looked at per pass: a long outage of a seconds
schedule is caught up over several passes, `wake` then being at once; only the latest
`keep` missed ticks get a record, the others are counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from node.model.cron import next_tick, ticks_between
from node.model.spec_schedule import ScheduleSpec

LIMIT = 1000


class Action(StrEnum):
    NONE = ""
    FIRE = "fire"
    SKIP = "skip"
    REPLACE = "replace"


@dataclass(frozen=True)
class Decision:
    due: float | None = None  # the tick acted on (fired, skipped or replacing)
    action: Action = Action.NONE
    missed: list[float] = field(default_factory=list)  # the ticks to record as missed
    missed_count: int = 0  # missed in all (more than `missed` when they exceed `keep`)
    wake: float = 0.0  # unix seconds of the next pass the schedule needs


def decide(schedule: ScheduleSpec, since: float, running: bool, now: float) -> Decision:
    cron = schedule.parsed()
    ticks = ticks_between(cron, since, now, LIMIT)
    due_ticks = [t for t in ticks if now - t <= schedule.deadline]
    missed = [t for t in ticks if now - t > schedule.deadline] + due_ticks[:-1]
    wake = next_tick(cron, ticks[-1] if ticks else max(since, now))
    due = due_ticks[-1] if due_ticks else None
    action = Action.NONE
    if due is not None:
        if not running:
            action = Action.FIRE
        elif schedule.policy == "replace":
            action = Action.REPLACE
        else:
            action = Action.SKIP
    return Decision(due, action, missed[-schedule.keep :], len(missed), wake)
