"""The depends_on gate: which services' first tasks wait for their dependencies.

A service with `depends_on` gets no task placed while it has none at all and one of its
dependencies' conditions does not hold (`node.compose.depends`): the scheduler does not
plan it that pass, and its replicas are pending with the reason "waiting for db
(healthy)", published like any pending reason (`leader.pending`), so `service ps`,
`stack ps` and the `service.pending` event say it. As soon as the conditions hold, the
next pass places it (the leader follows status changes while a service is gated).

Only the start is gated, as Compose does: a service that has tasks (running, or being
rolled out or rescheduled) is planned as usual, even when a dependency later turns
unhealthy or goes away; that is shown by `stack ps`, never cascaded. A service scaled to
0 and back up is gated again.

Pure: the caller passes what it observed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from leader.scheduler import Plan
from node.compose.depends import DepState, waiting_reason
from node.model.domain import Assignment, Desired, ServiceRecord, TaskState, TaskStatus


def gated(
    services: Mapping[str, ServiceRecord],
    with_tasks: Collection[str],
    observe: Callable[[str], DepState],
) -> dict[str, str]:
    """Service -> why its first tasks wait, for every service that must wait this pass.
    `with_tasks`: the services that have at least one task; `observe(name)`: a dependency's
    state (only called for services that may be gated)."""
    out: dict[str, str] = {}
    for name, record in services.items():
        spec = record.spec
        if not spec.depends_on or name in with_tasks or (spec.replicas == 0 and spec.mode != "global"):
            continue
        states = {dep: observe(dep) for dep in spec.depends_on}
        reason = waiting_reason(spec.depends_on, states, spec.stack)
        if reason:
            out[name] = reason
    return out


def waiting_plan(record: ServiceRecord, reason: str, nodes: Collection[str], revision: int = 0) -> Plan:
    """The plan of a gated service: nothing placed, every replica pending with `reason`."""
    uid = record.uid
    if record.spec.mode == "global":
        return Plan(record.name, pending_nodes=sorted(nodes), reason=reason, revision=revision, uid=uid)
    return Plan(
        record.name, unplaced=list(range(1, record.replicas + 1)), reason=reason, revision=revision, uid=uid
    )


def observer(
    services: Collection[str],
    tasks: Mapping[tuple[str, int], Assignment],
    status: Callable[[str], TaskStatus | None],
    succeeded: Collection[str] = (),
) -> Callable[[str], DepState]:
    """`observe` for `gated` over a pass's snapshot: a dependency's tasks that should run,
    counted by their agents' statuses; `succeeded`: the jobs whose record says so (for
    `completed`). The task index is built on the first call only."""
    index: dict[str, list[Assignment]] | None = None

    def observe(name: str) -> DepState:
        nonlocal index
        if index is None:
            index = {}
            for (service, _), task in tasks.items():
                index.setdefault(service, []).append(task)
        running = healthy = 0
        for task in index.get(name, ()):
            s = status(task.task_id) if task.desired == Desired.RUNNING else None
            if s is not None and s.state == TaskState.RUNNING:
                running += 1
                healthy += s.routable  # the one rule (node.model.domain.routable)
        return DepState(name in services, running, healthy, name in succeeded)

    return observe
