"""Rolling updates: a state machine the leader steps on every pass.

A rollout takes a service's slots from their current template to `target` (the
template hash of the new spec), a few at a time. Its state is a `RolloutRecord`
stored in etcd (`rollouts/<service>`), written by the leader in the same fenced way
as assignments, so a new leader reads it and continues where the last one was.

How one slot is updated (the leader lets the scheduler replace the slots of
`record.batch`; `leader.updates` gives the new task its handoff and ends it):
- **start-first**: a new task is assigned to the slot and *hands off* from the old one:
  the old task stays assigned (as the new assignment's `handoff`) and keeps serving
  until the new replica is healthy; then the handoff is released, the old replica is
  withdrawn from every proxy, drained and stopped;
- **stop-first**: the new task replaces the old one at once; the old replica is
  withdrawn, drained and stopped while the new one starts.

The window. Up to `parallelism` slots are in flight at a time (a sliding window, as
Swarm's updater: a slot that turns healthy frees its place, which rests `delay`
seconds before it takes the next slot). Each updated slot is then *monitored* for `monitor` seconds:
a replica that fails (exits, crash-loops, turns unhealthy) within it counts as failed,
as does one that is not healthy within `progress_deadline`.

Failure. When failed slots exceed `max_failure_ratio` of the replicas, `failure_action`
decides: `pause` stops starting slots (state `paused`; a new apply or a rollback goes
on), `continue` ignores it, `rollback` ends this rollout as `failed` and asks the
leader (`Step.rollback`) to roll back to the last version that was fully healthy, with
the same machinery (that rollout's own failure action is `pause`: no ping-pong).

Pure: no I/O, no clock (`now` is passed in), no grpc, docker or etcd.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from node.model.domain import RolloutRecord, ServiceRecord
from node.model.spec import ServiceSpec
from node.model.spec_lifecycle import UpdateConfig

PROGRESS_DEADLINE = 300.0
"""Seconds a new replica may take to become healthy before its slot counts as failed."""


class RolloutState(StrEnum):
    UPDATING = "updating"
    ROLLING_BACK = "rolling_back"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"  # a rollback that completed
    FAILED = "failed"  # ended by its failure action (`rollback`: a rollback follows)

    @property
    def active(self) -> bool:
        return self in (RolloutState.UPDATING, RolloutState.ROLLING_BACK)


class Health(StrEnum):
    """What the leader makes of a slot's task from its status (`slot_health`)."""

    READY = "ready"  # running, and healthy (or has no check)
    STARTING = "starting"  # assigned, not yet ready
    FAILED = "failed"  # exited, failed, unhealthy, or restarted since it was placed


UpdatePolicy = UpdateConfig
"""A spec's `update:` section (`node.model.spec_lifecycle.UpdateConfig`), whose defaults are
shoal's: zero failed requests and a bad version that comes back by itself (start-first,
rollback). Written once, in the model."""


def update_policy(spec: ServiceSpec) -> UpdatePolicy:
    """The spec's update policy, or the defaults when it has none. A service with volumes
    always updates stop-first: its new container may use the volume only once the old one
    has stopped (the agent waits for that, `node.agent.volumes`)."""
    policy = spec.update or UpdateConfig()
    if spec.volumes and policy.order != "stop-first":
        policy = policy.model_copy(update={"order": "stop-first"})
    return policy


@dataclass(frozen=True)
class SlotView:
    """One slot as the leader sees it now."""

    template: str  # of the task assigned to the slot
    health: Health
    handoff: bool = False  # an old task still serves it (start-first), for display


@dataclass
class Step:
    record: RolloutRecord
    replace: list[int] = field(default_factory=list)  # slots to give a task of the target template
    rollback: bool = False  # roll back to `record.from_version` (the caller writes it)
    changed: bool = False  # the record changed: write it


def start(
    service: str, from_version: int, to_version: int, target: str, now: float, rollback_of: int = 0
) -> RolloutRecord:
    state = RolloutState.ROLLING_BACK if rollback_of else RolloutState.UPDATING
    return RolloutRecord(
        service=service,
        from_version=from_version,
        to_version=to_version,
        target=target,
        state=state.value,
        rollback_of=rollback_of,
        started_at=now,
        updated_at=now,
    )


def step(r: RolloutRecord, policy: UpdatePolicy, slots: Mapping[int, SlotView], now: float) -> Step:
    """Advance `r` given the slots now; pure."""
    state = RolloutState(r.state)
    if not state.active:
        return Step(r)
    if state is RolloutState.ROLLING_BACK:
        policy = policy.model_copy(update={"failure_action": "pause"})
    batch = {int(s): t for s, t in r.batch.items()}  # slot -> when it was given the new task
    monitored = {int(s): t for s, t in r.monitored.items()}  # slot -> when it turned ready
    failed = set(r.failed)
    cooldown = [t for t in r.cooldown if t > now]
    out = Step(r)

    for slot in list(batch):
        view = slots.get(slot)
        if view is None:  # scaled away
            del batch[slot]
        elif view.template != r.target:
            out.replace.append(slot)  # our write was lost (leader change, conflict): again
        elif view.health is Health.FAILED or now - batch[slot] > PROGRESS_DEADLINE:
            del batch[slot]
            failed.add(slot)
        elif view.health is Health.READY:
            del batch[slot]
            monitored[slot] = now
            cooldown.append(now + policy.delay)  # this slot's place in the window rests `delay`
    for slot in list(monitored):
        view = slots.get(slot)
        if view is None or now - monitored[slot] >= policy.monitor:
            del monitored[slot]
        elif view.template == r.target and view.health is Health.FAILED:
            del monitored[slot]
            failed.add(slot)
    replicas = max(1, len(slots))
    message = r.message
    new_state = state
    if failed and len(failed) / replicas > policy.max_failure_ratio and policy.failure_action != "continue":
        slots_text = ", ".join(map(str, sorted(failed)))
        what = f"{len(failed)} of {replicas} updated replica(s) failed (slots {slots_text})"
        if policy.failure_action == "rollback":
            new_state, out.rollback = RolloutState.FAILED, True
            message = f"{what}; rolling back to version {r.from_version}"
        else:
            new_state = RolloutState.PAUSED
            message = f"{what}; paused (apply a fixed spec, or `shoal service rollback {r.service}`)"

    cooldown = [t for t in cooldown if t > now]
    if new_state is state:
        todo = sorted(
            s for s, v in slots.items() if v.template != r.target and s not in failed and s not in batch
        )
        while todo and len(batch) + len(cooldown) < policy.parallelism:
            slot = todo.pop(0)
            batch[slot] = now
            out.replace.append(slot)
        if not todo and not batch and not monitored:
            new_state = (
                RolloutState.ROLLED_BACK if state is RolloutState.ROLLING_BACK else RolloutState.COMPLETED
            )
            message = f"{len(slots)} replica(s) on version {r.to_version}" + (
                f"; {len(failed)} failed" if failed else ""
            )

    updated = sum(1 for v in slots.values() if v.template == r.target)
    record = replace(
        r,
        state=new_state.value,
        batch={str(s): t for s, t in sorted(batch.items())},
        monitored={str(s): t for s, t in sorted(monitored.items())},
        failed=sorted(failed),
        cooldown=sorted(cooldown),
        updated=updated,
        total=len(slots),
        message=message,
    )
    if _progress(record) != _progress(r):
        out.changed = True
        record = replace(record, updated_at=now)
    out.record = record
    out.replace = sorted(set(out.replace))
    return out


def rollback_due(record: ServiceRecord, target: str, r: RolloutRecord | None) -> bool:
    """Whether `r`, the stored (or just decided) rollout of `record` (whose template hash is
    `target`), calls for a rollback not written yet: it failed (only `failure_action:
    rollback` ends a rollout `failed`) and the service still runs the version it went to.
    Once the rollback is written the service is a version further and this is false."""
    return (
        r is not None
        and r.state == RolloutState.FAILED.value
        and r.to_version == record.version
        and r.target == target
        and r.uid == record.uid
    )


def _progress(r: RolloutRecord) -> tuple[object, ...]:
    return (r.state, r.batch, r.monitored, r.failed, r.cooldown, r.updated, r.total, r.message)
