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

State: what the agent knows per task (phase, container, restart history and its
back-off, status, routable) is kept by a pure state machine, `node.agent.machine.Slots`:
this shell feeds it what it sees and carries out the actions it returns. With
`SHOAL_AGENT_VALIDATE=1` the machine's invariants (`node.agent.invariants`) are checked
after every pass.

The engine and images: `EngineWatch` (`node.agent.engine`) pings the engine; while it
has not answered for `engine_timeout` the agent runs no pass, publishes no endpoint and
reports its tasks `unknown` (the daemon marks the node not ready, the leader moves its
tasks); at the first answer passes resume. A missing image is pulled apart
(`node.agent.pulls`): its task shows `pulling` and no pass waits for it.

History (decision 71): with `history` > 0 a container that exits or is stopped is not
removed but kept for its logs: an exited task restarts in a new container (the kept one
renamed out of its way), a replaced one is stopped and left. `node.agent.kept` removes
the kept containers past `history` per slot, and all of a removed service or a job
(`node.agent.history` decides), every pass: a crash or an engine outage between a stop
and a removal is made good by a later pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable

from node.agent.containers import SpecNotFound, SpecSource, container_spec, run_image
from node.agent.diff import Actions, diff
from node.agent.disconnect import cut_off_for, hold_back
from node.agent.engine import EngineWatch
from node.agent.health import Verdict, check_of
from node.agent.invariants import validate
from node.agent.kept import Kept
from node.agent.machine import Action, Emit, Forget, Remove, Slots, Stop, Withdraw
from node.agent.monitor import HealthMonitor, Probe
from node.agent.probes import Prober
from node.agent.publisher import Publisher
from node.agent.pulls import Pulls
from node.agent.restart import Policy, policy_of
from node.agent.secretfiles import SecretFiles, default_root
from node.agent.stopper import Stopper
from node.agent.volumes import Volumes, blocked
from node.model.domain import Assignment, TaskStatus
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.runtime.base import LABELS, Container, EngineError, Runtime, RuntimeUnavailable
from node.store import Store, StoreError
from node.store.mirrors import mirror
from node.store.session import Session
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)


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
        history: int = 0,
    ) -> None:
        self.store, self.keys, self.node, self.cluster = store, keys, node, cluster
        self.runtime = runtime
        self.session = session
        self.events = events
        self.publish_address = publish_address
        self.resync = resync
        self.tasks = mirror(store, keys.tasks, "agent-tasks")
        self.history = Kept(runtime, mirror(store, keys.services, "agent-services"), history)
        self.specs = SpecSource(store, keys)
        self.secret_files = SecretFiles(
            store, keys, default_root(cluster, node)
        )  # the daemon sets its sealer
        self.publisher = Publisher(store, keys, session)
        self.volumes = Volumes(store, keys, node, cluster, runtime)  # claims, mounts, removals
        self.clock = clock
        self.machine = Slots(node, publish_address, time.time)  # every task's state (node.agent.machine)
        self.validate = os.environ.get("SHOAL_AGENT_VALIDATE") == "1"
        self._wake = asyncio.Event()  # a change of tasks/, a health verdict: run a pass now
        self.monitor = HealthMonitor(prober or Prober(runtime, publish_address), self._wake.set, clock)
        self.stopper = Stopper(
            runtime, self.publisher, self.specs, events, self._wake.set, drain, stop_timeout
        )
        self.engine = engine or EngineWatch(runtime.ping)
        self.engine.on_change(self._engine_changed)
        self.pulls = Pulls(runtime, self._wake.set, pull_timeout, clock)
        self._downing: asyncio.Task[None] | None = None  # the withdrawal when the engine went down
        self._publish_lock = asyncio.Lock()
        self.passes = 0
        self.dns: tuple[str, ...] = ()  # the node's name server for containers (issue 13; set by the daemon)

    @property
    def status(self) -> dict[str, TaskStatus]:
        """The status of each task, as published (or about to be)."""
        return self.machine.status

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
        self.volumes.claims.listener(self._wake)
        watcher = asyncio.create_task(self.tasks.run(), name="agent-watch-tasks")
        claims = asyncio.create_task(self.volumes.claims.run(), name="agent-watch-volumes")
        services = asyncio.create_task(self.history.services.run(), name="agent-watch-services")
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
                except (StoreError, EngineError) as exc:
                    log.warning("agent pass failed: %s", exc)
                if self.validate:
                    validate(self.machine)
                timeout = self.resync
                next_start = self.machine.next_start
                if next_start is not None:  # a restart's back-off ends before the resync
                    timeout = max(0.01, min(timeout, next_start - self.clock()))
                try:
                    async with asyncio.timeout(timeout):
                        await wake.wait()
                except TimeoutError:
                    pass
        finally:
            watcher.cancel()
            claims.cancel()
            services.cancel()
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
        """Carry restart counts, last exit codes, given-up tasks and exits decided whose
        restart waits over a daemon restart (the old status is still in etcd)."""
        try:
            kvs, _ = await self.store.range(self.keys.status_all)
        except StoreError:
            return
        for kv in kvs:
            self.machine.seed(TaskStatus.from_json(kv.value), self.clock())

    def _engine_changed(self, up: bool) -> None:
        if up:
            self.machine.engine_up()  # the first pass after re-adopts (events say so)
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
        self.machine.engine_down(self.assigned(), self.engine.reason)
        await self._publish()

    async def reconcile(self) -> Actions:
        self.passes += 1
        m = self.machine
        m.begin_pass()
        assigned = self.assigned()
        try:
            found = await self.runtime.list({LABELS.CLUSTER: self.cluster, LABELS.NODE: self.node})
        except RuntimeUnavailable:  # not answering; one failed call (a 500) is no gap
            m.engine_gap()  # an exit 0 seen after this may be the engine's doing (restart policy)
            raise
        actions = diff(assigned, found)
        m.desired(assigned)
        m.listed(actions.keep, actions.replace)
        m.recall(actions.keep, actions.replace, actions.retired, self.clock())  # the first pass: history
        actions = await self._cut_off(actions)
        await self._do(m.adopt(actions.keep))
        for c in actions.stop:
            self._stop(c, keep=self.history.limit > 0)  # exited, it is history (node.agent.history)
        self.specs.retain({(t.service, t.uid) for t in assigned.values()})
        self.secret_files.sweep(assigned)  # files of tasks no longer here (node.agent.secretfiles)
        await asyncio.gather(*(self._exited(t, c) for t, c in actions.replace))
        checked: set[str] = set()
        for task, c in actions.keep:
            if c.id in self.stopper:
                m.stopping(task)  # replaced for being unhealthy: it drains, then stops; then it restarts
                continue
            if not c.running:  # paused (or restarting): live, not routable, not an exit
                m.paused(task, c)
                continue
            checked.add(c.id)
            try:
                spec = await self._spec_or_none(task)
            except StoreError:  # not cached and etcd away: as it was
                continue
            verdict = self.monitor.verdict(c, check_of(spec))
            drained = self.monitor.unhealthy_for(c.id)
            await self._do(m.seen(task, c, verdict, policy_of(spec), self.clock(), drained))
        self.monitor.retain(checked)
        restarts = []  # tasks whose exited container is kept (history): they start anew beside it
        if self.history.limit > 0:  # (removed instead, the next pass finds none and starts one)
            restarts = [t for t, c in actions.replace if t.task_id not in actions.held and m.restarting(t, c)]
        starts = m.starts(actions.start + restarts, self.clock())
        if starts:
            await self._publish()  # `ps` shows them pending while images are pulled and started
        await asyncio.gather(*(self._start(s.task, found) for s in starts))
        await self._publish()
        if actions.retired:  # exited ones past the limit, of removed services, jobs (decision 71)
            await self.history.prune(actions.retired, self.volumes.removing())
        await self.volumes.sweep()  # data `volume rm` asked to go (node.agent.volumes)
        return actions

    async def _do(self, actions: list[Action]) -> None:
        """Carry out what the machine decided."""
        for a in actions:
            if isinstance(a, Emit):
                slot = self.machine.slots.get(a.task_id)  # issue 14: the cause its placement carried
                self.events.emit(a.kind, a.message, a.service, a.task_id, slot.task.cause if slot else "")
            elif isinstance(a, Stop):
                self._stop(a.container, a.drained, a.must_withdraw, a.keep and self.history.limit > 0)
            elif isinstance(a, Forget):
                self.monitor.forget(a.container_id)
            elif isinstance(a, Withdraw):
                await self.publisher.withdraw(a.service, a.task_id)  # queued: no wait
            elif isinstance(a, Remove):
                try:
                    await self.runtime.remove(a.container_id)
                except RuntimeUnavailable:
                    raise  # the engine is away: the pass ends here, as for any call
                except EngineError as exc:  # one Docker will not remove must not stop the pass
                    # (starts, statuses, withdrawals); the machine asks again on the next one
                    log.warning("cannot remove container %s: %s", a.container_id[:12], exc)

    async def _cut_off(self, actions: Actions) -> Actions:
        """Cut off from etcd past a service's `on_disconnect.stop_after`: stop its running
        replicas (their endpoints died with the lease) and start none (`hold_back`)."""
        cut = cut_off_for(self.session.answered, self.session.ttl, self.clock())
        if cut <= 0:
            return actions
        specs = {}
        for task in [t for t, _ in (*actions.keep, *actions.replace)] + actions.start:
            with contextlib.suppress(SpecNotFound, StoreError):  # unknown here: kept as it is
                specs[task.task_id] = await self.specs.spec(task.service, task.version, task.uid)
        actions, stops = hold_back(actions, specs, cut)
        for task, c, why in stops:
            if c.id not in self.stopper:
                await self._do(self.machine.cut_off(task, c, why))
        return actions

    async def _spec_or_none(self, task: Assignment) -> ServiceSpec | None:
        """The task's spec; None (no check, default policy) when it is not in etcd."""
        try:
            return await self.specs.spec(task.service, task.version, task.uid)
        except SpecNotFound:
            return None

    async def _publish(self) -> None:
        """Publish every status and the endpoints of the running replicas, as they are now.

        Called after each container start too, so a replica is routable as soon as it
        runs, not when the slowest start of its pass is done. The lock keeps concurrent
        callers from publishing overlapping views.
        """
        async with self._publish_lock:
            endpoints = self.machine.endpoints() if self.engine.up else []
            await self.publisher.publish(self.machine.statuses(), endpoints)

    async def _start(self, task: Assignment, found: list[Container]) -> None:
        m = self.machine
        try:
            spec = await self.specs.spec(task.service, task.version, task.uid)
            image = run_image(spec)  # pinned to the digest resolved at deploy (issue 13)
            auth = functools.partial(self.secret_files.pull_auth, spec)  # read only if it pulls
            if not await self.pulls.ready(image, spec.pull, auth):
                m.pulling(task, self.pulls.progress(image))  # pulled apart; a finished pull wakes a pass
                return
            made = container_spec(task, spec, self.cluster, self.publish_address, self.dns)
            await self.history.free_name(made.name, found)  # an exited one of this task, kept, has it
            if spec.volumes:  # its slot's claimed volumes, once no other container has them
                mounts, why = self.volumes.mounts(task, spec)
                why = why or blocked(task, found)
                if why:
                    m.waiting(task, why)
                    return
                made = dataclasses.replace(made, volumes=mounts)
            c = await self.runtime.run(await self.secret_files.prepare(task, spec, made))
        except (SpecNotFound, StoreError, EngineError) as exc:
            await self._do(m.start_failed(task, str(exc), self.clock()))
            return
        verdict = self.monitor.verdict(c, check_of(spec)) if c.running else Verdict()
        started = m.started(task, c, verdict, self.clock())
        await self._publish()
        await self._do(started)

    async def _exited(self, task: Assignment, c: Container) -> None:
        """A container that exited: the machine decides once whether its task restarts."""
        policy: Policy | None = None
        if self.machine.deciding(task, c):
            if c.exit_code == 0:  # the engine's shutdown, or the task's end? (node.agent.restart)
                self.machine.engine_since = await self.runtime.engine_started()
            try:
                policy = policy_of(await self._spec_or_none(task))
            except StoreError as exc:  # not cached and etcd away: decide when it answers
                log.warning("%s exited; its restart policy cannot be read yet: %s", c.name, exc)
        await self._do(self.machine.exited(task, c, policy, self.clock(), keep=self.history.limit > 0))

    def _stop(
        self, c: Container, drained: float = 0.0, must_withdraw: bool = True, keep: bool = False
    ) -> None:
        """Withdraw, drain and stop `c` in the background (`node.agent.stopper`); `keep`:
        stopped, not removed (history, decision 71)."""
        self.monitor.forget(c.id)
        self.stopper.begin(c, drained, must_withdraw, keep)
