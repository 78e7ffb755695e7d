"""A job's progress in etcd (`jobs/<service>`) and the words of its states (issue 18).

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from node.model.domain import Record


class JobState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class IndexState(StrEnum):
    PENDING = "pending"  # no task yet (waiting for parallelism)
    RUNNING = "running"  # a task is assigned and has not finished
    BACKOFF = "backoff"  # its last task failed; tried again at `retry_at`
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # its last task failed and the job is over


@dataclass(frozen=True)
class JobRecord(Record):
    """`jobs/<service>`: a job's progress, written by the leader only (fenced), before it
    acts on it: a task's outcome is in `counted` before its slot gets another task, so a
    leader that dies between the two counts it once. `indexes`: "<index>" -> {state,
    attempts, task, node, exit_code, retry_at}."""

    service: str
    uid: str
    state: str = JobState.RUNNING.value
    started_at: float = 0.0
    finished_at: float = 0.0
    failures: int = 0
    message: str = ""
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)
    counted: list[str] = field(default_factory=list)  # task ids whose outcome is recorded
    cleaned: bool = False  # ttl_after_finished passed: its tasks were unassigned
    lane: int = 0  # a scheduled run's slot range (`node.model.runs.slot`); 0: slots 1..completions
