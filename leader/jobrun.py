"""The leader's shell around the job controller (`leader.jobs`), run inside each pass.

`prepare` reads `jobs/`, steps every `kind: job` service and writes each changed record
in a fenced transaction that compares the record's mod revision, *before* the pass
plans: an outcome is stored before the slot it frees gets another task. A stale record
(another leader wrote it) gives that job no start and no stop this pass; the next pass
steps it again from what is stored. It returns the view the scheduler plans on: of each
job, its live tasks and the indices that may start, renumbered 1..k (k its replicas in
the view), and the live tasks of a job that ended above k, so that they are stopped;
finished tasks are hidden. The scheduler thus plans (and charges capacity for) nothing
it would be refused. `shape` maps each job's plan back to real slots and adds its stops.

Records of services that no longer exist are deleted, fenced, while the service key is
absent (an `rm` deletes its job's record too: `node.api.services`).
A record that cannot be read (`node.model.readable.job`: written around the leader,
fields of the wrong type) is logged and its job left alone: `unreadable` names it, and
the loop plans nothing for it and removes none of its tasks, which stay as they are (a
job counted afresh would run its indices again). So is a scheduled job with a run record
(`runs/`, `jobruns/`) that cannot be read (`leader.schedrun`). The others go on.

A scheduled job (`schedule:`, `leader.schedrun`) runs only while its job record is a run
of its current incarnation (uid `<service uid>#<tick>`, written when a tick fires):
before its first tick it has no task, and each tick's fresh record starts it again.
Each run has a lane of slots (decision 69): its record is stepped with its lane's tasks
renumbered to indices, the earlier runs' records (`jobruns/`) as well as the latest, and
all of them make the one view the scheduler plans for the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Protocol

from leader import crashpoint, jobs, schedrun
from leader.scheduler import Move, Plan, Snapshot
from node.model import readable
from node.model.domain import Assignment, ServiceRecord, TaskStatus, UnreadableRecord
from node.model.jobs import JobRecord, JobState
from node.model.keys import Keys
from node.model.runs import LANE, run_of
from node.model.spec_job import is_job
from node.model.spec_schedule import scheduled
from node.store import Compare, Delete, Fenced, Put, Store, fence
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)


class StatusLookup(Protocol):
    def get(self, task_id: str, /) -> TaskStatus | None: ...


class JobRunner:
    def __init__(self, store: Store, keys: Keys, epoch: int, events: EventLog) -> None:
        self.store, self.keys, self.epoch, self.events = store, keys, epoch, events
        self.steps: dict[str, jobs.JobStep] = {}
        self.crash_point = crashpoint.reached  # tests crash the leader between record and start
        self.back: dict[str, dict[int, int]] = {}  # job -> view slot -> its real slot (this pass)
        self.earlier: dict[str, list[jobs.JobStep]] = {}  # job -> its earlier runs' steps (decision 69)
        self.schedules = schedrun.ScheduleRunner(store, keys, epoch, events)  # ticks of scheduled jobs
        self.unreadable: set[str] = set()  # jobs whose record cannot be read: left alone this pass
        self._said: dict[str, int] = {}  # job -> mod revision of the unreadable record logged

    @property
    def active(self) -> bool:
        """A job is running: the loop follows task statuses to see its tasks end."""
        steps = [*self.steps.values(), *(s for e in self.earlier.values() for s in e)]
        return any(s.record.state == JobState.RUNNING for s in steps)

    def succeeded(self) -> set[str]:
        """The jobs whose record (this pass) says succeeded: `depends_on: {job: completed}`."""
        return {name for name, s in self.steps.items() if s.record.state == JobState.SUCCEEDED}

    def next_deadline(self) -> float | None:
        """Seconds until a job needs a pass with no event to wake it (back-off, deadline, ttl)."""
        steps = [*self.steps.values(), *(s for e in self.earlier.values() for s in e)]
        wakes = [s.wake for s in steps if s.wake is not None]
        tick = self.schedules.next_wake()
        wakes += [tick] if tick is not None else []
        return max(0.0, min(wakes) - time.time()) + 0.01 if wakes else None

    async def prepare(
        self,
        services: Mapping[str, ServiceRecord],
        snap: Snapshot,
        statuses: StatusLookup,
        alive: Collection[str],
        now: float,
    ) -> tuple[dict[str, ServiceRecord], Snapshot]:
        named = {name: r for name, r in services.items() if is_job(r.spec)}
        kvs, _ = await self.store.range(self.keys.jobs)
        timed = {name for name, r in named.items() if scheduled(r.spec) is not None}
        held: dict[str, list[Assignment]] = {}
        for (service, _slot), task in snap.tasks.items() if timed else ():
            if service in timed:
                held.setdefault(service, []).append(task)
        current = {self.keys.tail(kv.key, self.keys.jobs): kv for kv in kvs}
        if await self.schedules.tick(services, current, held, now):
            kvs, _ = await self.store.range(self.keys.jobs)  # the runs it started
        sides = await self.schedules.earlier_runs() if timed else {}
        self.steps, self.earlier, self.unreadable = {}, {}, set()
        stored = {self.keys.tail(kv.key, self.keys.jobs): kv for kv in kvs}
        for name in self._said.keys() - stored.keys():  # said once per revision, while it is there
            del self._said[name]
        for name in sorted(stored.keys() - services.keys()):
            await self._forget(name, stored[name].mod_revision)
        if not named:
            return dict(services), snap
        by_job: dict[str, dict[int, Assignment]] = {}
        for (service, slot), task in snap.tasks.items():
            if service in named:
                by_job.setdefault(service, {})[slot] = task
        view = dict(services)
        tasks = {k: t for k, t in snap.tasks.items() if k[0] not in named}
        self.back = {}
        for name, record in named.items():
            kv = stored.get(name)
            try:
                old = readable.job(name, kv.value) if kv is not None else None
            except UnreadableRecord as exc:
                assert kv is not None
                if self._said.get(name) != kv.mod_revision:
                    self._said[name] = kv.mod_revision
                    log.warning("%s; the job is left alone", exc)
                old, alone = None, True
            else:  # a scheduled job with a run record that cannot be read (`schedrun` said why)
                alone = name in timed and name in self.schedules.unreadable
            if alone:  # its tasks stay as they are (the loop leaves it alone)
                self.unreadable.add(name)
                del view[name]
                tasks.update({k: t for k, t in snap.tasks.items() if k[0] == name})
                continue
            runs = [(self.keys.job(name), old, kv.mod_revision if kv else 0, record.uid)]
            if scheduled(record.spec) is not None:
                if old is None or run_of(record.uid, old.uid) is None:
                    view[name] = replace(record, spec=record.spec.model_copy(update={"replicas": 0}))
                    continue  # no run yet: no task (those of an older incarnation are not planned)
                runs = [(self.keys.job(name), old, runs[0][2], old.uid)]
                for tick, (side, mod) in sorted(sides.get(name, {}).items()):  # earlier runs (decision 69)
                    if run_of(record.uid, side.uid) == tick:
                        runs.append((self.keys.jobrun(name, tick), side, mod, side.uid))
            live: dict[int, Assignment] = {}
            wanted: set[int] = set()
            plain = scheduled(record.spec) is None
            if plain:  # a scheduled run's tasks in lanes above 0 (the schedule taken out): unassigned
                live.update({s: t for s, t in by_job.get(name, {}).items() if s > LANE})
            for key, stored_run, mod, uid in runs:
                ours = stored_run is not None and stored_run.uid == uid
                base = stored_run.lane * LANE if stored_run is not None and ours else 0  # its lane's slots
                lane = {s - base: t for s, t in by_job.get(name, {}).items() if base < s <= base + LANE}
                start = None
                if plain and stored_run is not None and not ours:
                    # another incarnation's record, or a scheduled run's: this job starts afresh,
                    # and what its slots hold now is not its own (not counted, replaced)
                    own = sorted(t.task_id for t in lane.values())
                    start = replace(jobs.fresh(name, uid, now), counted=own)
                st = await self._step(
                    name, key, uid, record, stored_run, mod, lane, statuses, alive, now, start
                )
                if key == self.keys.job(name):
                    self.steps[name] = st
                else:
                    self.earlier.setdefault(name, []).append(st)
                # The scheduler sees only what should exist: the live tasks and the indices that
                # may start, renumbered 1..k (so it plans nothing it would then be refused), then
                # live tasks to unassign (a job that ended) above k; `shape` maps slots back.
                mine = {base + i: t for i, t in lane.items() if i not in st.hide}
                live.update(mine)
                if st.record.state == JobState.RUNNING or st.stale:
                    wanted |= set(mine) | {base + i for i in st.start}
            order = sorted(wanted) + sorted(set(live) - wanted)
            self.back[name] = dict(enumerate(order, 1))
            for v, real in enumerate(order, 1):
                if real in live:
                    tasks[(name, v)] = replace(live[real], slot=v)
            view[name] = replace(record, spec=record.spec.model_copy(update={"replicas": len(wanted)}))
        return view, replace(snap, tasks=tasks)

    async def _step(
        self,
        name: str,
        key: str,
        uid: str,
        service: ServiceRecord,
        old: JobRecord | None,
        mod: int,
        tasks: Mapping[int, Assignment],
        statuses: StatusLookup,
        alive: Collection[str],
        now: float,
        start: JobRecord | None = None,
    ) -> jobs.JobStep:
        """One run's record stepped and written (fenced, compared); a stale one acts on nothing.
        `start`: the record to step from instead of `old` (what is stored, compared)."""
        st = jobs.step(name, uid, service.spec, start or old, tasks, statuses.get, alive, now)
        if st.record != old and not await self._write(key, name, st.record, mod):
            st.start, st.stop, st.ended, st.stale = set(), [], "", True
        elif old is not None and st.record.counted != old.counted:
            self.crash_point(crashpoint.JOB_RECORDED)
        if st.ended:
            self.events.emit(f"job.{st.ended}", f"{name}: {st.record.message}", service=name)
            await self.schedules.finish(service, st.record)
        return st

    def shape(self, plans: list[Plan]) -> list[Plan]:
        """Each job's plan with its real slots (`prepare` renumbered them), plus its stops."""
        for plan in plans:
            st, back = self.steps.get(plan.service), self.back.get(plan.service)
            if st is None or back is None:
                continue
            stops = [t for s in (st, *self.earlier.get(plan.service, [])) for t in s.stop]
            mapped = {t.task_id: replace(t, slot=back[t.slot]) for t in (*plan.place, *plan.keep, *plan.stop)}
            for m in plan.moves:
                mapped[m.old.task_id] = replace(m.old, slot=back[m.old.slot])
            plan.place = [mapped[t.task_id] for t in plan.place]
            plan.keep = [mapped[t.task_id] for t in plan.keep]
            plan.moves = [Move(mapped[m.old.task_id], mapped[m.new.task_id], m.why) for m in plan.moves]
            plan.unplaced = [back[slot] for slot in plan.unplaced]
            stopping = {t.task_id for t in plan.stop}
            plan.stop = [mapped[t.task_id] for t in plan.stop]
            plan.stop += [t for t in stops if t.task_id not in stopping]
        return plans

    async def _write(self, key: str, name: str, record: JobRecord, mod: int) -> bool:
        compares = [
            fence(self.keys.leader, self.epoch),
            Compare(key, "mod", "==", mod),
            Compare(self.keys.service(name), "mod", ">", 0),
        ]
        result = await self.store.txn(compares, [Put(key, record.to_json())])
        if not result.succeeded:
            await self._check_fence()
            log.info("job record of %s stale; stepping it again on the next pass", name)
        return result.succeeded

    async def _forget(self, name: str, mod: int) -> None:
        key = self.keys.job(name)
        compares = [
            fence(self.keys.leader, self.epoch),
            Compare(self.keys.service(name), "mod", "==", 0),
            Compare(key, "mod", "==", mod),
        ]
        if not (await self.store.txn(compares, [Delete(key)])).succeeded:
            await self._check_fence()

    async def _check_fence(self) -> None:
        leader = await self.store.get(self.keys.leader)
        if leader is None or leader.create_revision != self.epoch:
            raise Fenced(f"leadership at epoch {self.epoch} is over; write refused")
