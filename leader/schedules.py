"""What a scheduled job's ticks call for at one pass of the leader (issue 18 item 3). Pure.

`decide(schedule, since, running, now)` looks at the ticks in (since, now], `since` being
the last tick already recorded (or when the schedule was written, if none is):

- a tick more than `starting_deadline` before `now` is **missed**: no leader fired it in
  time (the leader was down, a failover took too long); it is recorded, never run late;
- of the ticks within the deadline, the latest is **due**; any earlier one is missed too
  (two runs are never started at once to catch up);
- a due tick while the previous run still goes: `forbid` -> **skip** (recorded as
  skipped), `replace` -> **replace** (the previous run ends as replaced, this one starts),
  `allow` -> **fire** unless `overlap_cap` runs already go (then **skip**: a stuck job
  does not pile up runs); otherwise -> **fire**.

Each fired run takes a *lane*, a slot range of its own (`node.model.runs.slot`, decision
69): `lane` picks a free one among `keep + 1`, and `prune` the oldest ended records beyond
`keep`, so the containers of the last runs stay (for `shoal task logs`) until their
lane is taken again.

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
MAX_OVERLAP = 10  # runs of one schedule going at once, at most (concurrency: allow)


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


def overlap_cap(schedule: ScheduleSpec) -> int:
    """Runs that may go at once under `allow`: MAX_OVERLAP, and fewer with a shorter history
    (each needs a lane and a record that is not pruned while it goes)."""
    return min(MAX_OVERLAP, schedule.keep)


def decide(schedule: ScheduleSpec, since: float, running: int, now: float) -> Decision:
    """`running`: how many runs of the schedule still go (0 or 1 but under `allow`)."""
    cron = schedule.parsed()
    ticks = ticks_between(cron, since, now, LIMIT)
    due_ticks = [t for t in ticks if now - t <= schedule.deadline]
    missed = [t for t in ticks if now - t > schedule.deadline] + due_ticks[:-1]
    wake = next_tick(cron, ticks[-1] if ticks else max(since, now))
    due = due_ticks[-1] if due_ticks else None
    action = Action.NONE
    if due is not None:
        if not running or (schedule.policy == "allow" and running < overlap_cap(schedule)):
            action = Action.FIRE
        elif schedule.policy == "replace":
            action = Action.REPLACE
        else:
            action = Action.SKIP
    return Decision(due, action, missed[-schedule.keep :], len(missed), wake)


def lane(used: set[int], keep: int) -> int | None:
    """The lane of a new run: the lowest of 0..keep not held by a record that stays, None
    if every one is (not reached: `prune` leaves at most `keep` records, and runs still
    going are fewer than `keep`; the caller then skips the tick rather than share slots)."""
    free = sorted(set(range(keep + 1)) - used)
    return free[0] if free else None


def prune(records: list[tuple[float, bool]], current: float | None, adding: int, keep: int) -> list[float]:
    """The ticks whose records go so that `keep` stay once `adding` are written: the oldest
    first, never the current run's (`current`) nor one still going (`records`: (tick,
    ended)). A pruned run's containers go with it."""
    excess = len(records) + adding - keep
    old = sorted(t for t, ended in records if ended and t != current)
    return old[: max(0, excess)]
