"""The leader's shell around `leader.schedules`: record each tick, fenced, then act on it.

Called by `leader.jobrun.JobRunner.prepare` at every pass, before the jobs are stepped.
For each scheduled job (`kind: job` with `schedule:`) of the current incarnation:

1. The run record of every run whose job record ended (the latest in `jobs/<service>`,
   earlier ones in `jobruns/<service>/<tick>`) gets its outcome (succeeded / failed),
   its end and its tasks (compared on its mod revision). `finish` does it in the pass
   the run ends; this is for a leader that died in between.
2. `schedules.decide` says which ticks since the last recorded one are missed, and
   whether the latest is fired, skipped or replaces the running run (`allow`: fired
   while fewer than `schedules.overlap_cap` runs go).
3. ONE transaction, fenced by the leader's epoch, writes all of it: a create-only record
   per decided tick (`Compare(create == 0)`: a tick recorded once is never decided
   again), and for a fired tick the run's fresh job record `jobs/<service>` (uid
   `<service uid>#<tick>`, compared on the stored record's mod revision) in a lane of
   its own (`schedules.lane`, decision 69), while the previous job record moves to
   `jobruns/<service>/<tick>` (create-only; marked failed if `replace` ends it, so that
   stepping it stops its tasks). The new record's `counted` holds the ids of the tasks
   left in its lane by a pruned run: no outcome of this one, and their slots get this
   run's tasks; one in a slot above the run's completions (lowered since) is
   unassigned. The oldest ended records beyond `history` are deleted in the same
   transaction, with their `jobruns/` record and the tasks of their lane. A job with
   `volumes:` keeps lane 0 for every run and moves no record (`own_slots`).

Run records (and `jobruns/` records) of another incarnation (a namesake), of a job whose
schedule was taken out, or of a removed service are deleted, fenced, by the next pass.

A `runs/` or `jobruns/` record that cannot be read (`node.model.readable`: written around
the leader) is logged once per mod revision and its job left alone: no tick decided (it
might be that very tick, fired twice), nothing dropped or pruned, and `unreadable` names
the job so that `leader.jobrun` neither starts nor stops its tasks. A job record
(`jobs/<name>`) that cannot be read leaves the schedule alone too (`leader.jobrun` says
why). The other jobs go on. Only a removed service's records go, readable or not, with
its key absent: nothing is left to run from them.

Only after the commit does any task start (`leader.jobs` steps the new record, the
scheduler places its tasks). A leader killed before the commit leaves no trace: the
next leader decides the tick again and fires it if it is still within the deadline; one
killed after it leaves the records: the next leader sees the tick recorded and steps the
run. A stale transaction (another leader, or a changed record) writes nothing: the next
pass decides again from what is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace

from leader import crashpoint, schedules
from leader.schedules import Action
from node.model import readable
from node.model.cron import CronError
from node.model.domain import Assignment, ServiceRecord, UnreadableRecord
from node.model.jobs import IndexState, JobRecord, JobState
from node.model.keys import Keys
from node.model.runs import Outcome, RunRecord, lane_of, run_of, run_uid, slot
from node.model.spec_schedule import own_slots, scheduled
from node.store import KV, Compare, Delete, Fenced, Put, Store, fence
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)


class ScheduleRunner:
    def __init__(self, store: Store, keys: Keys, epoch: int, events: EventLog) -> None:
        self.store, self.keys, self.epoch, self.events = store, keys, epoch, events
        self.wakes: dict[str, float] = {}  # job -> unix seconds of its next tick
        self.stuck: dict[str, str] = {}  # job -> why its schedule cannot run (said once)
        self.crash_point = crashpoint.reached
        self.unreadable: set[str] = set()  # jobs with a run record that cannot be read (this pass)
        self._said: dict[str, int] = {}  # key of an unreadable record -> mod revision logged

    def next_wake(self) -> float | None:
        return min(self.wakes.values()) if self.wakes else None

    async def tick(
        self,
        services: Mapping[str, ServiceRecord],
        jobs: Mapping[str, KV],
        tasks: Mapping[str, Iterable[Assignment]],
        now: float,
    ) -> bool:
        """One pass over the scheduled jobs; True when something was written."""
        kvs, _ = await self.store.range(self.keys.runs)
        self.unreadable = set()
        present = {kv.key for kv in kvs}
        runs: dict[str, list[tuple[RunRecord, int]]] = {}
        for kv in kvs:
            name, _, tick = self.keys.tail(kv.key, self.keys.runs).partition("/")
            runs.setdefault(name, [])
            try:
                record = readable.run(name, tick, kv.value)
            except UnreadableRecord as exc:
                self._unreadable(name, kv, exc)
                continue
            runs[name].append((record, kv.mod_revision))
        sides = await self.earlier_runs(present)
        for key in self._said.keys() - present:  # said once per revision, while the key is there
            del self._said[key]
        wrote = False
        for name in sorted((runs.keys() | sides.keys() | self.unreadable) - services.keys()):
            wrote |= await self._forget(name)
        for name in self.stuck.keys() - services.keys():
            del self.stuck[name]
        self.wakes = {}
        for name, service in sorted(services.items()):
            if name in self.unreadable:  # a tick of it might be the one that cannot be read
                continue
            timed = scheduled(service.spec) is not None
            foreign = [r for r in runs.get(name, []) if r[0].uid != service.uid or not timed]
            ours = sides.get(name, {})
            strays = {t: m for t, (j, m) in ours.items() if not timed or run_of(service.uid, j.uid) != t}
            if foreign or strays:  # a namesake's, or the schedule was taken out of the spec
                wrote |= await self._drop(name, foreign, strays)
            if not timed:
                continue
            mine = sorted((r for r in runs.get(name, []) if r[0].uid == service.uid), key=lambda r: r[0].tick)
            earlier = {t: r for t, r in sides.get(name, {}).items() if t not in strays}
            held = list(tasks.get(name, ()))
            stored = jobs.get(name)
            try:
                job = readable.job(name, stored.value) if stored is not None else None
            except UnreadableRecord:  # left alone (`leader.jobrun` says why)
                continue
            mod = stored.mod_revision if stored is not None else 0
            try:
                wrote |= await self._one(service, job, mod, earlier, mine, held, now)
            except CronError as exc:  # stored before the API asked for a tick ahead, or none since
                self._stuck(name, f"{name}: schedule not run: {exc}; apply a cron that fires")
                continue
            self.stuck.pop(name, None)
        return wrote

    def _stuck(self, name: str, message: str) -> None:
        """A schedule that cannot run: said once (an event), the other schedules and the
        leader's pass go on."""
        if self.stuck.get(name) != message:
            self.stuck[name] = message
            log.warning("%s", message)
            self.events.emit("schedule.stuck", message, service=name)

    def _unreadable(self, name: str, kv: KV, exc: UnreadableRecord) -> None:
        """A record of job `name` cannot be read: the job is left alone (said once per revision)."""
        self.unreadable.add(name)
        if self._said.get(kv.key) != kv.mod_revision:
            self._said[kv.key] = kv.mod_revision
            log.warning("%s; the job is left alone", exc)

    async def earlier_runs(
        self, present: set[str] | None = None
    ) -> dict[str, dict[int, tuple[JobRecord, int]]]:
        """`jobruns/`: the job records of runs that are not the latest, by job and tick. A job
        with one that cannot be read goes in `unreadable`; `present` gets the keys read."""
        kvs, _ = await self.store.range(self.keys.jobruns)
        out: dict[str, dict[int, tuple[JobRecord, int]]] = {}
        for kv in kvs:
            name, _, tick = self.keys.tail(kv.key, self.keys.jobruns).partition("/")
            if present is not None:
                present.add(kv.key)
            sides = out.setdefault(name, {})
            try:
                if not tick.isascii() or not tick.isdigit():
                    raise UnreadableRecord(
                        f"the run record {name}/{tick[:20]} cannot be read: its tick is no number"
                    )
                sides[int(tick)] = (readable.job(name, kv.value), kv.mod_revision)
            except UnreadableRecord as exc:
                self._unreadable(name, kv, exc)
        return out

    async def _one(
        self,
        service: ServiceRecord,
        job: JobRecord | None,
        job_mod: int,
        sides: Mapping[int, tuple[JobRecord, int]],
        mine: list[tuple[RunRecord, int]],
        held_tasks: list[Assignment],
        now: float,
    ) -> bool:
        """`job`: the stored `jobs/<name>` record (None: none), at mod revision `job_mod`."""
        schedule = scheduled(service.spec)
        assert schedule is not None
        name = service.name
        current = run_of(service.uid, job.uid) if job is not None else None
        by_tick = {int(r.tick): (r, mod) for r, mod in mine}
        records = dict(sides)  # tick -> the job record of every run of this incarnation
        if job is not None and current is not None:
            records[current] = (job, job_mod)
        compares = [fence(self.keys.leader, self.epoch), Compare(self.keys.service(name), "mod", ">", 0)]
        ops: list[Put | Delete] = []
        for tick, (rec, _) in sorted(records.items()):  # outcomes a dead leader did not write
            run = by_tick.get(tick)
            if run is not None and rec.state != JobState.RUNNING and run[0].outcome == Outcome.RUNNING:
                done = _finished(run[0], rec, rec.state, rec.finished_at or now)
                compares.append(Compare(self.keys.run(name, tick), "mod", "==", run[1]))
                ops.append(Put(self.keys.run(name, tick), done.to_json()))
                by_tick[tick] = (done, run[1])
        going = sum(1 for rec, _ in records.values() if rec.state == JobState.RUNNING)
        d = schedules.decide(schedule, _since(mine, service, schedule.key), going, now)
        self.wakes[name] = d.wake
        late = "not fired within starting_deadline"
        key = schedule.key
        new = [
            RunRecord(name, service.uid, t, Outcome.MISSED.value, now, now, late, schedule=key)
            for t in d.missed
        ]
        acting = d.due is not None and d.action is not Action.NONE
        ended = [(float(t), r.outcome != Outcome.RUNNING) for t, (r, _) in by_tick.items()]
        pruned = set(schedules.prune(ended, current, len(new) + acting, schedule.keep))
        used = {r.lane for t, (r, _) in by_tick.items() if r.fired and t not in pruned}
        own = own_slots(service.spec)  # else every run in lane 0, as the slots' volumes are kept
        lane = None
        if d.action in (Action.FIRE, Action.REPLACE):
            lane = schedules.lane(used, schedule.keep) if own else 0
        if d.action in (Action.FIRE, Action.REPLACE) and lane is None:  # see `schedules.lane`
            d = replace(d, action=Action.SKIP)
        if d.action is Action.SKIP and d.due is not None:
            busy = (
                f"{going} run(s) still going (concurrency: allow, at most {schedules.overlap_cap(schedule)})"
                if schedule.policy == "allow"
                else "the previous run was still going (concurrency: forbid)"
            )
            new.append(
                RunRecord(name, service.uid, d.due, Outcome.SKIPPED.value, now, now, busy, schedule=key)
            )
        elif lane is not None and d.due is not None:
            new.append(
                RunRecord(name, service.uid, d.due, Outcome.RUNNING.value, now, lane=lane, schedule=key)
            )
            completions = service.spec.job.completions if service.spec.job else 1
            mine_lane = [t for t in held_tasks if lane_of(t.slot) == lane]
            held = sorted({t.task_id for t in mine_lane})  # a pruned run's: no outcome of this one
            for t in mine_lane:  # slots the run has no index for (completions lowered): unassigned
                if t.slot > slot(lane, completions):
                    ops.append(Delete(self.keys.task(name, t.slot)))
            fresh = JobRecord(name, run_uid(service.uid, d.due), started_at=now, counted=held, lane=lane)
            compares.append(Compare(self.keys.job(name), "mod", "==", job_mod))
            ops.append(Put(self.keys.job(name), fresh.to_json()))
            if job is not None and current is not None and current in by_tick:
                old, mod = by_tick[current]
                if d.action is Action.REPLACE and old.outcome == Outcome.RUNNING:
                    gone = _finished(old, job, Outcome.REPLACED.value, now)
                    compares.append(Compare(self.keys.run(name, old.tick), "mod", "==", mod))
                    ops.append(Put(self.keys.run(name, old.tick), gone.to_json()))
                    job = _stopped(job, now)  # in lane 0 shared: its tasks are counted above instead
                if own:  # stepped from there while it goes, kept (its containers too) with its record
                    side = self.keys.jobrun(name, current)
                    compares.append(Compare(side, "create", "==", 0))
                    ops.append(Put(side, job.to_json()))
        for r in new:
            key = self.keys.run(name, r.tick)
            compares.append(Compare(key, "create", "==", 0))
            ops.append(Put(key, r.to_json()))
        for at in sorted(int(p) for p in pruned):  # its records, its containers (unless its lane is reused)
            ops.append(Delete(self.keys.run(name, at)))
            if at in sides:
                ops.append(Delete(self.keys.jobrun(name, at)))
            gone = by_tick[at][0]
            if gone.fired and gone.lane not in used and gone.lane != lane:
                slots = [a.slot for a in held_tasks if lane_of(a.slot) == gone.lane]
                ops += [Delete(self.keys.task(name, s)) for s in slots]
        if not ops:
            return False
        result = await self.store.txn(compares, _unique(ops))
        if not result.succeeded:
            await self._check_fence()
            log.info("schedule of %s: records changed meanwhile; decided again on the next pass", name)
            self.wakes[name] = now + 0.5
            return False
        if lane is not None:
            self.crash_point(crashpoint.SCHEDULE_FIRED)
        self._events(name, d)
        return True

    async def finish(self, service: ServiceRecord, job: JobRecord) -> None:
        """A run's job record just ended (this pass): its run record gets the outcome now, not
        at the next tick (`_one` does it then if this leader dies before)."""
        tick = run_of(service.uid, job.uid)
        if tick is None:
            return
        key = self.keys.run(service.name, tick)
        kv = await self.store.get(key)
        if kv is None:
            return
        try:
            run = readable.run(
                service.name, self.keys.tail(key, self.keys.service_runs(service.name)), kv.value
            )
        except UnreadableRecord as exc:  # not overwritten: the next pass leaves the job alone
            self._unreadable(service.name, kv, exc)
            return
        if run.outcome != Outcome.RUNNING:
            return
        done = _finished(run, job, job.state, job.finished_at)
        compares = [fence(self.keys.leader, self.epoch), Compare(key, "mod", "==", kv.mod_revision)]
        if not (await self.store.txn(compares, [Put(key, done.to_json())])).succeeded:
            await self._check_fence()

    def _events(self, name: str, d: schedules.Decision) -> None:
        if d.missed_count:
            self.events.emit(
                "schedule.missed",
                f"{name}: {d.missed_count} tick(s) missed (not fired within starting_deadline), "
                f"the last at {d.missed[-1]:.0f}",
                service=name,
            )
        if d.action is Action.SKIP:
            self.events.emit(
                "schedule.skipped", f"{name}: tick {d.due:.0f} skipped, the previous run goes", service=name
            )
        elif d.action is not Action.NONE:
            what = "fired" if d.action is Action.FIRE else "fired, replacing the previous run"
            self.events.emit("schedule.fired", f"{name}: tick {d.due:.0f} {what}", service=name)

    async def _drop(self, name: str, records: list[tuple[RunRecord, int]], sides: Mapping[int, int]) -> bool:
        compares = [fence(self.keys.leader, self.epoch)]
        compares += [Compare(self.keys.run(name, r.tick), "mod", "==", mod) for r, mod in records]
        compares += [Compare(self.keys.jobrun(name, t), "mod", "==", mod) for t, mod in sides.items()]
        ops = [Delete(self.keys.run(name, r.tick)) for r, _ in records]
        result = await self.store.txn(compares, ops + [Delete(self.keys.jobrun(name, t)) for t in sides])
        if not result.succeeded:
            await self._check_fence()
        return result.succeeded

    async def _forget(self, name: str) -> bool:
        """The runs of a removed service: deleted, fenced, while its key is absent."""
        compares = [fence(self.keys.leader, self.epoch), Compare(self.keys.service(name), "mod", "==", 0)]
        ops = [
            Delete(self.keys.service_runs(name), prefix=True),
            Delete(self.keys.service_jobruns(name), prefix=True),
        ]
        result = await self.store.txn(compares, ops)
        if not result.succeeded:
            await self._check_fence()
        return result.succeeded

    async def _check_fence(self) -> None:
        leader = await self.store.get(self.keys.leader)
        if leader is None or leader.create_revision != self.epoch:
            raise Fenced(f"leadership at epoch {self.epoch} is over; write refused")


def _unique(ops: list[Put | Delete]) -> list[Put | Delete]:
    """etcd refuses a key twice in one transaction: a Put wins over a Delete of its key."""
    puts = {op.key for op in ops if isinstance(op, Put)}
    seen: set[str] = set()
    out: list[Put | Delete] = []
    for op in ops:
        if isinstance(op, Delete) and (op.key in puts or op.key in seen):
            continue
        seen.add(op.key)
        out.append(op)
    return out


def _stopped(job: JobRecord, at: float) -> JobRecord:
    """A run replaced by a later tick: failed, so that stepping it stops its tasks."""
    going = (IndexState.RUNNING, IndexState.BACKOFF)
    failed = IndexState.FAILED.value
    indexes = {k: {**v, "state": failed} if v.get("state") in going else v for k, v in job.indexes.items()}
    message = "replaced by a later tick"
    return replace(job, state=JobState.FAILED.value, message=message, finished_at=at, indexes=indexes)


def _finished(run: RunRecord, job: JobRecord, outcome: str, at: float) -> RunRecord:
    tasks = sorted({str(e["task"]) for e in job.indexes.values() if e.get("task")})
    message = job.message if outcome != Outcome.REPLACED else "replaced by a later tick"
    return replace(run, outcome=outcome, finished_at=at, message=message, tasks=tasks)


def _since(mine: list[tuple[RunRecord, int]], service: ServiceRecord, key: str) -> float:
    """Ticks after this are due. The last tick recorded under this very schedule, when
    there is one: an apply that changed something else must not skip a tick that had not
    fired yet (decision 57: the version that set the schedule counts). Otherwise the later
    of the last tick and this version's apply: a new or changed schedule starts then,
    without a burst of catch-up runs."""
    same = [r.tick for r, _ in mine if r.schedule == key]
    if same:
        return max(same)
    return max([r.tick for r, _ in mine] + [service.updated_at])
