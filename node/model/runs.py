"""A scheduled job's runs: `runs/<service>/<tick>`, one record per tick (issue 18 item 3).

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from node.model.domain import Record


class Outcome(StrEnum):
    RUNNING = "running"  # fired; its job record is `jobs/<service>` or, if later ones fired, `jobruns/`
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REPLACED = "replaced"  # a later tick (concurrency: replace) ended it
    SKIPPED = "skipped"  # concurrency: forbid, and the previous run was still going
    MISSED = "missed"  # not fired within starting_deadline of its time (no leader then)

    @property
    def ended(self) -> bool:
        return self is not Outcome.RUNNING


@dataclass(frozen=True)
class RunRecord(Record):
    """One tick's fate. Written create-only by the leader, fenced, *before* the run's job
    record starts its tasks: a tick has one record, so it fires at most once, and the next
    leader finds it. `run` is the run's job-record uid (`<service uid>#<tick>`)."""

    service: str
    uid: str  # the service incarnation's
    tick: float  # the scheduled instant (unix seconds)
    outcome: str = Outcome.RUNNING.value
    fired_at: float = 0.0  # when the leader decided (fired, skipped or found it missed)
    finished_at: float = 0.0
    message: str = ""
    tasks: list[str] = field(default_factory=list)  # the run's tasks (the last one of each index)
    lane: int = 0  # the run's slot range (`slot`); meaningful for a fired run only
    schedule: str = ""  # the schedule that recorded it (`ScheduleSpec.key`; "" from before)

    @property
    def fired(self) -> bool:
        return self.outcome not in (Outcome.SKIPPED, Outcome.MISSED)

    @property
    def run(self) -> str:
        return run_uid(self.uid, self.tick)


LANE = 1000  # slots per lane: MAX_COMPLETIONS (`node.model.spec_job`)


def slot(lane: int, index: int) -> int:
    """The task slot of a run's index: each run has a lane of its own (decision 69), so
    overlapping runs (`concurrency: allow`) and the containers of ended ones do not meet.
    Lane 0 is slots 1..completions, the slots of an unscheduled job."""
    return lane * LANE + index


def lane_of(task_slot: int) -> int:
    return (task_slot - 1) // LANE


def run_uid(service_uid: str, tick: float) -> str:
    """The job-record uid of the run at `tick`: a fresh record per run (`leader.jobs`)."""
    return f"{service_uid}#{int(tick)}"


def run_of(service_uid: str, job_uid: str) -> int | None:
    """The tick of a job record's uid if it is a run of this incarnation, else None."""
    head, sep, tick = job_uid.rpartition("#")
    return int(tick) if sep and head == service_uid and tick.isdigit() else None
