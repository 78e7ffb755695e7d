"""The agent's async shell: watch this node's assignments, drive the runtime, report.

Each pass: read the assignments for this node (from a mirror of `tasks/`), list
this node's containers (by the cluster and node labels, never anyone else's),
`diff` them, act, then publish status and endpoints. Passes run on every change of
`tasks/` and every `resync` seconds, so a container that dies outside shoal is
noticed within that time. A task whose container cannot be made is retried with
exponential back-off. When etcd is unreachable the agent keeps what runs running.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import asdict, replace

from node.agent.containers import SpecNotFound, SpecSource, container_spec
from node.agent.diff import Actions, diff
from node.agent.publisher import Publisher
from node.domain import Assignment, EndpointRecord, TaskState, TaskStatus
from node.events import EventLog
from node.keys import Keys
from node.runtime.base import LABELS, Container, Runtime, RuntimeError_
from node.store import Store, StoreError
from node.store.cache import PrefixCache
from node.store.session import Session

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
    ) -> None:
        self.store, self.keys, self.node, self.cluster = store, keys, node, cluster
        self.runtime = runtime
        self.events = events
        self.publish_address = publish_address
        self.resync = resync
        self.stop_timeout = stop_timeout
        self.drain = drain
        self._stopping: dict[str, asyncio.Task[None]] = {}  # container id -> its drain and stop
        self.tasks = PrefixCache(store, keys.tasks, "agent-tasks")
        self.specs = SpecSource(store, keys)
        self.publisher = Publisher(store, keys, session)
        self.status: dict[str, TaskStatus] = {}
        self._retry_at: dict[str, tuple[float, float]] = {}  # task -> (when, backoff)
        self._restarts: dict[str, int] = {}
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
        return out

    async def run(self) -> None:
        await self._seed_restarts()
        wake = self.tasks.listener()
        watcher = asyncio.create_task(self.tasks.run(), name="agent-watch-tasks")
        try:
            await self.tasks.ready.wait()
            while True:
                wake.clear()
                try:
                    await self.reconcile()
                except (StoreError, RuntimeError_) as exc:
                    log.warning("agent pass failed: %s", exc)
                try:
                    async with asyncio.timeout(self.resync):
                        await wake.wait()
                except TimeoutError:
                    pass
        finally:
            watcher.cancel()
            for task in list(self._stopping.values()):
                task.cancel()  # a restarted daemon finds the container and stops it then

    async def stopped(self) -> None:
        """Wait for the stops under way (drain, then stop) to finish."""
        while self._stopping:
            await asyncio.gather(*list(self._stopping.values()), return_exceptions=True)

    async def _seed_restarts(self) -> None:
        """Carry restart counts over a daemon restart (the old status is still in etcd)."""
        try:
            kvs, _ = await self.store.range(self.keys.status_all)
        except StoreError:
            return
        for kv in kvs:
            status = TaskStatus.from_json(kv.value)
            if status.node == self.node:
                self._restarts[status.task_id] = status.restarts

    async def reconcile(self) -> Actions:
        self.passes += 1
        assigned = self.assigned()
        found = await self.runtime.list({LABELS.CLUSTER: self.cluster, LABELS.NODE: self.node})
        actions = diff(assigned, found)
        if not self._adopted:
            self._adopted = True
            for task, c in actions.keep:
                self.events.emit(
                    "task.adopted", f"{c.name} re-adopted ({c.id[:12]})", task.service, task.task_id
                )
        for c in actions.stop:
            if c.id not in self._stopping:
                stopping = asyncio.get_running_loop().create_task(self._stop(c), name=f"stop-{c.name}")
                self._stopping[c.id] = stopping
                stopping.add_done_callback(functools.partial(self._stopped, c.id))
        await asyncio.gather(*(self._replace(t, c) for t, c in actions.replace))
        for task_id in [t for t in self.status if t not in assigned]:
            del self.status[task_id]
        self._running = {t.task_id: (t, c) for t, c in actions.keep}
        for task, c in actions.keep:
            self._observe(task, c)
        if actions.start:
            for task in actions.start:
                if task.task_id not in self.status:
                    self._set(task, TaskState.PENDING)
            await self._publish()  # `ps` shows them pending while images are pulled and started
        await asyncio.gather(*(self._start(t) for t in actions.start))
        await self._publish()
        return actions

    def _set(self, task: Assignment, state: TaskState, **fields: object) -> None:
        base = TaskStatus(task.task_id, task.service, task.slot, self.node, state.value)
        new = replace(base, restarts=self._restarts.get(task.task_id, 0), **fields)  # type: ignore[arg-type]
        old = self.status.get(task.task_id)
        if old is None or asdict(replace(old, updated_at=0)) != asdict(new):
            self.status[task.task_id] = replace(new, updated_at=time.time())

    def _observe(self, task: Assignment, c: Container) -> None:
        if not c.running:  # exited right after it started; the next pass replaces it
            self._set(task, TaskState.EXITED, container_id=c.id, exit_code=c.exit_code, message=c.error)
            return
        port = next(iter(c.host_ports.values()), 0)
        self._set(task, TaskState.RUNNING, container_id=c.id, address=self.publish_address, host_port=port)

    async def _publish(self) -> None:
        """Publish every status and the endpoints of the running replicas, as they are now.

        Called after each container start too, so a replica is routable as soon as it
        runs, not when the slowest start of its pass is done. The lock keeps concurrent
        callers from publishing overlapping views.
        """
        async with self._publish_lock:
            endpoints = []
            for task, c in self._running.values():
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
        if time.monotonic() < when:
            return
        try:
            spec = await self.specs.spec(task.service, task.version)
            c = await self.runtime.run(container_spec(task, spec, self.cluster, self.publish_address))
        except (SpecNotFound, RuntimeError_) as exc:
            self._retry_at[task.task_id] = (time.monotonic() + backoff, min(backoff * 2, 30.0))
            self._set(task, TaskState.FAILED, message=str(exc))
            self.events.emit("task.failed", f"{task.service}.{task.slot}: {exc}", task.service, task.task_id)
            return
        self._retry_at.pop(task.task_id, None)
        self._observe(task, c)
        if c.running:
            self._running[task.task_id] = (task, c)
        await self._publish()
        self.events.emit(
            "task.started", f"{c.name} started on {self.node} ({c.id[:12]})", task.service, task.task_id
        )

    async def _replace(self, task: Assignment, c: Container) -> None:
        await self.publisher.withdraw(task.service, task.task_id)
        self._restarts[task.task_id] = self._restarts.get(task.task_id, 0) + 1
        self._set(task, TaskState.EXITED, container_id=c.id, exit_code=c.exit_code, message=c.error)
        self.events.emit(
            "task.exited", f"{c.name} exited with code {c.exit_code}; restarting", task.service, task.task_id
        )
        await self.runtime.remove(c.id)

    async def _stop(self, c: Container) -> None:
        """Withdraw the replica from every proxy, let its traffic drain, then stop it.

        Runs as its own task (passes go on meanwhile; a later pass that still lists the
        container does not stop it twice). A withdrawal that fails (etcd away) is
        retried by the next pass: the container is not stopped while it may still be
        in a rotation, unless it was never routable (not running).
        """
        service, task_id = c.labels.get(LABELS.SERVICE, ""), c.labels.get(LABELS.TASK, "")
        try:
            await self.publisher.withdraw(service, task_id)
        except StoreError as exc:
            if c.running:
                log.warning("%s not stopped yet: its endpoint could not be withdrawn: %s", c.name, exc)
                return
        if c.running:
            drain = await self._drain_time(service, c)
            if drain > 0:
                await asyncio.sleep(drain)  # proxies saw the withdrawal; in-flight requests finish
        try:
            await self.runtime.stop(c.id, self.stop_timeout)
        except RuntimeError_ as exc:
            log.warning("%s: stop failed, retried next pass: %s", c.name, exc)
            return
        self._restarts.pop(task_id, None)
        self.events.emit("task.stopped", f"{c.name} stopped and removed", service, task_id)

    def _stopped(self, container_id: str, _task: asyncio.Task[None]) -> None:
        self._stopping.pop(container_id, None)

    async def _drain_time(self, service: str, c: Container) -> float:
        """The service's `update.drain` when its spec says one, else the node's default."""
        try:
            spec = await self.specs.spec(service, int(c.labels.get(LABELS.VERSION, "0")))
        except (SpecNotFound, StoreError, ValueError):
            return self.drain
        drain = (spec.get("update") or {}).get("drain")
        return float(drain) if drain is not None else self.drain
