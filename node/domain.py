"""The words of the domain and the records shoal keeps in etcd.

Pure: no grpc, docker or etcd here. Every record is a frozen dataclass with a
`to_json` / `from_json` pair; the JSON is what etcd holds, so field names are part
of the on-disk format (add fields with defaults, never rename).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, NewType, Self

NodeId = NewType("NodeId", str)
ServiceName = NewType("ServiceName", str)
TaskId = NewType("TaskId", str)
Epoch = NewType("Epoch", int)


class Desired(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class TaskState(StrEnum):
    """What an agent observed of a task's container."""

    PENDING = "pending"  # assigned, no container yet (image pull, create)
    STARTING = "starting"  # container created, not yet running
    RUNNING = "running"
    EXITED = "exited"  # the container stopped by itself; the agent replaces it
    FAILED = "failed"  # could not be created or started (bad image, bad command)
    UNKNOWN = "unknown"  # no report: the node is gone or has not reported yet


class NodeStatus(StrEnum):
    READY = "ready"
    DOWN = "down"


def new_task_id() -> TaskId:
    """A random task id: 12 lowercase hex characters, unique for practical purposes."""
    return TaskId(secrets.token_hex(6))


class Record:
    """JSON round-trip for the dataclasses below; unknown keys are ignored on read."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        data: dict[str, Any] = json.loads(raw)
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class NodeInfo(Record):
    """`nodes/<id>`: written by the node itself on its lease."""

    id: str
    address: str
    grpc_port: int
    labels: dict[str, str] = field(default_factory=dict)
    cpu: float = 0.0
    memory: int = 0
    version: str = ""
    started_at: float = 0.0


@dataclass(frozen=True)
class ServiceRecord(Record):
    """`services/<name>`: the current spec (normalized JSON) and its version."""

    name: str
    version: int
    spec: dict[str, Any]
    updated_at: float = 0.0
    updated_by: str = ""

    @property
    def replicas(self) -> int:
        return int(self.spec.get("replicas", 0))


@dataclass(frozen=True)
class Assignment(Record):
    """`tasks/<service>/<slot>`: written by the leader only, fenced by its epoch."""

    task_id: str
    service: str
    slot: int
    node: str
    version: int
    epoch: int
    template: str = ""  # hash of the spec less replicas: what the container is made from
    desired: str = Desired.RUNNING.value
    created_at: float = 0.0


@dataclass(frozen=True)
class TaskStatus(Record):
    """`status/<task-id>`: what the agent of the task's node observed."""

    task_id: str
    service: str
    slot: int
    node: str
    state: str
    container_id: str = ""
    address: str = ""
    host_port: int = 0
    restarts: int = 0
    exit_code: int = 0
    message: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True)
class EndpointRecord(Record):
    """`endpoints/<service>/<task-id>`: a routable replica, on the node's lease."""

    task_id: str
    service: str
    node: str
    address: str
    port: int  # host port of the first container port (kept for older readers)
    container_port: int
    ports: dict[str, int] = field(default_factory=dict)  # every container port -> host port

    def host_port(self, container_port: int) -> int:
        """Where this replica publishes `container_port`; 0 when it does not."""
        if self.ports:
            return int(self.ports.get(str(container_port), 0))
        return self.port if self.container_port == container_port else 0


@dataclass(frozen=True)
class Event(Record):
    """`events/<node>/<slot>`: one entry of a node's bounded ring of cluster events."""

    time: float
    kind: str
    node: str
    message: str
    service: str = ""
    task: str = ""
    cause: str = ""
