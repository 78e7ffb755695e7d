"""The leader's reconcile loop: services and nodes in, fenced task assignments out.

Level-triggered: every pass reads the whole desired state (services) and actual
state (alive nodes, assignments) from local mirrors, plans each service with the
pure scheduler and commits the difference. A pass runs on any change under
`services/`, `nodes/` or `tasks/`, and every `resync` seconds regardless, so a
missed or failed pass heals by itself. `Fenced` ends the loop: this node no
longer leads.
"""

from __future__ import annotations

import asyncio
import logging
import time

from leader.applier import Applier, Write, writes_for
from leader.liveness import DownMarks, Liveness
from leader.scheduler import Plan, Snapshot, schedule
from node.domain import Assignment, NodeInfo, ServiceRecord
from node.events import EventLog
from node.keys import Keys
from node.store import Fenced, Store, StoreError
from node.store.cache import PrefixCache

log = logging.getLogger(__name__)


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
        self.events = events
        self.resync = resync
        self.applier = Applier(store, keys, epoch)
        self.services = PrefixCache(store, keys.services, "services")
        self.nodes = PrefixCache(store, keys.nodes, "nodes")
        self.tasks = PrefixCache(store, keys.tasks, "tasks")
        self.down = DownMarks(store, keys, epoch, liveness, events, down_grace)
        self.liveness = liveness
        self._known_nodes: set[str] | None = None
        self.passes = 0

    async def run(self) -> None:
        caches = (self.services, self.nodes, self.tasks, self.down.cache)
        async with asyncio.TaskGroup() as tg:
            for cache in caches:
                tg.create_task(cache.run(), name=f"leader-watch-{cache.name}")
            tg.create_task(self._loop(caches), name="leader-reconcile")

    async def _loop(self, caches: tuple[PrefixCache, ...]) -> None:
        wake = asyncio.Event()
        listeners = [c.listener() for c in caches]
        for cache in caches:
            await cache.ready.wait()

        async def relay(ev: asyncio.Event) -> None:
            while True:
                await ev.wait()
                ev.clear()
                wake.set()

        if self.liveness is not None:
            listeners.append(self.liveness.listener())
        relays = [asyncio.create_task(relay(ev)) for ev in listeners]
        try:
            while True:
                pending = self.down.next_deadline()
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
        finally:
            for task in relays:
                task.cancel()

    def snapshot(self) -> tuple[dict[str, ServiceRecord], Snapshot, dict[str, int]]:
        services = {}
        for kv in self.services.values():
            record = ServiceRecord.from_json(kv.value)
            services[record.name] = record
        nodes = {}
        excluded = self.down.excluded()
        for kv in self.nodes.values():
            info = NodeInfo.from_json(kv.value)
            if info.id not in excluded:
                nodes[info.id] = info
        tasks: dict[tuple[str, int], Assignment] = {}
        seen: dict[str, int] = {}
        for kv in self.tasks.values():
            task = Assignment.from_json(kv.value)
            tasks[(task.service, task.slot)] = task
            seen[kv.key] = kv.mod_revision
        return services, Snapshot(nodes, tasks, self.tasks.revision), seen

    async def reconcile(self) -> None:
        self.passes += 1
        registry = {self.keys.tail(kv.key, self.keys.nodes) for kv in self.nodes.values()}
        holders = {Assignment.from_json(kv.value).node for kv in self.tasks.values()}
        await self.down.sync(registry, registry | holders)
        services, snap, seen = self.snapshot()
        self._node_events(set(snap.nodes))
        tasks = dict(snap.tasks)
        writes: list[Write] = []
        plans: list[Plan] = []
        now = time.time()
        for name in sorted(services):
            plan = schedule(Snapshot(snap.nodes, tasks, snap.revision), services[name], self.epoch, now)
            for task in plan.stop:
                tasks.pop((task.service, task.slot), None)
            for task in plan.place:
                tasks[(task.service, task.slot)] = task
            writes += writes_for(plan, self.keys, seen)
            plans.append(plan)
        orphans = {svc for svc, _ in snap.tasks} - set(services)
        for svc in sorted(orphans):
            await self.applier.delete_prefix(self.keys.service_tasks(svc))
            self.events.emit("service.removed", f"tasks of removed service {svc} unassigned", service=svc)
        if not writes:
            return
        stale, revision = await self.applier.commit(writes)
        if stale:
            log.info("%d batch(es) stale; re-planning", stale)
        else:
            self._plan_events(plans)
        await self._caught_up(revision)

    async def _caught_up(self, revision: int, timeout: float = 2.0) -> None:
        """Wait until our own writes are in the mirror, so the next pass sees them."""
        deadline = time.monotonic() + timeout
        ev = self.tasks.listener()
        while self.tasks.revision < revision and time.monotonic() < deadline:
            ev.clear()
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await ev.wait()
            except TimeoutError:
                break
        self.tasks.remove_listener(ev)

    def _node_events(self, alive: set[str]) -> None:
        if self._known_nodes is not None:
            for node in sorted(alive - self._known_nodes):
                self.events.emit("node.joined", f"node {node} joined")
            for node in sorted(self._known_nodes - alive):
                self.events.emit(
                    "node.lost", f"node {node} lost (lease expired or dead to gossip); its tasks move"
                )
        self._known_nodes = alive

    def _plan_events(self, plans: list[Plan]) -> None:
        for plan in plans:
            for task in plan.place:
                self.events.emit(
                    "task.placed",
                    f"{task.service}.{task.slot} ({task.task_id}) placed on {task.node}",
                    service=task.service,
                    task=task.task_id,
                )
            for task in plan.stop:
                self.events.emit(
                    "task.unassigned",
                    f"{task.service}.{task.slot} ({task.task_id}) unassigned from {task.node}",
                    service=task.service,
                    task=task.task_id,
                )
            if plan.unplaced:
                self.events.emit(
                    "service.pending",
                    f"{len(plan.unplaced)} replica(s) pending: no alive node",
                    service=plan.service,
                )
