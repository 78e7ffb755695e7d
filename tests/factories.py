"""Small factories with sane defaults for the unit tests, and a clock tests can move."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from leader.scheduler import template_hash
from node.model.domain import Assignment, Desired, NodeInfo, ServiceRecord
from node.model.spec import ServiceSpec, spec_from_stored, spec_to_dict
from node.runtime.base import LABELS, Container

IMAGE = "shoal-demo/web:1"
CLUSTER = "test"


class FakeClock:
    """A monotonic clock that moves only when told: `MemoryStore(clock=clock)`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_node(node_id: str, address: str = "127.0.0.1", **labels: str) -> NodeInfo:
    return NodeInfo(id=node_id, address=address, grpc_port=7070, labels=dict(labels))


def make_spec(name: str, replicas: int = 1, image: str = IMAGE, **extra: Any) -> dict[str, Any]:
    """A spec as stored in etcd (`spec_to_dict` output) for a service `name`."""
    return {"name": name, "image": image, "env": {}, "ports": [], "replicas": replicas, **extra}


def typed_spec(name: str, replicas: int = 1, image: str = IMAGE, **extra: Any) -> ServiceSpec:
    """`make_spec`, checked: the `ServiceSpec` that leader, agent and proxy read."""
    return spec_from_stored(make_spec(name, replicas, image, **extra))


def make_service(name: str, replicas: int = 1, version: int = 1, **extra: Any) -> ServiceRecord:
    return ServiceRecord(name=name, version=version, spec=make_spec(name, replicas, **extra))


def respec(record: ServiceRecord, **changes: Any) -> ServiceRecord:
    """`record` with its spec's top-level fields changed (checked like any stored spec)."""
    return replace(record, spec=spec_from_stored({**spec_to_dict(record.spec), **changes}))


def make_task(
    service: str | ServiceRecord,
    slot: int,
    node: str,
    task_id: str | None = None,
    epoch: int = 1,
    template: str | None = None,
    desired: Desired = Desired.RUNNING,
) -> Assignment:
    """An assignment; with a `ServiceRecord`, its version and current template."""
    record = service if isinstance(service, ServiceRecord) else None
    name = record.name if record else str(service)
    return Assignment(
        task_id=task_id or f"{name}-{slot}-{node}",
        service=name,
        slot=slot,
        node=node,
        version=record.version if record else 1,
        epoch=epoch,
        template=template if template is not None else (template_hash(record.spec) if record else ""),
        desired=desired.value,
    )


def make_container(
    task: Assignment,
    state: str = "running",
    cid: str | None = None,
    started_at: str = "2024-01-01T00:00:01Z",
    cluster: str = CLUSTER,
) -> Container:
    """A container of `task`, labelled as the agent labels it."""
    return Container(
        id=cid or f"c-{task.task_id}",
        name=f"{task.service}.{task.slot}.{task.task_id}",
        labels={
            LABELS.CLUSTER: cluster,
            LABELS.NODE: task.node,
            LABELS.SERVICE: task.service,
            LABELS.SLOT: str(task.slot),
            LABELS.TASK: task.task_id,
        },
        state=state,
        exit_code=0 if state == "running" else 1,
        started_at=started_at,
    )
