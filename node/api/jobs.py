"""`shoal.v1.Jobs`: the progress of `kind: job` services (issue 18), read from etcd.

What the leader recorded in `jobs/<name>` (`node.model.jobs.JobRecord`) for the service's
current incarnation; a job the leader has not stepped yet is `pending`. Read-only.
A scheduled job shows its current run (the record's uid is `<service uid>#<tick>`;
before its first tick it is `pending`), and `ListRuns` its runs (`runs/<name>/`).
"""

from __future__ import annotations

import contextlib
import time

import grpc

from node.api.checks import check_name
from node.api.server import handle
from node.model.cron import CronError, next_tick
from node.model.domain import ServiceRecord, readable_services
from node.model.errors import FailedPrecondition, NotFound
from node.model.jobs import IndexState, JobRecord
from node.model.keys import Keys
from node.model.runs import RunRecord, run_of
from node.model.spec_job import JobSpec, is_job
from node.model.spec_schedule import scheduled
from node.pb import jobs_pb2, jobs_pb2_grpc
from node.store import Store


def job_info(service: ServiceRecord, record: JobRecord | None) -> jobs_pb2.JobInfo:
    job = service.spec.job or JobSpec()
    schedule = scheduled(service.spec)
    if record is not None and record.uid != service.uid and run_of(service.uid, record.uid) is None:
        record = None  # a namesake's, before the leader's next pass replaces it
    info = jobs_pb2.JobInfo(
        name=service.name,
        state=record.state if record else "pending",
        completions=job.completions,
        parallelism=job.parallelism,
        retries=job.retries,
        version=service.version,
    )
    if schedule is not None:
        info.schedule = f"{schedule.cron} ({schedule.timezone or 'UTC'})"
        with contextlib.suppress(CronError):  # no tick in 8 years: left 0
            info.next_tick = next_tick(schedule.parsed(), time.time())
    if record is None:
        return info
    info.failures, info.message = record.failures, record.message
    info.started_at, info.finished_at = record.started_at, record.finished_at
    for index in range(1, job.completions + 1):
        e = record.indexes.get(str(index), {})
        state = str(e.get("state", IndexState.PENDING.value))
        info.succeeded += state == IndexState.SUCCEEDED
        info.running += state == IndexState.RUNNING
        info.indexes.append(
            jobs_pb2.JobIndex(
                index=index,
                state=state,
                attempts=int(e.get("attempts", 0)),
                task_id=str(e.get("task", "")),
                node=str(e.get("node", "")),
                exit_code=int(e.get("exit_code", 0)),
                retry_at=float(e.get("retry_at", 0.0)),
                message=str(e.get("message", ""))[:500],
            )
        )
    return info


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    def __init__(self, store: Store, keys: Keys) -> None:
        self.store, self.keys = store, keys

    async def _record(self, name: str) -> JobRecord | None:
        kv = await self.store.get(self.keys.job(name))
        return JobRecord.from_json(kv.value) if kv is not None else None

    @handle
    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        kvs, _ = await self.store.range(self.keys.services)
        services = [s for s in readable_services(kv.value for kv in kvs) if is_job(s.spec)]
        records, _ = await self.store.range(self.keys.jobs)
        stored = {self.keys.tail(kv.key, self.keys.jobs): JobRecord.from_json(kv.value) for kv in records}
        jobs = [job_info(s, stored.get(s.name)) for s in sorted(services, key=lambda s: s.name)]
        return jobs_pb2.ListJobsResponse(jobs=jobs)

    @handle
    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.JobInfo:
        kv = await self.store.get(self.keys.service(check_name(request.name)))
        if kv is None:
            raise NotFound(f"no job named {request.name!r}; `shoal job ls` lists them")
        service = ServiceRecord.from_json(kv.value)
        if not is_job(service.spec):
            raise FailedPrecondition(f"{request.name!r} is a service, not a job (its spec has no kind: job)")
        return job_info(service, await self._record(request.name))

    @handle
    async def ListRuns(
        self, request: jobs_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListRunsResponse:
        kv = await self.store.get(self.keys.service(check_name(request.name)))
        if kv is None:
            raise NotFound(f"no job named {request.name!r}; `shoal job ls` lists them")
        service = ServiceRecord.from_json(kv.value)
        if scheduled(service.spec) is None:
            raise FailedPrecondition(
                f"{request.name!r} has no schedule: it has no runs (`shoal job status` shows it)"
            )
        kvs, _ = await self.store.range(self.keys.service_runs(request.name))
        runs = sorted((RunRecord.from_json(kv.value) for kv in kvs), key=lambda r: r.tick)
        return jobs_pb2.ListRunsResponse(
            runs=[
                jobs_pb2.JobRun(
                    tick=r.tick,
                    outcome=r.outcome,
                    fired_at=r.fired_at,
                    finished_at=r.finished_at,
                    message=r.message[:500],
                    task_ids=r.tasks,
                )
                for r in runs
                if r.uid == service.uid
            ]
        )
