"""Placement: `schedule_all(snapshot, services) -> [Plan]`, a pure function.

One call plans every service over one shared, mutable view of the cluster's capacity
(`leader.placement.cluster`), so two services never both take the last free memory
of a node. `schedule(snapshot, service)` is the same for one service.

First, for each service (by name), what already exists is settled slot by slot:
- **keep** a task on an alive node that is not drained, still satisfies the
  constraints and the `max_per_node` limit, and whose template (the spec less
  `replicas`, `placement` and `mode`) is current; a scale never replaces a task;
- **replace** a task whose template changed: on the same node when the new
  reservation fits there (tried once every service has released what it stops), else
  it is placed anew (the old one runs until then);
- **move** a task off a drained node, a node it no longer satisfies the constraints
  of, or a node over `max_per_node`: placed anew, and the plan says which task it
  replaces (`Move`, `Assignment.replaces`), so the old one can be stopped only once
  the new one is healthy;
- **place** again a slot whose node is gone, or a missing slot;
- **keep** as it is, too, a task on a node whose record cannot be read (`Snapshot.held`);
- **stop** slots above `replicas`, the highest first. Global services (`mode: global`)
  have one task per eligible node: tasks on gone, drained or excluded nodes and
  duplicates are stopped instead of moved.

An old task a handoff keeps serving (`Assignment.handoff`, `leader.updates`) runs beside
its replacement, so it counts against its node's capacity until the handoff ends. Its
reservation is given back in the pass that drops it: its slot stopped, or the slot going
back to it (a rollback: `leader.updates.with_handoffs` restores it, and the placement
that stands for it is charged instead).

Then the replicas to place go out, global services first, then replicated ones in
decreasing size (largest reservation first: with binpack, that is first-fit-
decreasing), each by its strategy (`leader.placement.pick`): never on a dead, drained,
paused or constraint-excluded node, never beyond a node's free cpu or memory.
Replicas that fit nowhere stay in `Plan.unplaced` with `Plan.reason` saying why.

No I/O, no clock, no randomness except the task ids it is handed (`new_id`), so tests
replay it exactly. The leader commits the plans in fenced transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from leader.placement import pick, reasons, volumes
from leader.placement.cluster import Cluster
from leader.placement.requirements import SPREAD, Requirements, requirements, reservation_millicores
from node.model.domain import (  # re-exported: the leader's vocabulary
    Assignment,
    Availability,
    Desired,
    NodeInfo,
    ServiceRecord,
    VolumeClaim,
    new_task_id,
    template_hash,
)

volume_claims = volumes.by_service  # for the loop: stored claims -> Snapshot.volumes

# why a task is placed anew (`Move.why`)
UPDATE, DRAIN, CONSTRAINTS = "update", "drain", "constraints"
MAX_PER_NODE, NODE_LOST = "max_per_node", "node lost"
_DRAIN = Availability.DRAIN.value
_RUNNING = Desired.RUNNING.value


@dataclass(frozen=True)
class Snapshot:
    """What the leader knows at `revision`: alive nodes (labels as constraints see them:
    `node.model.domain.effective_labels`), every current assignment, and the nodes an
    operator drained or paused (absent: active)."""

    nodes: Mapping[str, NodeInfo]
    tasks: Mapping[tuple[str, int], Assignment]
    revision: int = 0
    availability: Mapping[str, str] = field(default_factory=dict)
    updatable: Mapping[str, frozenset[int]] = field(default_factory=dict)
    """Services under a rolling update (`leader.rollout`) -> the slots that may take the
    new template now; their other outdated tasks are kept as they are. A service not
    listed updates every outdated task at once."""
    volumes: Mapping[str, tuple[VolumeClaim, ...]] = field(default_factory=dict)
    """Service -> its volume claims (`leader.placement.volumes`): pinned slots."""
    held: frozenset[str] = frozenset()
    """Nodes whose stored record (or the operator's settings of it) cannot be read
    (`node.model.readable`): their tasks are kept as they are (no move, no update; a drain
    the operator set still moves them), and they are not `active`, so nothing new goes there."""


@dataclass(frozen=True)
class Move:
    """`new` takes slot `old.slot` over from `old`, because of `why` (update, drain,
    constraints, max_per_node, node lost)."""

    old: Assignment
    new: Assignment
    why: str


@dataclass
class Plan:
    service: str
    place: list[Assignment] = field(default_factory=list)  # new or replacing tasks
    stop: list[Assignment] = field(default_factory=list)  # slots to delete
    keep: list[Assignment] = field(default_factory=list)
    unplaced: list[int] = field(default_factory=list)  # slots with no node to go to
    moves: list[Move] = field(default_factory=list)  # the placed tasks that replace another
    pending_nodes: list[str] = field(default_factory=list)  # global: eligible nodes without room
    reason: str = ""  # why replicas are pending, for `ps` and events
    revision: int = 0  # the snapshot's revision this plan was computed at
    claims: list[VolumeClaim] = field(default_factory=list)  # volume claims to write
    uid: str = ""  # the service incarnation planned for (its pending reason is that one's)

    @property
    def empty(self) -> bool:
        return not self.place and not self.stop

    @property
    def pending(self) -> int:
        return len(self.unplaced) + len(self.pending_nodes)


class _Service:
    """One service's part of a pass: its plan, and what is left to place."""

    def __init__(
        self,
        cluster: Cluster,
        record: ServiceRecord,
        req: Requirements,
        epoch: int,
        now: float,
        new_id: Callable[[], str],
    ) -> None:
        self.cluster, self.record, self.req = cluster, record, req
        self.epoch, self.now, self.new_id = epoch, now, new_id
        self.template = template_hash(record.spec)
        self.cores = (record.spec.resources.cpu if record.spec.resources else None) or 0.0
        self.plan = Plan(record.name, uid=record.uid)
        self.needs: list[tuple[int, Assignment | None, str]] = []  # (slot, old task, why), by slot
        self.taken = 0
        self.mine: dict[int, int] = {}  # node index -> replicas of this service there
        self.holding: set[int] = set()  # global: nodes that have one
        self.in_place: list[tuple[int, Assignment]] = []  # outdated tasks to replace where they are
        self.used_slots: set[int] = set()  # global: slot numbers taken
        self.gate: frozenset[int] | None = None  # rolling update: the slots that may update now
        self.stateful = bool(record.spec.volumes)  # slots pinned by their volumes' claims
        self.reschedule = bool(record.spec.reschedule)
        self.claims: dict[int, dict[str, VolumeClaim]] = {}
        self.pins: dict[int, volumes.Pin] = {}
        self.waiting: dict[int, str] = {}  # pinned slots that cannot go to their node, and why
        self.held: frozenset[int] = frozenset()  # nodes whose tasks are kept as they are (`Snapshot.held`)

    def reserved(self, task: Assignment) -> tuple[int, int]:
        if task.template == self.template:
            return self.req.cpu, self.req.memory
        return reservation_millicores(task.cpu), task.memory

    def assign(self, i: int, slot: int, old: Assignment | None, why: str) -> None:
        req = self.req
        task = Assignment(
            self.new_id(),
            self.record.name,
            slot,
            self.cluster.ids[i],
            self.record.version,
            self.epoch,
            self.template,
            _RUNNING,
            self.now,
            self.cores,
            req.memory,
            old.task_id if old is not None else "",
            uid=self.record.uid,
            cause=self.record.cause,  # issue 14: its events name the apply that placed it
        )
        self.plan.place.append(task)
        if old is not None:
            self.plan.moves.append(Move(old, task, why))
        self.cluster.charge(i, req.cpu, req.memory)
        self.mine[i] = self.mine.get(i, 0) + 1
        self.holding.add(i)

    def take(self, i: int) -> None:
        """Place the next slot still to place on node i."""
        slot, old, why = self.needs[self.taken]
        self.taken += 1
        self.assign(i, slot, old, why)

    # -- settle what exists ---------------------------------------------------------------

    def settle(self, current: Mapping[int, Assignment]) -> None:
        if self.req.global_mode:
            self._settle_global(current)
        else:
            self._settle_replicated(current)

    def _release(self, i: int | None, task: Assignment, stopped: bool = False) -> None:
        """Give back `task`'s reservation, and that of the old task its handoff holds when
        the pass drops it (`stopped`) or restores it (see the module docstring)."""
        if i is not None:
            self.cluster.release(i, *self.reserved(task))
        held = task.handed_off() if task.handoff else None
        if held is not None and (stopped or held.template == self.template):
            j = self.cluster.index.get(held.node)
            if j is not None:
                self.cluster.release(j, *self.reserved(held))

    def _settle_replicated(self, current: Mapping[int, Assignment]) -> None:
        cluster, req, plan, index = self.cluster, self.req, self.plan, self.cluster.index
        replicas = self.record.replicas
        for slot in sorted(current, reverse=True):
            if slot > replicas:
                plan.stop.append(current[slot])
                self._release(index.get(current[slot].node), current[slot], stopped=True)
        matching = cluster.matching(req.constraints)
        for slot in range(1, replicas + 1):
            task = current.get(slot)
            if task is None:
                self.needs.append((slot, None, ""))
                continue
            i = index.get(task.node)
            if i is None:
                self._release(None, task)  # its node's capacity is not counted; a handoff's may be
                self.needs.append((slot, task, NODE_LOST))
                continue
            why = ""
            if cluster.availability[i] == _DRAIN:
                why = DRAIN
            elif i in self.held:  # its node's record cannot be read: neither moved nor updated
                plan.keep.append(task)
                self.mine[i] = self.mine.get(i, 0) + 1
                continue
            elif not matching[i]:
                why = CONSTRAINTS
            elif self.mine.get(i, 0) >= req.max_per_node:
                why = MAX_PER_NODE
            if why and self._stays(slot, task):
                why = ""  # its volume's data is on this node: it stays (no reschedule: true)
            if not why and (
                task.template == self.template or (self.gate is not None and slot not in self.gate)
            ):
                plan.keep.append(task)  # current, or outdated but not its turn in a rollout yet
                self.mine[i] = self.mine.get(i, 0) + 1
                continue
            self._release(i, task)
            if why:
                self.needs.append((slot, task, why))
            else:
                self.in_place.append((i, task))
                self.mine[i] = self.mine.get(i, 0) + 1  # claimed, for max_per_node

    def _settle_global(self, current: Mapping[int, Assignment]) -> None:
        cluster, plan, index = self.cluster, self.plan, self.cluster.index
        matching = cluster.matching(self.req.constraints)
        claimed: set[int] = set()  # nodes with a task kept or updated in place
        for slot in sorted(current):
            task = current[slot]
            i = index.get(task.node)
            held = i is not None and i in self.held  # its node's record cannot be read: kept as it is
            if i is None or i in claimed or cluster.availability[i] == _DRAIN or not (matching[i] or held):
                plan.stop.append(task)
                self._release(i, task, stopped=True)
                continue
            claimed.add(i)
            if held or task.template == self.template or (self.gate is not None and slot not in self.gate):
                plan.keep.append(task)
                self.mine[i] = 1
                self.holding.add(i)
            else:
                self._release(i, task)
                self.in_place.append((i, task))
        self.used_slots = set(current)

    def _stays(self, slot: int, task: Assignment) -> bool:
        pin = self.pins.get(slot)
        return self.stateful and not self.reschedule and pin is not None and pin.node == task.node

    def place_pinned(self) -> None:
        """Pinned slots go to their node or wait (`leader.placement.volumes`); the others,
        and slots rescheduled off a lost node, stay in `needs` for the ordinary rules."""
        cluster, req, free = self.cluster, self.req, []
        matching = cluster.matching(req.constraints)
        for slot, old, why in self.needs:
            pin = self.pins.get(slot)
            if pin is None:
                free.append((slot, old, why))
                continue
            i = cluster.index.get(pin.node)
            if pin.removing:
                what = "removing"
            elif i is None:
                what = volumes.LOST
            elif cluster.availability[i] == _DRAIN:
                what = volumes.DRAINED
            elif cluster.availability[i] != Availability.ACTIVE.value:
                what = volumes.PAUSED
            elif not matching[i]:
                what = volumes.EXCLUDED
            elif not cluster.fits(i, req.cpu, req.memory):
                what = volumes.FULL
            else:
                self.assign(i, slot, old, why)
                continue
            if self.reschedule and what in volumes.RESCHEDULABLE:
                free.append((slot, old, why))  # starts empty elsewhere: new claims
            else:
                self.waiting[slot] = volumes.waiting_reason(slot, pin, what)
        self.needs = free

    def write_claims(self) -> None:
        """Claims for placed and kept tasks whose volumes have none on their node."""
        if not self.stateful:
            return
        for task in (*self.plan.place, *self.plan.keep):
            self.plan.claims += volumes.claims_for(
                self.record, task, self.claims.get(task.slot, {}), self.now
            )

    def update_in_place(self) -> None:
        """Replace outdated tasks on their own node where the new reservation fits. Runs
        once every service has released what it stops, and before anything is placed."""
        req, mine = self.req, self.mine
        for i, task in self.in_place:
            if not req.global_mode:
                mine[i] -= 1  # the claim made while settling; `assign` counts it again
                if not mine[i]:
                    del mine[i]
            if self.cluster.fits(i, req.cpu, req.memory):
                self.assign(i, task.slot, task, UPDATE)
            elif not req.global_mode:
                self.needs.append((task.slot, task, UPDATE))  # the old one runs until then
        self.needs.sort(key=lambda need: need[0])
        if req.global_mode:
            _, eligible = self.cluster.eligible(req.constraints)
            slot = 0
            for _ in range(len(eligible) - len(self.holding.intersection(eligible))):
                slot += 1
                while slot in self.used_slots:
                    slot += 1
                self.needs.append((slot, None, ""))

    # -- place what is missing ----------------------------------------------------------

    def place(self) -> None:
        cluster, req, plan = self.cluster, self.req, self.plan
        if self.stateful and not req.invalid:
            self.place_pinned()
        if req.invalid:
            plan.reason = req.invalid
        elif self.needs:
            mask, nodes = cluster.eligible(req.constraints)
            if req.global_mode:
                short = pick.one_per_node(cluster, req, nodes, self.holding, self.take)
                plan.pending_nodes = [cluster.ids[i] for i in short]
                if short:
                    plan.reason = reasons.pending_global(cluster, req, short)
            else:
                place = pick.binpack if req.strategy == "binpack" else pick.spread
                place(cluster, req, mask, nodes, self.mine, len(self.needs), self.take)
        if not req.global_mode:
            plan.unplaced = sorted([*self.waiting, *(slot for slot, _, _ in self.needs[self.taken :])])
        self.write_claims()

    def explain(self) -> None:
        if self.plan.unplaced:
            why = [self.waiting[slot] for slot in sorted(self.waiting)]
            if len(self.plan.unplaced) > len(self.waiting):
                why.append(reasons.pending(self.cluster, self.req, self.mine))
            self.plan.reason = "; ".join(why)


def schedule_all(
    snapshot: Snapshot,
    services: Iterable[ServiceRecord],
    epoch: int,
    now: float = 0.0,
    new_id: Callable[[], str] = new_task_id,
    default_strategy: str = SPREAD,
) -> list[Plan]:
    """Plan every service in one pass over shared capacity; plans in service name order."""
    cluster = Cluster(snapshot.nodes, snapshot.availability)
    work = {
        r.name: _Service(cluster, r, requirements(r.spec, default_strategy), epoch, now, new_id)
        for r in sorted(services, key=lambda r: r.name)
    }
    by_service: dict[str, dict[int, Assignment]] = {}
    index, used_cpu, used_mem, tasks = cluster.index, cluster.used_cpu, cluster.used_mem, cluster.tasks
    for (service, slot), task in snapshot.tasks.items():
        by_service.setdefault(service, {})[slot] = task
        w = work.get(service)
        held = task.handed_off() if task.handoff else None  # it runs too, until the handoff ends
        for t in (task,) if held is None else (task, held):
            i = index.get(t.node)
            if i is not None:
                cpu, memory = w.reserved(t) if w else (reservation_millicores(t.cpu), t.memory)
                used_cpu[i] += cpu
                used_mem[i] += memory
                tasks[i] += 1
    for name, w in work.items():
        w.plan.revision = snapshot.revision
        w.gate = snapshot.updatable.get(name)
        w.held = frozenset(index[n] for n in snapshot.held if n in index)
        if w.stateful or snapshot.volumes.get(name):
            claims = snapshot.volumes.get(name, ())
            w.claims, w.pins = volumes.claims_by_slot(w.record, claims), volumes.pins(w.record, claims)
        w.settle(by_service.get(name, {}))
    for w in work.values():
        w.update_in_place()
    top_cpu = max(cluster.cap_cpu, default=0) or 1
    top_mem = max(cluster.cap_mem, default=0) or 1

    def size(w: _Service) -> float:
        return max(w.req.cpu / top_cpu, w.req.memory / top_mem)

    for w in sorted(work.values(), key=lambda w: (not w.req.global_mode, -size(w), w.record.name)):
        w.place()
    for w in work.values():
        w.explain()
    return [w.plan for w in work.values()]


def schedule(
    snapshot: Snapshot,
    service: ServiceRecord,
    epoch: int,
    now: float = 0.0,
    new_id: Callable[[], str] = new_task_id,
) -> Plan:
    """Plan one service; the tasks of every other service in `snapshot` count as load."""
    [plan] = schedule_all(snapshot, [service], epoch, now, new_id)
    return plan
