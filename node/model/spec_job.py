"""The `kind: job` part of a service spec (issue 18): `job` and its record in etcd.

A job's tasks run to completion instead of forever. `job.completions` tasks must exit 0,
at most `job.parallelism` at once; a task that exits non-zero (or cannot be started, as
the agent reports it) is a failure, and after `job.retries` failures in all the job is
failed. Each failure waits `job.backoff`, doubled per failure, at most `MAX_BACKOFF`,
before its index is tried again. `active_deadline` fails a job still running that long
after it started; `ttl_after_finished` unassigns a finished job's tasks (their
containers and logs go; the job's record stays until the service is removed).

Each completion is an *index* (1..completions), the task slot `tasks/<job>/<index>`:
`shoal job status` shows each index's state, attempts, task and exit code.

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

from node.model.spec_lifecycle import Duration, ShortDuration, _duration, _duration_within

MAX_COMPLETIONS = 1000
MAX_RETRIES = 100
MAX_BACKOFF = 360.0  # s: Kubernetes' cap for a Job's back-off
_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
_Deadline = Annotated[float, BeforeValidator(_duration), _duration_within(1, 7 * 86400)]


def _fail(message: str, at: tuple[Any, ...] = ()) -> PydanticCustomError:
    return PydanticCustomError("spec", "{msg}", {"msg": message, "at": at})


def _within(lo: int, hi: int) -> AfterValidator:
    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise _fail(f"must be between {lo} and {hi}, got {v}")
        return v

    return AfterValidator(check)


class JobSpec(BaseModel):
    """How a `kind: job` runs: every field has a default, so `kind: job` alone runs once."""

    model_config = _STRICT
    completions: Annotated[int, _within(1, MAX_COMPLETIONS)] = 1  # tasks that must exit 0
    parallelism: Annotated[int, _within(1, MAX_COMPLETIONS)] = 1  # tasks running at once, at most
    retries: Annotated[int, _within(0, MAX_RETRIES)] = 0  # failures allowed before the job fails
    backoff: ShortDuration = 10.0  # s before the first retry; doubled per failure, <= MAX_BACKOFF
    active_deadline: _Deadline | None = None  # s from the start: still running then -> failed
    ttl_after_finished: Duration | None = None  # s after it ended: its tasks are unassigned


def check_job_fields(spec: Any) -> None:
    """`ServiceSpec`'s rule for the job fields (called by its validator)."""
    if spec.kind != "job":
        if spec.job is not None:
            raise _fail("job settings need kind: job", ("job",))
        return
    if spec.mode == "global":
        raise _fail("a job cannot be mode: global; use job.parallelism", ("mode",))
    if spec.replicas != 1:
        raise _fail("a job has no replicas; use job.completions and job.parallelism", ("replicas",))


def is_job(spec: Any) -> bool:
    return getattr(spec, "kind", None) == "job"


def rollback_replicas(target: Any, current: Any) -> int:
    """The replica count of a rollback to `target` from `current` (specs): the current one
    (roll back what runs, not how many), unless either is a job, which has none to keep:
    then `target`'s own (a job's 1; a service's, rolled back to from a job)."""
    return int(target.replicas if is_job(target) or is_job(current) else current.replicas)


def backoff(spec: JobSpec, failures: int) -> float:
    """Seconds before an index is tried again after the job's `failures`-th failure."""
    return min(max(spec.backoff, 0.0) * 2 ** max(failures - 1, 0), max(MAX_BACKOFF, spec.backoff))
