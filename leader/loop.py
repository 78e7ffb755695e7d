"""The leader's reconcile loop: services and nodes in, fenced task assignments out.

Level-triggered: every pass reads the whole desired state (services) and actual
state (alive nodes, assignments) from local mirrors, plans each service with the
pure scheduler and commits the difference. A pass runs on any change under
`services/`, `nodes/` or `tasks/`, and every `resync` seconds regardless, so a
missed or failed pass heals by itself. `Fenced` ends the loop: this node no
longer leads.

A pass is idempotent over what is stored: a decision of several steps is completed
from etcd by the next pass, of this leader or of the next one (a due rollback:
`leader.rollback`), and records of services that no longer exist are removed. A pass
that has nothing to do arms no timer: the rollout deadlines it waits for are only
those still ahead of the last pass.

No stored record ends the loop: one that this build cannot read (a service spec, a
record with a field of the wrong type: `node.model.readable`, a rollout record) is left
out and logged, and acted on safely: an unreadable service or task record leaves that
service alone for the pass (an unreadable task's slot must not look empty: that would
start a duplicate); an unreadable node record or node settings keep the node's tasks
where they are and place nothing new there (`Snapshot.held`). A pass that fails on
anything else is logged and tried again on the next wake. A leader that died on it
would hand leadership to a node that dies on the same record, and so on around the
cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from leader import crashpoint, dependencies, jobrun, rollback, rollout_end, updates
from leader.applier import Applier, Write, writes_for
from leader.incarnation import stale_incarnation
from leader.liveness import DownMarks, Liveness
from leader.pending import PendingReasons
from leader.plan_events import plan_events
from leader.pools import PoolKeeper
from leader.rollout import PROGRESS_DEADLINE, RolloutState, UpdatePolicy, update_policy
from leader.scheduler import Plan, Snapshot, schedule_all, volume_claims
from node.model import readable
from node.model.domain import (
    Assignment,
    Availability,
    NodeInfo,
    RolloutRecord,
    ServiceRecord,
    UnreadableRecord,
    claims_to_drop,
    effective_labels,
)
from node.model.keys import Keys
from node.store import KV, Compare, Delete, Fenced, Put, Store, StoreError, fence
from node.store.cache import PrefixCache
from node.store.mirrors import mirror
from node.telemetry.events import Caused, EventLog, cause_of

log = logging.getLogger(__name__)

MALFORMED = (ValueError, TypeError, AttributeError)  # what parsing a malformed record raises


class LeaderLoop:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        epoch: int,
        events: EventLog,
        resync: float = 5.0,
        liveness: Liveness | None = None,
        down_grace: float = 0.0,
    ) -> None:
        self.store = store
        self.keys = keys
        self.epoch = epoch
        self.events = Caused(events, lambda name: cause_of(self.services.items.get(keys.service(name))))
        self.resync = resync
        self.unreadable: set[str] = set()  # services whose stored spec cannot be read: left alone
        self._refused: dict[str, str] = {}  # service -> why its due rollback is refused (said once)
        self._malformed: dict[str, int] = {}  # rollout key -> mod revision that did not parse (said once)
        self._failing: dict[str, str] = {}  # step -> why it last failed unexpectedly (said once)
        self.applier = Applier(store, keys, epoch)
        self.services = mirror(store, keys.services, "services")
        self.nodes = mirror(store, keys.nodes, "nodes")
        self.tasks = mirror(store, keys.tasks, "tasks")
        self.nodespecs = mirror(store, keys.nodespecs, "nodespecs")
        self.rollouts = mirror(store, keys.rollouts, "rollouts")
        self.statuses = mirror(store, keys.status_all, "statuses")
        self.volumes = mirror(store, keys.volumes, "volumes")  # volume claims: pinned slots
        self._follow_status = False  # wake on status changes only while updates or handoffs run
        self._parsed: dict[str, tuple[int, Assignment | UnreadableRecord]] = {}  # task key -> (mod, record)
        self.unreadable_tasks: dict[str, str] = {}  # task key -> its key's service (this pass)
        self._said: dict[str, int] = {}  # key of an unreadable record -> mod revision logged
        self._pending: dict[str, str] = {}  # service -> the pending reason last reported
        self.down = DownMarks(store, keys, epoch, liveness, events, down_grace)
        self.pending = PendingReasons(store, keys, epoch)  # `pending/<service>`: why replicas wait
        self._simulated: dict[str, tuple[int, bool]] = {}  # node key -> (mod revision, simulated)
        self.held: frozenset[str] = frozenset()  # nodes whose record or settings cannot be read
        self.liveness = liveness
        self._known_nodes: set[str] | None = None
        self._simulated_names: set[str] = set()
        self.passes = 0
        self._last_pass = 0.0  # `now` of the last pass: rollout deadlines up to it are handled
        self.crash_point = crashpoint.reached  # tests crash the leader at named steps
        self.jobs = jobrun.JobRunner(store, keys, epoch, events)  # issue 18: `kind: job` services
        self.pools: PoolKeeper | None = None  # issue 15: node pools (capacity on demand)

    async def run(self) -> None:
        caches = [self.services, self.nodes, self.tasks, self.nodespecs, self.rollouts, self.down.cache]
        caches.append(self.down.restarts)  # a restart mark that expires lets the node's tasks move
        caches.append(self.volumes)
        async with asyncio.TaskGroup() as tg:
            for cache in (*caches, self.statuses):
                tg.create_task(cache.run(), name=f"leader-watch-{cache.name}")
            tg.create_task(self._loop(tuple(caches)), name="leader-reconcile")

    async def _loop(self, caches: tuple[PrefixCache, ...]) -> None:
        wake = asyncio.Event()
        listeners = [c.listener() for c in caches]
        for cache in caches:
            await cache.ready.wait()
        await self.statuses.ready.wait()

        async def relay(ev: asyncio.Event, when: Callable[[], bool] = lambda: True) -> None:
            while True:
                await ev.wait()
                ev.clear()
                if when():
                    wake.set()

        if self.liveness is not None:
            listeners.append(self.liveness.listener())
        relays = [asyncio.create_task(relay(ev)) for ev in listeners]
        relays.append(asyncio.create_task(relay(self.statuses.listener(), lambda: self._follow_status)))
        try:
            while True:
                pending = self._next_deadline()
                try:
                    async with asyncio.timeout(self.resync if pending is None else min(self.resync, pending)):
                        await wake.wait()
                except TimeoutError:
                    pass
                wake.clear()
                await asyncio.sleep(0.02)  # coalesce a burst of watch events
                try:
                    await self.reconcile()
                except Fenced:
                    raise
                except StoreError as exc:
                    log.warning("reconcile failed: %s", exc)
                    await asyncio.sleep(0.5)
                    wake.set()
                except Exception as exc:  # a record no check foresaw: lead on
                    self._unexpected("reconcile", exc)
                else:
                    self._failing.pop("reconcile", None)
        finally:
            for task in relays:
                task.cancel()

    def _next_deadline(self) -> float | None:
        """Seconds until the earliest timer a pass waits for (None: only `resync`)."""
        try:
            waits = (self.down.next_deadline(), self.next_rollout_deadline(), self.jobs.next_deadline())
        except Exception as exc:  # as a failed pass: the resync still comes
            self._unexpected("deadline", exc)
            return None
        self._failing.pop("deadline", None)
        deadlines = [d for d in waits if d is not None]
        return min(deadlines) if deadlines else None

    def _unexpected(self, what: str, exc: Exception) -> None:
        """Log an unexpected failure with its traceback once, then quietly while it repeats."""
        message = f"{what}: {type(exc).__name__}: {exc}"
        if self._failing.get(what) != message:
            log.exception("%s failed; tried again on the next pass", what)
        else:
            log.debug("%s failed again: %s", what, exc)
        self._failing[what] = message

    def rollout_records(self) -> dict[str, RolloutRecord]:
        """The mirror's rollout records by service. One that does not parse is left out
        (logged once per revision): its service's next rollout writes it anew."""
        out: dict[str, RolloutRecord] = {}
        malformed: dict[str, int] = {}
        for kv in self.rollouts.values():
            try:
                r = RolloutRecord.from_json(kv.value)
                RolloutState(r.state)  # an unknown state fails here, not in a step
            except MALFORMED as exc:
                malformed[kv.key] = kv.mod_revision
                if self._malformed.get(kv.key) != kv.mod_revision:
                    log.warning("the rollout record %s cannot be read (%s); left out", kv.key, exc)
                continue
            out[r.service] = r
        self._malformed = malformed
        return out

    def assignments(self, kvs: list[KV] | None = None) -> dict[str, Assignment]:
        """Every task key's record (of the mirror, or `kvs` taken from it), parsed once per mod
        revision (100,000 tasks: no re-parse). One that cannot be read (`node.model.readable`)
        is left out, and its key's service put in `unreadable_tasks`."""
        out: dict[str, Assignment] = {}
        bad: dict[str, str] = {}
        parsed = self._parsed
        for kv in self.tasks.values() if kvs is None else kvs:
            hit = parsed.get(kv.key)
            if hit is None or hit[0] != kv.mod_revision:
                service, _, slot = self.keys.tail(kv.key, self.keys.tasks).partition("/")
                try:
                    record: Assignment | UnreadableRecord = readable.task(service, slot, kv.value)
                except UnreadableRecord as exc:
                    record = exc
                hit = parsed[kv.key] = (kv.mod_revision, record)
            if isinstance(hit[1], UnreadableRecord):
                bad[kv.key] = self.keys.tail(kv.key, self.keys.tasks).partition("/")[0]
                self._say(kv.key, kv.mod_revision, f"{hit[1]}; its service is left alone")
                continue
            out[kv.key] = hit[1]
        if len(parsed) > len(out) + len(bad):
            for key in parsed.keys() - out.keys() - bad.keys():
                del parsed[key]
        self.unreadable_tasks = bad
        return out

    def _say(self, key: str, mod: int, message: str) -> None:
        """Log that the record at `key` cannot be read, once per mod revision."""
        if self._said.get(key) != mod:
            self._said[key] = mod
            log.warning("%s", message)

    def snapshot(self) -> tuple[dict[str, ServiceRecord], Snapshot, dict[str, int]]:
        services = {}
        self.unreadable = set()
        for kv in self.services.values():
            name = self.keys.tail(kv.key, self.keys.services)
            try:
                record = readable.service(name, kv.value)  # of the right types too
            except UnreadableRecord as exc:
                self.unreadable.add(name)
                self._say(kv.key, kv.mod_revision, f"{exc}; its tasks are left as they are")
                continue
            services[record.name] = record
        tasks = {(task.service, task.slot): task for task in self.assignments().values()}
        for name in set(self.unreadable_tasks.values()) & services.keys():
            del services[name]  # a slot of it cannot be read: not planned this pass (no duplicate)
            self.unreadable.add(name)
        held: set[str] = set()
        specs = {}
        for kv in self.nodespecs.values():
            node = self.keys.tail(kv.key, self.keys.nodespecs)
            try:
                specs[node] = readable.nodespec(node, kv.value)
            except UnreadableRecord as exc:
                held.add(node)
                self._say(kv.key, kv.mod_revision, f"{exc}; its tasks stay, nothing new goes there")
        nodes = {}
        excluded = self.down.excluded()
        for kv in self.nodes.values():
            node = self.keys.tail(kv.key, self.keys.nodes)
            try:
                info = readable.node(node, kv.value)
            except UnreadableRecord as exc:
                self._say(kv.key, kv.mod_revision, f"{exc}; its tasks stay, nothing new goes there")
                info = NodeInfo(node, "", 0)  # registered (on its lease): not lost, but held
                held.add(node)
            if info.id not in excluded and not info.not_ready:  # not ready: its engine is not answering
                spec = specs.get(info.id)
                nodes[info.id] = info if spec is None else replace(info, labels=effective_labels(info, spec))
        active = Availability.ACTIVE.value
        availability = {
            node: spec.availability for node, spec in specs.items() if spec.availability != active
        }
        for node in held:  # nothing new goes there; a drain the operator set still moves its tasks
            availability.setdefault(node, Availability.PAUSE.value)
        self.held = frozenset(held)
        mirrors = (self.services, self.tasks, self.nodes, self.nodespecs)
        for key in [k for k in self._said if not any(k in m.items for m in mirrors)]:
            del self._said[key]  # said once per revision while the key is there, not kept after
        for name in [n for n in self._refused if self.keys.service(n) not in self.services.items]:
            del self._refused[name]
        volumes, seen = volume_claims(self.volumes.values(), self.tasks.values())  # seen: key -> mod revision
        snap = Snapshot(nodes, tasks, self.tasks.revision, availability, volumes=volumes, held=self.held)
        return services, snap, seen

    async def reconcile(self) -> None:
        self.passes += 1
        self._last_pass = time.time()
        registry = self._gossiping_nodes()
        # CPU-heavy steps of a pass run in a thread (`asyncio.to_thread`): at 100,000 tasks they
        # take seconds, and the leader's lease keepalive must not wait for them
        parsed = await asyncio.to_thread(self.assignments, self.tasks.values())
        holders = {task.node for task in parsed.values()}
        await self.down.sync(registry, registry | holders)
        services, snap, seen = self.snapshot()
        old_uid = stale_incarnation(services, snap.tasks)
        if old_uid:  # tasks of a removed service's namesake: their slots are planned anew
            snap = replace(snap, tasks={k: t for k, t in snap.tasks.items() if k not in old_uid})
        self._node_events(snap.nodes)
        now, alive = self._last_pass, set(snap.nodes)
        statuses = self.status_map()
        real = snap.tasks  # by real slot: a job's view below renumbers its slots
        services, snap = await self.jobs.prepare(services, snap, statuses, alive, now)  # before planning
        self.unreadable |= self.jobs.unreadable  # a job record that cannot be read: the job left alone
        rollouts = self.rollout_records()
        decided = updates.decide(services, snap.tasks, statuses, rollouts, alive, now)
        observe = dependencies.observer(services, snap.tasks, statuses.get, self.jobs.succeeded())
        waiting = dependencies.gated(services, {svc for svc, _ in snap.tasks}, observe)  # depends_on
        released = updates.releases(real, statuses, alive)  # handoffs over: written below
        over = {task.task_id for task in released}

        def plan_all() -> tuple[list[Plan], list[Write]]:  # pure: no I/O, nothing shared is changed
            ready = [r for name, r in services.items() if name not in waiting]
            plans = schedule_all(replace(snap, updatable=decided.allowed), ready, self.epoch, now)
            plans += [
                dependencies.waiting_plan(services[n], why, alive) for n, why in sorted(waiting.items())
            ]
            plans, writes = self.jobs.shape(plans), []
            for plan in plans:
                updates.with_handoffs(plan, decided.policies.get(plan.service, UpdatePolicy()), alive, over)
                writes += writes_for(plan, self.keys, seen)
            return plans, writes

        plans, writes = await asyncio.to_thread(plan_all)
        written = {w.op.key for w in writes}
        for task in released:  # written at its real slot
            key = self.keys.task(task.service, task.slot)
            if key not in written:
                writes.append(Write(Put(key, task.to_json()), seen.get(key, 0), task.service))
        for task in old_uid.values():  # not placed again this pass (no room): unassigned all the same
            key = self.keys.task(task.service, task.slot)
            if key not in written:
                writes.append(Write(Delete(key), seen.get(key, 0), task.service))
        rollout_seen = {kv.key: kv.mod_revision for kv in self.rollouts.values()}
        due = {r.service for r in decided.rollbacks}
        ending = {
            n: r for n, r in decided.records.items() if n not in due and rollout_end.ends(rollouts.get(n), r)
        }
        for name, record in decided.records.items():
            if name in due or name in ending:
                continue  # written with its rollback, or with its outcome: each in one transaction
            key = self.keys.rollout(name)
            # with the service's task writes, in one transaction (`leader.applier`)
            writes.append(Write(Put(key, record.to_json()), rollout_seen.get(key, 0), name, lead=True))
        self._follow_status = (
            any(RolloutState(r.state).active for r in decided.records.values())
            or any(RolloutState(r.state).active for r in rollouts.values() if r.service in services)
            or any(t.handoff for t in snap.tasks.values())
            or bool(waiting)  # a gated service starts when its dependencies' statuses say so
            or self.jobs.active  # a job's next task starts when one ends
        )
        self._pending_events(plans)
        await self.pending.publish(plans, now)
        if self.pools is not None:  # issue 15: nodes asked for and given back after each plan
            await self.pools.step(services, snap, plans, now)
        # (a removed service's unreadable task records go with the others)
        orphans = {svc for svc, _ in snap.tasks} | set(self.unreadable_tasks.values())
        orphans -= set(services) | self.unreadable
        for svc in sorted(orphans):
            under = self.keys.service_volumes(svc)
            drop, whole = claims_to_drop(
                (k, kv.value) for k, kv in self.volumes.items.items() if k.startswith(under)
            )
            if whole:
                await self.applier.delete_prefix(self.keys.service_tasks(svc), under)
            else:  # a `volume rm` under way keeps its claim (its agent deletes it)
                await self.applier.delete_prefix(self.keys.service_tasks(svc))
                await self.applier.delete_keys(drop)
            self.events.emit("service.removed", f"tasks of removed service {svc} unassigned", service=svc)
        await self._forget_rollouts(set(rollouts) - set(services))
        if not writes:
            await self._roll_back(decided.rollbacks, rollout_seen)
            await self._end_rollouts(rollouts, ending, rollout_seen)
            return
        placed = {self.keys.task(t.service, t.slot): t for plan in plans for t in plan.place}

        def parsed_already(batch: list[Write], revision: int) -> None:
            for w in batch:  # what we wrote comes back by the watch: no need to parse it again
                task = placed.get(w.op.key)
                if task is not None and isinstance(w.op, Put):
                    self._parsed[w.op.key] = (revision, task)

        stale, _ = await self.applier.commit(writes, parsed_already)
        await self._roll_back(decided.rollbacks, rollout_seen)
        await self._end_rollouts(rollouts, ending, rollout_seen)
        if stale:
            log.info("%d batch(es) stale; re-planning", stale)
            return
        plan_events(self.events.emit, plans)
        self._rollouts_started(rollouts, decided, set(ending) | due)
        await self._caught_up(writes)

    def status_map(self) -> updates.StatusView:
        return updates.StatusView(self.statuses, self.keys)

    def _rollouts_started(
        self, before: dict[str, RolloutRecord], decided: updates.Decisions, skip: set[str]
    ) -> None:
        """Events for rollouts that started this pass (those in `skip`, ended or rolled back,
        are told by the path that wrote them)."""
        for name, r in decided.records.items():
            if name not in skip:
                self._tell_started(before.get(name), r)

    def _tell_started(self, old: RolloutRecord | None, r: RolloutRecord) -> None:
        """`rollout.started` for a new record; not for one carried over to a new version of
        the same template (`leader.updates.carried_over`: a scale)."""
        if old is None or (old.target, old.started_at) != (r.target, r.started_at):
            what = f"rolling back to version {r.from_version}" if r.rollback_of else "rolling update"
            message = f"{r.service}: {what}, version {r.from_version} -> {r.to_version}"
            self.events.emit("rollout.started", message, service=r.service)

    async def _end_rollouts(
        self,
        before: dict[str, RolloutRecord],
        ending: dict[str, RolloutRecord],
        seen: dict[str, int],
    ) -> None:
        """Store each rollout that ends this pass with its version's outcome in `history/`, in
        one fenced transaction each (`leader.rollout_end`). Stale: the next pass decides again."""
        for name, r in ending.items():
            if not await rollout_end.write(
                self.store, self.keys, self.epoch, r, seen.get(self.keys.rollout(name), 0)
            ):
                log.info("end of %s's rollout stale; deciding again on the next pass", name)
                continue
            self._tell_started(before.get(name), r)
            self.events.emit(
                f"rollout.{r.state}", f"{name} version {r.to_version}: {r.message}", service=name
            )

    async def _roll_back(self, due: list[RolloutRecord], rollout_seen: dict[str, int]) -> None:
        """Write each due rollback (`leader.rollback`): the failed record, the new version and
        its history in one fenced transaction. Stale (the service changed since the mirror
        saw it): the next pass decides again from what is stored."""
        for failed in due:
            name = failed.service
            current = self.services.items.get(self.keys.service(name))
            if current is None:
                continue  # removed meanwhile
            self.crash_point(crashpoint.ROLLBACK_DUE)
            mod = rollout_seen.get(self.keys.rollout(name), 0)
            outcome = await rollback.write(self.store, self.keys, self.epoch, failed, current, mod)
            if outcome is rollback.Outcome.STALE:
                log.info("rollback of %s stale; deciding again on the next pass", name)
                continue
            self.crash_point(crashpoint.ROLLBACK_WRITTEN)
            if isinstance(outcome, rollback.Refused):  # a port of the good version went to another service
                message = f"{name}: cannot roll back: {outcome}"
                if self._refused.get(name) != message:  # said once; tried again on every pass
                    self._refused[name] = message
                    self.events.emit("rollout.rollback_refused", message, service=name)
                continue
            self._refused.pop(name, None)
            if outcome is rollback.Outcome.IMPOSSIBLE:
                self.events.emit(
                    "rollout.rollback_impossible",
                    f"{name}: version {failed.from_version} is gone; apply a fixed spec",
                    service=name,
                )
                continue
            self.events.emit(
                "rollout.failed", f"{name} version {failed.to_version}: {failed.message}", service=name
            )

    async def _forget_rollouts(self, names: set[str]) -> None:
        """Delete the rollout records of services that no longer exist (an `rm` that raced a
        pass leaves the one that pass wrote): fenced, and only while the service key is absent."""
        for name in sorted(names):
            key = self.keys.rollout(name)
            kv = self.rollouts.items.get(key)
            if kv is None:
                continue
            compares = [
                fence(self.keys.leader, self.epoch),
                Compare(self.keys.service(name), "mod", "==", 0),
                Compare(key, "mod", "==", kv.mod_revision),
            ]
            result = await self.store.txn(compares, [Delete(key)])
            if result.succeeded:
                log.info("rollout record of removed service %s deleted", name)
                continue
            leader = await self.store.get(self.keys.leader)
            if leader is None or leader.create_revision != self.epoch:
                raise Fenced(f"leadership at epoch {self.epoch} is over; write refused")

    async def _caught_up(self, writes: list[Write], timeout: float = 2.0) -> None:
        """Wait until our own writes are in the mirrors, so the next pass sees them. (Not
        "the mirror reached the commit's revision": a mirror sees only its own prefix.)"""
        watched = (self.tasks, self.rollouts, self.volumes)
        mirrors = [c for c in watched if any(w.op.key.startswith(c.prefix) for w in writes)]
        expected = [
            (c, w.op.key, w.op.value if isinstance(w.op, Put) else None)
            for c in mirrors
            for w in writes
            if w.op.key.startswith(c.prefix)
        ]

        done = 0  # writes seen so far: each wake checks from there (100,000 writes: O(n), not O(n^2))

        def caught_up() -> bool:
            nonlocal done
            while done < len(expected):
                cache, key, value = expected[done]
                kv = cache.items.get(key)
                if (kv.value if kv is not None else None) != value:
                    return False
                done += 1
            return True

        deadline = time.monotonic() + timeout
        ev = asyncio.Event()
        for cache in mirrors:
            cache.listener(ev)
        try:
            while not caught_up() and time.monotonic() < deadline:
                ev.clear()
                try:
                    async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                        await ev.wait()
                except TimeoutError:
                    break
        finally:
            for cache in mirrors:
                cache.remove_listener(ev)

    def next_rollout_deadline(self) -> float | None:
        """Seconds until an active rollout needs a pass with no event to wake it: the end of
        a monitor window, a rested place of the window, a progress deadline."""
        times: list[float] = []
        for r in self.rollout_records().values():
            record = self.services.items.get(self.keys.service(r.service))
            if record is None or not RolloutState(r.state).active:
                continue  # a removed service's record steps no more (the next pass deletes it)
            try:
                monitor = update_policy(ServiceRecord.from_json(record.value).spec).monitor
            except UnreadableRecord:
                continue  # left alone by the passes too (`unreadable`)
            times += [t + monitor for t in r.monitored.values()]
            times += r.cooldown
            times += [t + PROGRESS_DEADLINE for t in r.batch.values()]
        times = [t for t in times if t > self._last_pass]  # a pass since has seen it: no busy loop
        if not times:
            return None
        return max(0.0, min(times) - time.time()) + 0.01

    def _gossiping_nodes(self) -> set[str]:
        """Registered nodes less simulated ones (`node.dev.simcluster`: they gossip with no one, so
        they count for no gossip quorum); parsed once per mod revision."""
        out, seen = set(), self._simulated
        for kv in self.nodes.values():
            hit = seen.get(kv.key)
            if hit is None or hit[0] != kv.mod_revision:
                node = self.keys.tail(kv.key, self.keys.nodes)
                try:
                    simulated = readable.node(node, kv.value).simulated
                except UnreadableRecord:  # registered all the same (`snapshot` says why)
                    simulated = False
                hit = seen[kv.key] = (kv.mod_revision, simulated)
            if not hit[1]:
                out.add(self.keys.tail(kv.key, self.keys.nodes))
        if len(seen) > len(self.nodes.items):
            for key in seen.keys() - self.nodes.items.keys():
                del seen[key]
        return out

    def _node_events(self, nodes: Mapping[str, NodeInfo], detail: int = 20) -> None:
        """node.joined / node.lost, "(simulated)" marked; one summary beyond `detail` nodes."""
        alive = set(nodes)
        now_simulated = {node for node, info in nodes.items() if info.simulated}
        if self._known_nodes is not None:
            joined = sorted(alive - self._known_nodes)
            lost = sorted(self._known_nodes - alive)
            sim = self._simulated_names | now_simulated
            for kind, names, what in (
                ("node.joined", joined, "joined"),
                ("node.lost", lost, "lost (lease expired or dead to gossip); its tasks move"),
            ):
                if len(names) > detail:
                    n = len(sim.intersection(names))
                    self.events.emit(
                        kind, f"{len(names)} nodes ({n} simulated) {what}: {names[0]} … {names[-1]}"
                    )
                    continue
                for node in names:
                    self.events.emit(kind, f"node {node}{' (simulated)' if node in sim else ''} {what}")
        self._known_nodes, self._simulated_names = alive, now_simulated

    def _pending_events(self, plans: list[Plan]) -> None:
        """`service.pending` when the reason a service's replicas wait changes; `service.placed`
        once they all found a node. Not repeated on every pass."""
        planned = {plan.service for plan in plans}  # every service has a plan: forget removed ones
        for name in [name for name in self._pending if name not in planned]:
            del self._pending[name]
        for plan in plans:
            before = self._pending.get(plan.service, "")
            if plan.pending:
                reason = f"{plan.pending} replica(s) pending: {plan.reason}"
                if reason != before:
                    self.events.emit("service.pending", reason, service=plan.service)
                    self._pending[plan.service] = reason
            elif before:
                self.events.emit("service.placed", "every replica has a node", service=plan.service)
                del self._pending[plan.service]
