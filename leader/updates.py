"""The leader's side of updates and handoffs, between the scheduler and the applier.

Pure functions over what the leader's mirrors hold; `leader.loop` does the I/O.

- `decide`: for every service whose tasks are not all on the current template, start or
  step its rollout (`leader.rollout`) and say which slots the scheduler may update now
  (`Decisions.allowed`); a service whose rollback is due (`leader.rollout.rollback_due`: its
  rollout failed with `failure_action: rollback`, in this pass or stored so by an earlier
  leader, and no rollback is written yet) is listed in `Decisions.rollbacks`, and none
  of its slots updates. A new version with the same template (a scale, a changed
  `update:` policy) goes on with the rollout under way, its window, failed slots, pause
  or due rollback kept: started anew, it exceeded `parallelism`, resumed a paused bad
  version, and forgot a due rollback. A rollout started anew comes from the last version
  known good (`good_version`), which an automatic rollback returns to.
- `with_handoffs`: a task placed to replace another (a start-first update, a move off a
  drained node or a node that no longer fits the constraints) *hands off*: the old task
  stays assigned, inside the new assignment, and keeps serving until the new one is
  ready. Going back to the task a handoff still holds (a rollback) restores it as it was,
  container and all, instead of starting a third one. A new task lost with its node before
  it was ready hands on what it held: its replacement holds the same old task (never the
  lost one: a handoff holds one task, no chain), or that task is restored when it is what
  the slot wants; else nothing referenced the old replica, still serving, and it stopped.
  So does a new task moved on before it was ready for any other reason (its node drained,
  its constraints changed, a newer update): its replacement holds the old task still
  serving, never the unready one. Only a new task whose handoff is over this pass
  (`releases`: ready) is itself what its replacement holds.
- `releases`: a handoff ends when the new task is ready (running and healthy), or when
  the old task's node is gone; the old replica is then withdrawn, drained and stopped by
  its agent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

from leader.rollout import (
    Health,
    RolloutState,
    SlotView,
    UpdatePolicy,
    rollback_due,
    start,
    step,
    update_policy,
)
from leader.scheduler import CONSTRAINTS, DRAIN, MAX_PER_NODE, NODE_LOST, UPDATE, Plan, template_hash
from node.model.domain import Assignment, RolloutRecord, ServiceRecord, TaskHealth, TaskState, TaskStatus
from node.model.keys import Keys
from node.store.cache import PrefixCache

HANDOFF_REASONS = frozenset({UPDATE, DRAIN, CONSTRAINTS, MAX_PER_NODE})


class Statuses(Protocol):
    """Task statuses by task id, looked up only for the tasks that need one (a dict does)."""

    def get(self, task_id: str, /) -> TaskStatus | None: ...


def health(task: Assignment, status: TaskStatus | None) -> Health:
    """READY: running and healthy (or no check); FAILED: exited, failed, unhealthy, or
    restarted since it was placed; else STARTING."""
    if status is None or status.task_id != task.task_id:
        return Health.STARTING
    failed = (
        status.state in (TaskState.EXITED.value, TaskState.FAILED.value)
        or status.health == TaskHealth.UNHEALTHY
    )
    if failed or status.restarts > 0:
        return Health.FAILED
    if status.routable:  # exactly when its agent publishes it
        return Health.READY
    return Health.STARTING


@dataclass
class Decisions:
    allowed: dict[str, frozenset[int]] = field(default_factory=dict)  # service -> slots that may update
    records: dict[str, RolloutRecord] = field(default_factory=dict)  # changed rollout records to write
    rollbacks: list[RolloutRecord] = field(default_factory=list)  # due: roll back to from_version
    policies: dict[str, UpdatePolicy] = field(default_factory=dict)


def decide(
    services: Mapping[str, ServiceRecord],
    tasks: Mapping[tuple[str, int], Assignment],
    statuses: Statuses,
    rollouts: Mapping[str, RolloutRecord],
    alive: set[str],
    now: float,
) -> Decisions:
    out = Decisions()
    by_service: dict[str, dict[int, Assignment]] = {}
    for (service, slot), task in tasks.items():
        by_service.setdefault(service, {})[slot] = task
    for name, record in services.items():
        policy = update_policy(record.spec)
        out.policies[name] = policy
        target = template_hash(record.spec)
        current = {
            slot: t
            for slot, t in by_service.get(name, {}).items()
            if slot <= record.replicas and t.node in alive
        }
        r = rollouts.get(name)
        outdated = [t for t in current.values() if t.template != target]
        if r is not None and carried_over(r, record, target):
            r = replace(r, to_version=record.version)
            out.records[name] = r
        if r is None or r.target != target or r.to_version != record.version or r.uid != record.uid:
            if not outdated:
                continue  # first deploy, or nothing to update
            before = good_version(r, record, max(t.version for t in outdated))
            r = start(name, before, record.version, target, now, rollback_of=record.rollback_of)
            r = replace(r, uid=record.uid)  # a record of a removed namesake is never continued
            out.records[name] = r
        if rollback_due(record, target, r):
            out.rollbacks.append(r)  # stored failed, its rollback never written: write it now
            out.allowed[name] = frozenset()
            continue
        if not RolloutState(r.state).active:
            if outdated:
                out.allowed[name] = frozenset()  # paused or failed: nothing more updates
            continue
        slots = {
            slot: SlotView(t.template, health(t, statuses.get(t.task_id)), bool(t.handoff))
            for slot, t in current.items()
        }
        result = step(r, policy, slots, now)
        if result.changed or name in out.records:
            out.records[name] = result.record
        out.allowed[name] = frozenset(int(s) for s in result.record.batch)
        if result.rollback:
            out.rollbacks.append(result.record)
            out.allowed[name] = frozenset()
    return out


def carried_over(r: RolloutRecord, record: ServiceRecord, target: str) -> bool:
    """Whether `record`, a new version of the same incarnation and template as rollout `r`,
    continues it (see the module docstring); an ended-well rollout is not continued."""
    return (
        r.uid == record.uid
        and r.target == target
        and r.to_version != record.version
        and r.state not in (RolloutState.COMPLETED.value, RolloutState.ROLLED_BACK.value)
    )


def good_version(r: RolloutRecord | None, record: ServiceRecord, newest: int) -> int:
    """The version a new rollout to `record` comes from: the newest outdated one (`newest`),
    unless the service's last rollout did not end well (updating, paused, failed with its
    rollback not written): then that one's own origin, as the version it went to is not
    known good. (From the newest, a failure after a paused bad version rolled back to it.)
    A rollback (`rollback_of`) comes from the version it undoes, as `shoal service rollback`
    of it expects."""
    if r is None or r.uid != record.uid or record.rollback_of:
        return newest
    if r.state in (RolloutState.COMPLETED.value, RolloutState.ROLLED_BACK.value):
        return newest
    return r.to_version if r.rollback_of else r.from_version  # a rollback went to a good spec


def _plain(task: Assignment) -> dict[str, object]:
    return {k: v for k, v in asdict(task).items() if k != "handoff"}


def with_handoffs(
    plan: Plan, policy: UpdatePolicy, alive: set[str], over: Collection[str] = frozenset()
) -> Plan:
    """Give the tasks of `plan` that replace another a handoff (see the module docstring).
    `over`: ids of the tasks whose handoff ends this pass (`releases`); a task moved on
    while it still holds one is replaced by a task that holds the same old one."""
    if not plan.moves:
        return plan
    placed = {t.task_id: t for t in plan.place}
    for move in plan.moves:
        new = placed.get(move.new.task_id)
        if new is None:
            continue
        old, held = move.old, move.old.handed_off()
        if held is not None and held.node in alive:
            if held.template == new.template:
                placed[new.task_id] = held  # back to the task still serving the slot: keep it
                continue
            if move.why == NODE_LOST or old.task_id not in over:
                old = held  # moved before it was ready: its replacement takes over from the one serving
        if old is move.old and (move.why not in HANDOFF_REASONS or old.node not in alive):
            continue
        if move.why == UPDATE and policy.order == "stop-first":
            continue
        placed[new.task_id] = replace(new, handoff=_plain(old))
    plan.place = [placed[t.task_id] for t in plan.place]
    return plan


def releases(
    tasks: Mapping[tuple[str, int], Assignment], statuses: Statuses, alive: set[str]
) -> list[Assignment]:
    """Assignments whose handoff is over, as they should be written (handoff emptied)."""
    out = []
    for task in tasks.values():
        old = task.handed_off()
        if old is None:
            continue
        if old.node not in alive or health(task, statuses.get(task.task_id)) is Health.READY:
            out.append(replace(task, handoff={}))
    return out


class StatusView:
    """Statuses parsed on demand from the mirror: a pass looks up only the tasks under an
    update or a handoff, not every status of a large cluster."""

    def __init__(self, cache: PrefixCache, keys: Keys) -> None:
        self.cache, self.keys = cache, keys

    def get(self, task_id: str, /) -> TaskStatus | None:
        kv = self.cache.items.get(self.keys.status(task_id))
        return None if kv is None else TaskStatus.from_json(kv.value)
