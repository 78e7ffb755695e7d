"""The job controller: a `kind: job` service's progress, one pass at a time. Pure.

Each completion is an index `i` in 1..completions and owns the task slot `tasks/<job>/<i>`.
The agent never restarts a job's task (`node.agent.restart.policy_of`); its status ends
*terminal*, `exited` with code 0 or `failed` with another. `step` reads what the pass
observed and returns what to do:

- **count**: a task whose status is terminal and whose id is not yet in the record's
  `counted` is an outcome: exit 0 -> its index succeeded; anything else is a failure
  (the job's `failures` + 1) and the index waits `backoff(failures)` before a retry.
  The new record is written (fenced, compared) *before* any task replaces that one,
  so a leader that dies in between counts it once: the next pass finds its id counted.
- **hide**: finished tasks (counted) are kept in `tasks/` for their logs but hidden from
  the scheduler: they reserve no capacity and are not moved when their node goes.
- **start**: the slots that may get a new task this pass: indices not succeeded, without
  a live task, past their back-off, lowest first, while fewer than `parallelism` run;
  and slots whose task's node is gone (the scheduler moves it: that task never reported
  an outcome, so it is retried elsewhere and not counted as a failure).
- **lowered completions**: a task in a slot above `completions` (lowered while the job
  runs) is unassigned, and its outcome is not counted, as Kubernetes does for an Indexed
  Job whose completions are lowered (elastic Indexed Jobs: pods of an index out of range
  are removed, and their success counts for nothing); an outcome counted before the
  lowering stays in `counted`, its index's success counts no more.
- **end**: every index 1..completions succeeded -> succeeded; `failures` > `retries`, or still running
  `active_deadline` after the start -> failed, and its live tasks are unassigned.
  `ttl_after_finished` after the end, every task of the job is unassigned.

No I/O, no clock: the caller passes `now`. A record of another incarnation (uid) is
started afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from node.model.domain import Assignment, TaskState, TaskStatus
from node.model.jobs import IndexState, JobRecord, JobState
from node.model.spec import ServiceSpec
from node.model.spec_job import JobSpec, backoff


@dataclass
class JobStep:
    record: JobRecord
    start: set[int] = field(default_factory=set)
    hide: set[int] = field(default_factory=set)
    stop: list[Assignment] = field(default_factory=list)
    wake: float | None = None  # when a pass is due with no event (back-off, deadline, ttl)
    ended: str = ""  # "succeeded" / "failed" when the job ended in this step
    stale: bool = False  # its record was written meanwhile (set by the caller): nothing acted on


def fresh(service: str, uid: str, now: float) -> JobRecord:
    return JobRecord(service, uid, started_at=now)


def _outcome(task: Assignment, status: TaskStatus | None) -> TaskStatus | None:
    if status is None or status.task_id != task.task_id or not status.terminal:
        return None
    return status


def step(
    name: str,
    uid: str,
    spec: ServiceSpec,
    stored: JobRecord | None,
    tasks: Mapping[int, Assignment],
    status: Callable[[str], TaskStatus | None],
    alive: Collection[str],
    now: float,
) -> JobStep:
    """One pass of one job; see the module docstring."""
    job = spec.job or JobSpec()
    record = stored if stored is not None and stored.uid == uid else fresh(name, uid, now)
    indexes: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in record.indexes.items()}
    counted, failures = list(record.counted), record.failures
    seen = set(counted)
    out = JobStep(record)
    live: dict[int, Assignment] = {}  # tasks without an outcome (running, starting, lost)
    running = record.state == JobState.RUNNING
    for slot, task in sorted(tasks.items()):
        if task.task_id in seen:
            out.hide.add(slot)
            continue
        if slot > job.completions:  # completions lowered: an index out of range, not counted
            out.hide.add(slot)
            out.stop.append(task)
            continue
        done = _outcome(task, status(task.task_id))
        entry = indexes.setdefault(slot, {"state": IndexState.PENDING.value, "attempts": 0})
        if done is None:
            live[slot] = task
            if running:
                entry.update(state=IndexState.RUNNING.value, task=task.task_id, node=task.node)
            continue
        out.hide.add(slot)
        if not running:
            continue  # ended meanwhile: not counted
        counted.append(task.task_id)
        seen.add(task.task_id)
        entry.update(task=task.task_id, node=task.node, exit_code=done.exit_code)
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        if done.state == TaskState.EXITED and done.exit_code == 0:
            entry["state"] = IndexState.SUCCEEDED.value
        else:
            failures += 1
            entry.update(state=IndexState.BACKOFF.value, retry_at=now + backoff(job, failures))
            entry["message"] = done.message
    state, message, finished = record.state, record.message, record.finished_at
    succeeded = sum(
        1 for i, e in indexes.items() if i <= job.completions and e.get("state") == IndexState.SUCCEEDED
    )
    if running:
        deadline = record.started_at + job.active_deadline if job.active_deadline else None
        if succeeded >= job.completions:
            state, message = JobState.SUCCEEDED.value, f"{succeeded} of {job.completions} completed"
        elif failures > job.retries:
            state = JobState.FAILED.value
            message = f"{failures} failure(s), more than retries ({job.retries})"
        elif deadline is not None and now >= deadline:
            state = JobState.FAILED.value
            message = f"still running after active_deadline ({job.active_deadline:g}s)"
        elif deadline is not None:
            out.wake = deadline
        if state != JobState.RUNNING:
            finished, out.ended = now, state
            for entry in indexes.values():
                if entry.get("state") in (IndexState.BACKOFF, IndexState.RUNNING):
                    entry["state"] = IndexState.FAILED.value
                    entry.pop("retry_at", None)
    cleaned = False
    if state == JobState.RUNNING:
        _starts(job, indexes, live, alive, now, out)
    else:
        out.stop += live.values()  # every pass until they are gone: a lost write is made again
        ttl = job.ttl_after_finished
        cleaned = ttl is not None and now >= finished + ttl
        if cleaned:
            out.stop = list(tasks.values())
        elif ttl is not None:
            out.wake = finished + ttl
    out.record = replace(
        record,
        state=state,
        message=message,
        finished_at=finished,
        failures=failures,
        counted=counted,
        indexes={str(k): v for k, v in sorted(indexes.items())},
        cleaned=cleaned,
    )
    return out


def _starts(
    job: JobSpec,
    indexes: dict[int, dict[str, Any]],
    live: Mapping[int, Assignment],
    alive: Collection[str],
    now: float,
    out: JobStep,
) -> None:
    out.start = {slot for slot, task in live.items() if task.node not in alive}  # moved, not counted
    room = job.parallelism - len(live)
    wakes = [out.wake] if out.wake is not None else []
    for index in range(1, job.completions + 1):
        entry = indexes.get(index, {})
        if index in live or entry.get("state") == IndexState.SUCCEEDED:
            continue
        retry_at = float(entry.get("retry_at", 0.0))
        if retry_at > now:
            wakes.append(retry_at)
            continue
        if room <= 0:
            break
        out.start.add(index)
        room -= 1
    out.wake = min(wakes) if wakes else None


def summary(record: JobRecord, completions: int) -> dict[str, int]:
    """Counts per index state (for `job ls`), indices without an entry as pending."""
    counts = {s.value: 0 for s in IndexState}
    for index in range(1, completions + 1):
        counts[str(record.indexes.get(str(index), {}).get("state", IndexState.PENDING.value))] += 1
    return counts
