"""Placement, first cut: `schedule(snapshot, service) -> Plan`, a pure function.

Slots are numbered 1..replicas. For one service the scheduler decides, slot by slot:
- **keep** a task whose node is alive and whose template (the spec without
  `replicas`) is current;
- **replace** a task whose template is outdated (same node, a new task id);
- **place** a missing slot, or a task whose node is gone, on the alive node with
  the fewest replicas of this service, then the fewest tasks overall, then by id
  (deterministic);
- **stop** slots above `replicas`, the highest first.

No I/O, no clock, no randomness except the task ids it is handed (`new_id`), so
tests replay it exactly. The leader commits the plan in fenced transactions.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.domain import Assignment, NodeInfo, ServiceRecord, new_task_id


def template_hash(spec: Mapping[str, Any]) -> str:
    """A stable hash of what a container is made from: the spec less `replicas`."""
    body = {k: v for k, v in spec.items() if k != "replicas"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    """What the leader knows at `revision`: alive nodes and every current assignment."""

    nodes: Mapping[str, NodeInfo]
    tasks: Mapping[tuple[str, int], Assignment]
    revision: int = 0


@dataclass
class Plan:
    service: str
    place: list[Assignment] = field(default_factory=list)  # new or replacing tasks
    stop: list[Assignment] = field(default_factory=list)  # slots to delete
    keep: list[Assignment] = field(default_factory=list)
    unplaced: list[int] = field(default_factory=list)  # slots with no node to go to

    @property
    def empty(self) -> bool:
        return not self.place and not self.stop


def _node_load(snapshot: Snapshot, service: str) -> tuple[Counter[str], Counter[str]]:
    mine: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for (svc, _), task in snapshot.tasks.items():
        if task.node in snapshot.nodes:
            total[task.node] += 1
            if svc == service:
                mine[task.node] += 1
    return mine, total


def schedule(
    snapshot: Snapshot,
    service: ServiceRecord,
    epoch: int,
    now: float = 0.0,
    new_id: Callable[[], str] = new_task_id,
) -> Plan:
    plan = Plan(service.name)
    template = template_hash(service.spec)
    current = {slot: t for (svc, slot), t in snapshot.tasks.items() if svc == service.name}
    mine, total = _node_load(snapshot, service.name)

    def assign(slot: int, node: str) -> None:
        plan.place.append(
            Assignment(
                task_id=new_id(),
                service=service.name,
                slot=slot,
                node=node,
                version=service.version,
                epoch=epoch,
                template=template,
                created_at=now,
            )
        )

    for slot in sorted(current, reverse=True):
        if slot > service.replicas:
            task = current.pop(slot)
            plan.stop.append(task)
            if task.node in snapshot.nodes:
                mine[task.node] -= 1
                total[task.node] -= 1

    for slot in range(1, service.replicas + 1):
        existing = current.get(slot)
        if existing is not None and existing.node in snapshot.nodes:
            if existing.template == template:
                plan.keep.append(existing)
            else:
                assign(slot, existing.node)
            continue
        if not snapshot.nodes:
            plan.unplaced.append(slot)
            continue
        node = min(snapshot.nodes, key=lambda n: (mine[n], total[n], n))
        mine[node] += 1
        total[node] += 1
        assign(slot, node)
    return plan
