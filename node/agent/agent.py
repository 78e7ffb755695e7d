"""The agent's async shell: watch this node's assignments, drive the runtime, report.

Each pass: read the assignments for this node (from a mirror of `tasks/`), list
this node's containers (by the cluster and node labels, never anyone else's),
`diff` them, act, then publish status and endpoints. Passes run on every change of
`tasks/` and every `resync` seconds, so a container that dies outside shoal is
noticed within that time. A task whose container cannot be made is retried with
exponential back-off. When etcd is unreachable the agent keeps what runs running.

Health and restarts: a replica whose spec has a `health` check is checked by
`HealthMonitor` (pure rules in `node.agent.health`) and published in `endpoints/` only
while it passes; a change of verdict wakes a pass at once, so an unhealthy replica is
withdrawn within milliseconds of the probe that decided it. Without a check, Docker's
own HEALTHCHECK is followed when the image has one, else a running replica is
routable. A container that exits, or a replica unhealthy for 2 x retries checks (then
stopped through the drain path), is started again as the restart policy says
(`node.agent.restart`: condition, attempts within a window, back-off); a task it gives
up on stays exited or failed, `terminal` in its status.

etcd away: a pass never waits on etcd. It decides from the last known assignments (the
mirror keeps its view) and the runtime, so crashed containers are restarted and
unhealthy ones replaced during an outage; what it wants in `status/` and `endpoints/`
goes to a write queue (`node.agent.writes`: latest value per key, retried apart, flushed
when etcd answers). Only the stop of a replica that is still routable waits for its
withdrawal to be in etcd (bounded; else retried by a later pass). A service with
`on_disconnect: {stop_after: S}` is the exception: on a node whose lease has certainly
expired more than S ago (`node.agent.disconnect`) its replicas are stopped and not
started again until etcd answers (the leader has placed them elsewhere meanwhile).

The engine and images: `EngineWatch` (`node.agent.engine`) pings the engine; while it
has not answered for `engine_timeout` the agent runs no pass, publishes no endpoint and
reports its tasks `unknown` (the daemon marks the node not ready, the leader moves its
tasks); at the first answer passes resume. A missing image is pulled apart
(`node.agent.pulls`): its task shows `pulling` and no pass waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace

from node.agent.containers import SpecNotFound, SpecSource, container_spec
from node.agent.diff import Actions, diff
from node.agent.disconnect import cut_off_for, hold_back
from node.agent.engine import EngineWatch
from node.agent.health import Verdict, check_of
from node.agent.monitor import HealthMonitor, Probe
from node.agent.probes import Prober
from node.agent.publisher import Publisher
from node.agent.pulls import Pulls
from node.agent.restart import (
    UNHEALTHY,
    Policy,
    RestartState,
    interrupted,
    may_start,
    on_exit,
    on_running,
    policy_of,
)
from node.agent.stopper import Stopper
from node.domain import Assignment, EndpointRecord, TaskState, TaskStatus
from node.events import EventLog
from node.keys import Keys
from node.runtime.base import LABELS, Container, Runtime, RuntimeError_
from node.spec import ServiceSpec
from node.store import Store, StoreError
from node.store.mirrors import mirror
from node.store.session import Session

log = logging.getLogger(__name__)
# s: an unchanged health result is never rewritten to status/ (liveness is the node's lease;
# a periodic rewrite cost etcd one revision per replica per period: issue 11)
HEALTH_REFRESH = math.inf


class Agent:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        cluster: str,
        runtime: Runtime,
        session: Session,
        events: EventLog,
        publish_address: str,
        resync: float = 1.0,
        stop_timeout: float = 10.0,
        drain: float = 2.0,
        prober: Probe | None = None,
        clock: Callable[[], float] = time.monotonic,
        engine: EngineWatch | None = None,
        pull_timeout: float = 600.0,
    ) -> None:
        self.store, self.keys, self.node, self.cluster = store, keys, node, cluster
        self.runtime = runtime
        self.session = session
        self.events = events
        self.publish_address = publish_address
        self.resync = resync
        self.tasks = mirror(store, keys.tasks, "agent-tasks")
        self.specs = SpecSource(store, keys)
        self.publisher = Publisher(store, keys, session)
        self.status: dict[str, TaskStatus] = {}
        self._retry_at: dict[str, tuple[float, float]] = {}  # task -> (when, backoff)
        self.clock = clock
        self._restart: dict[str, RestartState] = {}  # task -> its restart history (node.agent.restart)
        self._handled: dict[str, str] = {}  # task -> the last container whose exit was decided on
        self._routable_since: dict[str, float] = {}  # container id -> wall clock it became routable
        self._engine_gaps = 0  # times the runtime did not answer a pass's listing
        self._seen_running: dict[str, int] = {}  # container id -> _engine_gaps when last seen running
        self._next_start: float | None = None  # earliest restart waiting for its back-off
        self._wake = asyncio.Event()  # a change of tasks/, a health verdict: run a pass now
        self.monitor = HealthMonitor(prober or Prober(runtime, publish_address), self._wake.set, clock)
        self.stopper = Stopper(
            runtime, self.publisher, self.specs, events, self._wake.set, drain, stop_timeout
        )
        self.engine = engine or EngineWatch(runtime.ping)
        self.engine.on_change(self._engine_changed)
        self.pulls = Pulls(runtime, self._wake.set, pull_timeout, clock)
        self._downing: asyncio.Task[None] | None = None  # the withdrawal when the engine went down
        self._adopted = False
        self._running: dict[str, tuple[Assignment, Container]] = {}  # routable replicas
        self._publish_lock = asyncio.Lock()
        self.passes = 0

    def assigned(self) -> dict[str, Assignment]:
        out = {}
        for kv in self.tasks.values():
            task = Assignment.from_json(kv.value)
            if task.node == self.node:
                out[task.task_id] = task
            old = task.handed_off()  # keeps serving its slot until the new task is ready
            if old is not None and old.node == self.node:
                out[old.task_id] = old
        return out

    async def run(self) -> None:
        await self._seed_restarts()
        wake = self.tasks.listener(self._wake)
        watcher = asyncio.create_task(self.tasks.run(), name="agent-watch-tasks")
        checker = asyncio.create_task(self.monitor.run(), name="agent-health-checks")
        writer = asyncio.create_task(self.publisher.writes.run(), name="agent-writes")
        pinger = asyncio.create_task(self.engine.run(), name="agent-engine-watch")
        try:
            await self.tasks.ready.wait()
            while True:
                wake.clear()
                for helper in (checker, writer):
                    if helper.done():
                        helper.result()  # the checking or the writing died: die loudly with it
                try:
                    await (self.reconcile() if self.engine.up else self._engine_down())
                except (StoreError, RuntimeError_) as exc:
                    log.warning("agent pass failed: %s", exc)
                timeout = self.resync
                if self._next_start is not None:  # a restart's back-off ends before the resync
                    timeout = max(0.01, min(timeout, self._next_start - self.clock()))
                try:
                    async with asyncio.timeout(timeout):
                        await wake.wait()
                except TimeoutError:
                    pass
        finally:
            watcher.cancel()
            checker.cancel()
            writer.cancel()
            pinger.cancel()
            self.pulls.cancel()
            self.stopper.cancel()  # a restarted daemon finds the container and stops it then

    async def flush(self) -> None:
        """Write the queued status and endpoints now (raises StoreError when etcd is away)."""
        await self.publisher.flush()

    async def stopped(self) -> None:
        """Wait for the stops under way (drain, then stop) to finish."""
        await self.stopper.wait()

    async def _seed_restarts(self) -> None:
        """Carry restart counts, last exit codes and given-up tasks over a daemon restart
        (the old status is still in etcd). The back-off streak starts over."""
        try:
            kvs, _ = await self.store.range(self.keys.status_all)
        except StoreError:
            return
        for kv in kvs:
            status = TaskStatus.from_json(kv.value)
            if status.node == self.node:
                given_up = (status.message or "the restart policy gave up") if status.terminal else ""
                self._restart[status.task_id] = RestartState(
                    restarts=status.restarts, exit_code=status.exit_code, given_up=given_up
                )

    def _engine_changed(self, up: bool) -> None:
        if up:
            self._adopted = False  # the first pass after re-adopts (events say so)
        else:  # at once, not after the pass under way: it may hang in the silent engine for a minute
            self._downing = asyncio.get_running_loop().create_task(
                self._engine_down_now(), name="engine-down"
            )
        self._wake.set()

    async def _engine_down_now(self) -> None:
        try:
            await self._engine_down()
        except StoreError as exc:  # the loop does it again every resync while the engine is down
            log.warning("endpoints not withdrawn yet (engine down): %s", exc)

    async def _engine_down(self) -> None:
        """The engine has not answered for `engine_timeout`: no endpoint of this node is
        published (they are withdrawn), every assigned task is `unknown`, and why."""
        assigned = self.assigned()
        self._running = {}
        for task_id in [t for t in self.status if t not in assigned]:
            del self.status[task_id]
        for task in assigned.values():
            self._set(task, TaskState.UNKNOWN, message=self.engine.reason)
        await self._publish()

    def _rs(self, task: Assignment) -> RestartState:
        return self._restart.get(task.task_id) or RestartState()

    async def reconcile(self) -> Actions:
        self.passes += 1
        self._next_start = None
        assigned = self.assigned()
        try:
            found = await self.runtime.list({LABELS.CLUSTER: self.cluster, LABELS.NODE: self.node})
        except RuntimeError_:
            self._engine_gaps += 1  # an exit 0 seen after this is the engine's doing (restart policy)
            raise
        actions = await self._cut_off(diff(assigned, found))
        if not self._adopted:
            self._adopted = True
            for task, c in actions.keep:
                self.events.emit(
                    "task.adopted", f"{c.name} re-adopted ({c.id[:12]})", task.service, task.task_id
                )
        for c in actions.stop:
            self._stop(c)
        for gone in (self.status, self._restart, self._handled, self._retry_at):
            for task_id in [t for t in gone if t not in assigned]:
                del gone[task_id]
        self.specs.retain({(t.service, t.uid) for t in assigned.values()})
        await asyncio.gather(*(self._exited(t, c) for t, c in actions.replace))
        now = self.clock()
        running: dict[str, tuple[Assignment, Container]] = {}
        checked: set[str] = set()
        for task, c in actions.keep:
            if c.id in self.stopper:
                continue  # replaced for being unhealthy: it drains, then stops; then it restarts
            try:
                spec = await self._spec_or_none(task)
            except StoreError:  # not cached and etcd away: as it was
                checked.add(c.id)
                if task.task_id in self._running:
                    running[task.task_id] = self._running[task.task_id]
                continue
            verdict = self.monitor.verdict(c, check_of(spec))
            checked.add(c.id)
            self._restart[task.task_id] = on_running(self._rs(task), now)
            if verdict.replace:
                self._replace_unhealthy(task, c, policy_of(spec), verdict)
                continue
            if verdict.routable:
                running[task.task_id] = (task, c)
            self._observe(task, c, verdict)
        self.monitor.retain(checked)
        listed = {c.id for c in found}
        self._seen_running = {cid: gaps for cid, gaps in self._seen_running.items() if cid in listed}
        self._seen_running.update({c.id: self._engine_gaps for _, c in actions.keep})
        for cid in [cid for cid in self._routable_since if cid not in checked]:
            del self._routable_since[cid]
        self._running = running
        starts = self._startable(actions.start, now)
        if starts:
            for task in starts:
                if task.task_id not in self.status:
                    self._set(task, TaskState.PENDING)
            await self._publish()  # `ps` shows them pending while images are pulled and started
        await asyncio.gather(*(self._start(t) for t in starts))
        await self._publish()
        return actions

    async def _cut_off(self, actions: Actions) -> Actions:
        """Cut off from etcd past a service's `on_disconnect.stop_after`: stop its running
        replicas (their endpoints died with the lease) and start none (`hold_back`)."""
        cut = cut_off_for(self.session.answered, self.session.ttl, self.clock())
        if cut <= 0:
            return actions
        specs = {}
        for task in [t for t, _ in actions.keep] + actions.start:
            with contextlib.suppress(SpecNotFound, StoreError):  # unknown here: kept as it is
                specs[task.task_id] = await self.specs.spec(task.service, task.version, task.uid)
        actions, stops = hold_back(actions, specs, cut)
        for task, c, why in stops:
            if c.id not in self.stopper:
                self._set(task, TaskState.EXITED, container_id=c.id, message=f"stopped: {why}")
                self.events.emit("task.disconnected", f"{c.name} stopped: {why}", task.service, task.task_id)
                self._stop(c, must_withdraw=False)
        return actions

    def _startable(self, tasks: list[Assignment], now: float) -> list[Assignment]:
        """The tasks to start now: not given up on, and past their restart back-off."""
        out = []
        for task in tasks:
            rs, old = self._rs(task), self.status.get(task.task_id)
            if rs.terminal:
                self._set_final(task, rs, old)
            elif not may_start(rs, now):
                self._next_start = min(rs.next_at, self._next_start or rs.next_at)
                if old is None or old.state != TaskState.EXITED:  # none yet, or its replaced container's
                    message = old.message if old else f"restart in {rs.next_at - now:.1f}s"
                    self._set(task, TaskState.EXITED, message=message)
            else:
                out.append(task)
        return out

    async def _spec_or_none(self, task: Assignment) -> ServiceSpec | None:
        """The task's spec; None (no check, default policy) when it is not in etcd."""
        try:
            return await self.specs.spec(task.service, task.version, task.uid)
        except SpecNotFound:
            return None

    def _set(self, task: Assignment, state: TaskState, **fields: object) -> None:
        rs = self._rs(task)
        base = TaskStatus(task.task_id, task.service, task.slot, self.node, state.value)
        new = replace(base, **{"restarts": rs.restarts, "exit_code": rs.exit_code, **fields})  # type: ignore[arg-type]
        old = self.status.get(task.task_id)
        if old is None or asdict(replace(old, updated_at=0)) != asdict(new):
            self.status[task.task_id] = replace(new, updated_at=time.time())

    def _observe(self, task: Assignment, c: Container, verdict: Verdict, message: str = "") -> None:
        if not c.running:  # exited right after it started; the next pass replaces it
            self._set(task, TaskState.EXITED, container_id=c.id, exit_code=c.exit_code, message=c.error)
            return
        port = next(iter(c.host_ports.values()), 0)
        since = 0.0
        if verdict.routable:
            since = self._routable_since.setdefault(c.id, time.time())
        else:
            self._routable_since.pop(c.id, None)
        at, old = verdict.at, self.status.get(task.task_id)
        if (
            old is not None
            and (old.health, old.health_message, old.health_failures)
            == (verdict.health.value, verdict.message, verdict.failures)
            and at - old.health_at < HEALTH_REFRESH
        ):
            at = old.health_at  # the same result again: no etcd write for it
        self._set(
            task,
            TaskState.RUNNING,
            container_id=c.id,
            address=self.publish_address,
            host_port=port,
            message=message,
            health=verdict.health.value,
            health_message=verdict.message,
            health_failures=verdict.failures,
            health_at=at,
            healthy_since=since,
        )

    def _set_final(self, task: Assignment, rs: RestartState, old: TaskStatus | None, cid: str = "") -> None:
        """A task the restart policy gave up on: exited (code 0) or failed, and why."""
        state = TaskState.EXITED if rs.exit_code == 0 else TaskState.FAILED
        cid = cid or (old.container_id if old else "")
        self._set(task, state, container_id=cid, message=rs.given_up, terminal=True)

    async def _publish(self) -> None:
        """Publish every status and the endpoints of the running replicas, as they are now.

        Called after each container start too, so a replica is routable as soon as it
        runs, not when the slowest start of its pass is done. The lock keeps concurrent
        callers from publishing overlapping views.
        """
        async with self._publish_lock:
            endpoints = []
            for task, c in self._running.values() if self.engine.up else ():
                cport, hport = next(iter(sorted(c.host_ports.items())), (0, 0))
                ports = {str(k): v for k, v in sorted(c.host_ports.items())}
                endpoints.append(
                    EndpointRecord(
                        task.task_id, task.service, self.node, self.publish_address, hport, cport, ports
                    )
                )
            await self.publisher.publish(list(self.status.values()), endpoints)

    async def _start(self, task: Assignment) -> None:
        when, backoff = self._retry_at.get(task.task_id, (0.0, 0.5))
        if self.clock() < when:
            self._next_start = min(when, self._next_start or when)
            return
        try:
            spec = await self.specs.spec(task.service, task.version, task.uid)
            if not await self.pulls.ready(spec.image):  # pulled apart; a finished pull wakes a pass
                self._set(task, TaskState.PULLING, message=self.pulls.progress(spec.image))
                return
            c = await self.runtime.run(container_spec(task, spec, self.cluster, self.publish_address))
        except (SpecNotFound, StoreError, RuntimeError_) as exc:
            self._retry_at[task.task_id] = (self.clock() + backoff, min(backoff * 2, 30.0))
            self._set(task, TaskState.FAILED, message=str(exc))
            self.events.emit("task.failed", f"{task.service}.{task.slot}: {exc}", task.service, task.task_id)
            return
        self._retry_at.pop(task.task_id, None)
        verdict = self.monitor.verdict(c, check_of(spec)) if c.running else Verdict()
        if c.running:
            self._restart[task.task_id] = on_running(self._rs(task), self.clock())
            self._seen_running[c.id] = self._engine_gaps
        self._observe(task, c, verdict)
        if c.running and verdict.routable:  # routable at once unless it has a check to pass first
            self._running[task.task_id] = (task, c)
        await self._publish()
        self.events.emit(
            "task.started", f"{c.name} started on {self.node} ({c.id[:12]})", task.service, task.task_id
        )

    async def _exited(self, task: Assignment, c: Container) -> None:
        """A container that exited: decide once whether its task restarts (and when).

        It is removed at once when the task will restart (the restart makes a new one
        after the back-off); kept, for its logs, when the policy gave up (it is removed
        when the task is unassigned).
        """
        rs = self._rs(task)
        if rs.terminal:
            self._set_final(task, rs, None, c.id)
            return
        self.monitor.forget(c.id)
        await self.publisher.withdraw(task.service, task.task_id)  # queued: it is dead anyway
        if self._handled.get(task.task_id) != c.id:
            try:
                policy = policy_of(await self._spec_or_none(task))
            except StoreError as exc:  # not cached and etcd away: decide when it answers
                log.warning("%s exited; its restart policy cannot be read yet: %s", c.name, exc)
                return
            self._handled[task.task_id] = c.id
            now = self.clock()
            engine_restarted = self._seen_running.get(c.id, self._engine_gaps) < self._engine_gaps
            not_done = interrupted(c, engine_restarted)  # not a completion: started again
            rs = on_exit(rs, policy, c.exit_code, now, not_done)
            self._restart[task.task_id] = rs
            if rs.terminal:
                self._set_final(task, rs, None, c.id)
                self.events.emit("task.no-restart", f"{c.name}: {rs.given_up}", task.service, task.task_id)
                return
            why = f"exited with code {c.exit_code}" + (f" ({c.error})" if c.error else "")
            if not_done:
                why = f"exited with code {c.exit_code} ({not_done})"
            wait = f"restart {rs.restarts} in {rs.next_at - now:.1f}s"
            self._set(task, TaskState.EXITED, container_id=c.id, message=f"{why}; {wait}")
            self.events.emit("task.exited", f"{c.name} {why}; {wait}", task.service, task.task_id)
            self._next_start = min(rs.next_at, self._next_start or rs.next_at)
        await self.runtime.remove(c.id)

    def _replace_unhealthy(self, task: Assignment, c: Container, policy: Policy, verdict: Verdict) -> None:
        """Unhealthy for 2 x retries checks: drain and stop it; the restart policy decides
        (once per container) whether and when its task gets a new one."""
        if self._handled.get(task.task_id) != c.id:
            self._handled[task.task_id] = c.id
            now = self.clock()
            rs = on_exit(self._rs(task), policy, UNHEALTHY, now)
            self._restart[task.task_id] = rs
            then = f"not restarted: {rs.given_up}" if rs.terminal else f"restart in {rs.next_at - now:.1f}s"
            why = f"unhealthy after {verdict.failures} failed checks ({verdict.message})"
            self.events.emit(
                "task.unhealthy", f"{c.name} {why}; replacing, {then}", task.service, task.task_id
            )
            self._observe(task, c, verdict, message=f"{why}; replacing, {then}")
        self._stop(c, drained=self.monitor.unhealthy_for(c.id), must_withdraw=False)

    def _stop(self, c: Container, drained: float = 0.0, must_withdraw: bool = True) -> None:
        """Withdraw, drain and stop `c` in the background (`node.agent.stopper`)."""
        self.monitor.forget(c.id)
        self.stopper.begin(c, drained, must_withdraw)
