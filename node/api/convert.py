"""Records (`node.model.domain`) to protobuf messages (`node.pb.api_pb2`)."""

from __future__ import annotations

import json
import re
from typing import Any

from node.model.domain import (
    Assignment,
    Availability,
    EndpointRecord,
    Event,
    NodeInfo,
    NodeSpec,
    NodeStatus,
    RolloutRecord,
    ServiceRecord,
    TaskState,
    TaskStatus,
    effective_labels,
)
from node.model.load import AutoscaleStatus
from node.model.spec import ServiceSpec, spec_to_dict
from node.pb import api_pb2, peer_pb2
from node.store import KV

MASK = "***"


def masked(spec: ServiceSpec) -> dict[str, Any]:
    """The spec's JSON with every `secret_env` value replaced by `MASK`: what any answer shows."""
    data = spec_to_dict(spec)
    if spec.secret_env:
        data["secret_env"] = dict.fromkeys(spec.secret_env, MASK)
    return data


def task(t: Assignment, s: TaskStatus | None) -> api_pb2.Task:
    endpoint = f"{s.address}:{s.host_port}" if s and s.host_port else ""
    return api_pb2.Task(
        service=t.service,
        slot=t.slot,
        task_id=t.task_id,
        node=t.node,
        desired=t.desired,
        state=s.state if s else TaskState.UNKNOWN.value,
        container_id=s.container_id if s else "",
        endpoint=endpoint,
        version=t.version,
        epoch=t.epoch,
        restarts=s.restarts if s else 0,
        exit_code=s.exit_code if s else 0,
        message=s.message if s else "",
        updated_at=s.updated_at if s else t.created_at,
        health=s.health if s else "",
        health_message=s.health_message if s else "",
        health_failures=s.health_failures if s else 0,
        health_at=s.health_at if s else 0.0,
        healthy_since=s.healthy_since if s else 0.0,
        terminal=s.terminal if s else False,
    )


_EXITED = re.compile(r"^Exited \((-?\d+)\)")


def kept_task(node: str, t: peer_pb2.FoundTask) -> api_pb2.Task:
    """A task no longer assigned whose container its node keeps (decision 71), as a row of
    `service ps --all`: desired `shutdown` (Swarm's word for a task's history), the
    engine's state, and its exit code read from the engine's status words."""
    exited = _EXITED.match(t.status)
    return api_pb2.Task(
        service=t.service,
        slot=t.slot,
        task_id=t.task,
        node=node,
        desired="shutdown",
        state=t.state,
        container_id=t.container,
        exit_code=int(exited.group(1)) if exited else 0,
        message=t.status,
        updated_at=t.created,
        terminal=True,
    )


def service(r: ServiceRecord, tasks: list[tuple[Assignment, TaskStatus | None]]) -> api_pb2.Service:
    running = sum(1 for _, s in tasks if s is not None and s.state == TaskState.RUNNING)
    ports = [
        api_pb2.Port(
            container=p.container,
            published=p.published or 0,
            protocol=p.protocol,
            fast_path=p.fast_path or "",
        )
        for p in r.spec.ports
    ]
    return api_pb2.Service(
        name=r.name,
        version=r.version,
        image=r.spec.image,
        replicas=r.replicas,
        running=running,
        ports=ports,
        spec_json=json.dumps(masked(r.spec), sort_keys=True),
        updated_at=r.updated_at,
        updated_by=r.updated_by,
        rollback_of=r.rollback_of,
    )


def rollout(r: RolloutRecord) -> api_pb2.Rollout:
    return api_pb2.Rollout(
        state=r.state,
        from_version=r.from_version,
        to_version=r.to_version,
        rollback_of=r.rollback_of,
        updated=r.updated,
        total=r.total,
        batch=sorted(int(s) for s in r.batch),
        failed=r.failed,
        message=r.message,
        started_at=r.started_at,
        updated_at=r.updated_at,
    )


def version(r: ServiceRecord, current: int) -> api_pb2.ServiceVersion:
    return api_pb2.ServiceVersion(
        version=r.version,
        image=r.spec.image,
        updated_at=r.updated_at,
        updated_by=r.updated_by,
        rollback_of=r.rollback_of,
        outcome=r.outcome,
        current=r.version == current,
    )


def leader(kv: KV | None) -> tuple[str, int]:
    if kv is None:
        return "", 0
    return json.loads(kv.value).get("node", ""), kv.create_revision


def node(
    n: NodeInfo,
    is_leader: bool,
    tasks: int,
    reserved: tuple[float, int] = (0.0, 0),
    spec: NodeSpec | None = None,
) -> api_pb2.Node:
    """A registered node; `reserved` (cores, bytes) sums its tasks' reservations, `spec` is
    what an operator set on it (availability, labels overlaid on its own)."""
    return api_pb2.Node(
        id=n.id,
        address=n.address,
        grpc_port=n.grpc_port,
        status=NodeStatus.READY.value,
        leader=is_leader,
        labels=effective_labels(n, spec),
        cpu=n.cpu,
        memory=n.memory,
        version=n.version,
        tasks=tasks,
        started_at=n.started_at,
        availability=spec.availability if spec is not None else Availability.ACTIVE.value,
        reserved_cpu=round(reserved[0], 3),
        reserved_memory=reserved[1],
        simulated=n.simulated,
        own_labels=n.labels,
        kernel_path=n.kernel_path,
        kernel_reason=n.kernel_reason,
    )


def down_node(node_id: str, tasks: int) -> api_pb2.Node:
    """A node that still has assignments but no registry entry (its lease expired)."""
    return api_pb2.Node(id=node_id, status=NodeStatus.DOWN.value, tasks=tasks)


def proxy_errors(kvs: list[KV]) -> list[api_pb2.ProxyError]:
    """`binds/<service>/<node>` records (written by each node's mesh) as messages."""
    out = []
    for kv in kvs:
        data = json.loads(kv.value)
        for e in data.get("errors", []):
            out.append(
                api_pb2.ProxyError(
                    node=e["node"], port=e["port"], error=e["error"], since=data.get("since", 0.0)
                )
            )
    return sorted(out, key=lambda p: (p.node, p.port))


def endpoint(e: EndpointRecord) -> api_pb2.Endpoint:
    return api_pb2.Endpoint(
        task=e.task_id, node=e.node, address=e.address, port=e.port, container_port=e.container_port
    )


def event(e: Event) -> api_pb2.Event:
    return api_pb2.Event(
        time=e.time,
        kind=e.kind,
        node=e.node,
        service=e.service,
        task=e.task,
        message=e.message,
        cause=e.cause,
    )


def autoscale_json(record: ServiceRecord, kv: KV | None) -> str:
    """The autoscaler's status of `record` (issue 15) as stored; "" when it is not
    autoscaled, has no status yet, or the status is of an earlier service of that name."""
    if kv is None or record.spec.autoscale is None:
        return ""
    try:
        status = AutoscaleStatus.from_json(kv.value)
    except (ValueError, TypeError, KeyError):
        return ""
    return kv.value.decode() if status.uid == record.uid else ""
