"""Slots with volumes stay on the node that holds their data (issue 13, item 5).

A service with `volumes:` has, per slot and volume, a claim in etcd (`VolumeClaim`,
`volumes/<service>/<slot>/<name>`) naming the node that holds the Docker volume. The
scheduler reads them as *pins*:

- a pinned slot is placed on its node only; a task already there stays there when the
  node is drained, or no longer matches the constraints or `max_per_node` (its data is
  there), unless the service says `reschedule: true`;
- when the node is lost (or drained, paused, excluded, full, for a slot with no task),
  the slot waits, with a reason that names the volume and the node; with `reschedule:
  true` a slot whose node is lost, drained or excluded is placed by the ordinary rules and
  gets new claims, so it starts with empty volumes there;
- a claim being removed (`volume rm`, `removing`) holds its slot back, whatever the
  service's incarnation, until the node's agent has removed the data and the claim;
- a placed or running task of such a service whose volume has no claim of its incarnation
  gets one, on the task's node, named after the task (`claims_for`): so whatever order
  the leader's writes land in, or a crash between them, the claims end up matching the
  tasks, and the agent starts no container before its claims exist.

Pure: no grpc, docker or etcd, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from node.model.domain import Assignment, ServiceRecord, VolumeClaim

LOST, DRAINED, PAUSED = "lost", "drained", "paused"
EXCLUDED, FULL = "excluded by the service's constraints", "without room for the replica"
RESCHEDULABLE = frozenset({LOST, DRAINED, EXCLUDED})


@dataclass(frozen=True)
class Pin:
    node: str
    volume: str  # the first volume's name, for reasons
    removing: bool = False


def claims_by_slot(record: ServiceRecord, claims: Iterable[VolumeClaim]) -> dict[int, dict[str, VolumeClaim]]:
    """The claims of `record`'s incarnation for the volumes its spec has, by slot and name."""
    names = {v.name for v in record.spec.volumes or []}
    out: dict[int, dict[str, VolumeClaim]] = {}
    for c in claims:
        if c.uid == record.uid and c.name in names and not c.removing:
            out.setdefault(c.slot, {})[c.name] = c
    return out


def pins(record: ServiceRecord, claims: Iterable[VolumeClaim]) -> dict[int, Pin]:
    """Slot -> where it must go; a claim being removed pins its slot to nowhere."""
    claims = list(claims)
    out = {}
    for slot, by_name in claims_by_slot(record, claims).items():
        first = by_name[min(by_name)]
        out[slot] = Pin(first.node, first.name)
    for c in claims:
        if c.removing:
            out[c.slot] = Pin(c.node, c.name, removing=True)
    return out


def claims_for(
    record: ServiceRecord, task: Assignment, have: dict[str, VolumeClaim], now: float
) -> list[VolumeClaim]:
    """The claims to write so that every volume of `task`'s slot is claimed on its node."""
    out = []
    for v in record.spec.volumes or []:
        c = have.get(v.name)
        if c is None or c.node != task.node:
            out.append(VolumeClaim(record.name, task.slot, v.name, task.node, task.task_id, record.uid, now))
    return out


class StoredKV(Protocol):  # node.store's KV, read only
    @property
    def key(self) -> str: ...
    @property
    def value(self) -> bytes: ...
    @property
    def mod_revision(self) -> int: ...


def by_service(
    kvs: Iterable[StoredKV], others: Iterable[StoredKV] = ()
) -> tuple[dict[str, tuple[VolumeClaim, ...]], dict[str, int]]:
    """The claims stored under `volumes/`, by service, and the mod revision of each key of
    `kvs` and `others` (the leader's `seen`: what its writes compare)."""
    out: dict[str, list[VolumeClaim]] = {}
    seen = {kv.key: kv.mod_revision for kv in others}
    for kv in kvs:
        c = VolumeClaim.from_json(kv.value)
        out.setdefault(c.service, []).append(c)
        seen[kv.key] = kv.mod_revision
    return {name: tuple(cs) for name, cs in out.items()}, seen


def waiting_reason(slot: int, pin: Pin, what: str) -> str:
    if pin.removing:
        return f"slot {slot}: volume {pin.volume} on node {pin.node} is being removed (volume rm)"
    hint = " (reschedule: true would start it empty elsewhere)" if what in RESCHEDULABLE else ""
    return f"slot {slot}: its volume {pin.volume} is on node {pin.node}, which is {what}{hint}"
