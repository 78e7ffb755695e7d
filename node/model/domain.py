"""The words of the domain and the records shoal keeps in etcd.

Pure: no grpc, docker or etcd here. Every record is a frozen dataclass with a
`to_json` / `from_json` pair; the JSON is what etcd holds, so field names are part
of the on-disk format (add fields with defaults, never rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import lru_cache
from typing import Any, Self

from pydantic import ValidationError

from node.model.spec import ServiceSpec, spec_from_stored, spec_to_dict
from node.model.spec_volumes import docker_volume_name

log = logging.getLogger(__name__)

NOT_IN_TEMPLATE = ("replicas", "placement", "mode", "update", "depends_on", "reschedule", "service_labels")
"""Spec fields that say where, how many and how to roll out, not what a container is
made from: changing them never restarts a task."""


def template_hash(spec: ServiceSpec | Mapping[str, Any]) -> str:
    """A stable hash of what a container is made from: the spec less `NOT_IN_TEMPLATE`,
    over its stored JSON form (so the hash of a spec never changes across releases that
    only add fields with defaults left unset)."""
    data = spec_to_dict(spec) if isinstance(spec, ServiceSpec) else spec
    body = {k: v for k, v in data.items() if k not in NOT_IN_TEMPLATE}
    if isinstance(body.get("ports"), list):  # a port's fast_path says how nodes route to it
        body["ports"] = [_without_route_only(p) for p in body["ports"]]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _without_route_only(port: Any) -> Any:
    """A stored port less `fast_path` (decision 75): the kernel path is the nodes' routing,
    not the container's, so turning it on or off replaces no replica."""
    if isinstance(port, Mapping):
        return {k: v for k, v in port.items() if k != "fast_path"}
    return port


class Desired(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class TaskState(StrEnum):
    """What an agent observed of a task's container."""

    PENDING = "pending"  # assigned, no container yet (create)
    PULLING = "pulling"  # waiting for its image, pulled apart (`node.agent.pulls`); message: progress
    STARTING = "starting"  # container created, not yet running
    RUNNING = "running"
    EXITED = "exited"  # the container stopped by itself; the agent replaces it
    FAILED = "failed"  # could not be created or started (bad image, bad command)
    UNKNOWN = "unknown"  # no report: the node is gone or has not reported yet


class TaskHealth(StrEnum):
    """A replica's health check verdict (`node.agent.health` runs the checks)."""

    NONE = ""  # no check: routable once running
    STARTING = "starting"  # checked, not yet passed
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


# -- routable: the one rule for which replicas may receive traffic ----------------------
#
# A replica is *routable* when (1) its own node sees it serve: its container runs and
# it is healthy or has no check (`routable`; its agent publishes `endpoints/<service>/
# <task>` exactly then, and withdraws it before stopping it; a rollout waits for it), and
# (2) the cluster still wants it there (`routable_endpoints`): its task is assigned to
# the node that published it (or hands its slot off to a successor still starting), for
# the service's current incarnation, and that node is neither marked down by the leader
# nor dead or gone in this node's gossip view. The agent and the leader decide (1); the
# proxy and the API's resolve decide (2) on what (1) published.

ROUTABLE_HEALTH = frozenset({TaskHealth.NONE, TaskHealth.HEALTHY})


def routable(state: str, health: str) -> bool:
    """Whether a replica in `state` with `health` may receive traffic (rule 1 above)."""
    return state == TaskState.RUNNING and health in ROUTABLE_HEALTH


class NodeStatus(StrEnum):
    READY = "ready"
    NOT_READY = "not-ready"  # registered, but says it cannot run tasks (`NodeInfo.not_ready`)
    STARTING = "starting"  # registered, runs tasks, its proxy does not serve yet (`NodeInfo.starting`)
    DOWN = "down"


class Availability(StrEnum):
    """What an operator allows on a node (`shoal node drain|pause|activate`), as in Swarm."""

    ACTIVE = "active"  # takes new tasks
    PAUSE = "pause"  # keeps its tasks, takes no new ones
    DRAIN = "drain"  # takes no new tasks; its tasks move elsewhere


def new_task_id() -> str:
    """A random task id: 12 lowercase hex characters, unique for practical purposes."""
    return secrets.token_hex(6)


def new_cause() -> str:
    """The id of one API call that changes what should run (apply, scale, rollback, stack
    deploy): "c" and 12 random hex characters. Every event it leads to carries it."""
    return "c" + secrets.token_hex(6)


def new_service_uid() -> str:
    """The identity of one incarnation of a service: 16 random hex characters, set when
    `services/<name>` is created (never on an update), so a service removed and applied
    again under the same name is another service to every cache, task and container.
    Records written before uids existed read as uid "" (one legacy incarnation, kept
    until that service is removed)."""
    return secrets.token_hex(8)


_FIELDS: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in fields(cls))
    return names


class Record:
    """JSON round-trip for the dataclasses below; unknown keys are ignored on read.

    Every field holds plain JSON values (no nested dataclass), so `to_json` serialises a
    shallow dict of the fields, exactly what `dataclasses.asdict` would give without its
    deep copy, and field names are looked up once per class: the leader writes and reads
    100,000 of these a pass at scale (bench/scheduler.py --e2e)."""

    def to_json(self) -> bytes:
        data = {name: getattr(self, name) for name in _field_names(type(self))}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        data: dict[str, Any] = json.loads(raw)
        names = _field_names(cls)
        if data.keys() <= names:
            return cls(**data)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class NodeInfo(Record):
    """`nodes/<id>`: written by the node itself on its lease."""

    id: str
    address: str
    grpc_port: int
    labels: dict[str, str] = field(default_factory=dict)
    cpu: float = 0.0  # cores offered to tasks: configured, or detected less `reserve_cpu`
    memory: int = 0  # bytes offered to tasks: configured, or detected less `reserve_memory`
    version: str = ""
    started_at: float = 0.0
    simulated: bool = False  # a simulated node (`node.dev.simruntime`): runs no containers
    not_ready: str = ""  # why the node cannot run tasks now (its container engine does not
    #   answer: `node.agent.engine`); "" = ready. The leader places nothing there and moves its tasks
    starting: str = ""  # why this node's proxy does not serve the published ports yet (its
    #   workers have not taken the first route table: decision 76); "" = it does. Tasks are
    #   placed here meanwhile (the containers do not need the proxy); readiness waits
    spec_paths: list[str] = field(default_factory=list)  # what this build's spec reads
    #   (`node.model.spec_compat`); the API writes no spec that a live node cannot read
    # issue 14 (metrics): where this node serves /metrics (0: off), for Prometheus discovery
    metrics_port: int = 0
    metrics_tls: bool = False
    # decision 75: the kernel fast path of `fast_path: kernel` ports on this node: "on",
    # "off" (`proxy_nft = off`) or "fallback" (those ports go to the userland listeners:
    # no nft, nft refused the table); "" = not reported (an older node). Why, in kernel_reason
    kernel_path: str = ""
    kernel_reason: str = ""


@dataclass(frozen=True)
class NodeSpec(Record):
    """`nodespec/<id>`: what the operator set on a node through the API, not on any lease,
    so it outlives restarts. `labels` overlay the node's own (config) labels; a None
    value removes that label. A node without this key is active with its own labels."""

    availability: str = Availability.ACTIVE.value
    labels: dict[str, str | None] = field(default_factory=dict)
    updated_at: float = 0.0
    updated_by: str = ""


def effective_labels(info: NodeInfo, spec: NodeSpec | None) -> dict[str, str]:
    """The labels constraints see: the node's own, overlaid by the operator's."""
    if spec is None or not spec.labels:
        return info.labels
    merged = dict(info.labels)
    for key, value in spec.labels.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class ServiceRecord(Record):
    """`services/<name>` (and `history/<name>/<version>`): the current spec and its version.

    `spec` is the checked, frozen `ServiceSpec` that every reader uses; a mapping given
    to the constructor (a stored spec's JSON) is checked and turned into one. The JSON
    form is made only here, at the store boundary."""

    name: str
    version: int
    spec: ServiceSpec
    updated_at: float = 0.0
    updated_by: str = ""
    rollback_of: int = 0  # this version rolls `rollback_of` back (to an earlier spec)
    outcome: str = ""  # in history/: how its rollout ended (completed, failed, paused, rolled_back)
    uid: str = ""  # this incarnation (`new_service_uid`); "" for services created before uids
    # -- durable events (issue 14): the id of the API call that made this version -------
    cause: str = ""  # `new_cause()`; copied into its tasks and every event it leads to

    def __post_init__(self) -> None:
        if not isinstance(self.spec, ServiceSpec):
            object.__setattr__(self, "spec", spec_from_stored(self.spec))

    @property
    def replicas(self) -> int:
        return self.spec.replicas

    def to_json(self) -> bytes:
        data = {name: getattr(self, name) for name in _field_names(type(self))}
        data["spec"] = spec_to_dict(self.spec)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        return _parse_service_record(bytes(raw, "utf-8") if isinstance(raw, str) else bytes(raw))  # type: ignore[return-value]


class UnreadableRecord(ValueError):
    """A stored record that does not parse or check (written around the API, or by a shoal
    whose spec this one does not know). Readers leave that service alone and say so: the
    leader neither places nor removes its tasks, agents keep what runs."""


def readable_services(values: Iterable[bytes]) -> list[ServiceRecord]:
    """The service records among `values` that can be read; the others are logged and left
    out (`UnreadableRecord`): a listing or the mesh goes on with the rest."""
    out = []
    for raw in values:
        try:
            out.append(ServiceRecord.from_json(raw))
        except UnreadableRecord as exc:
            log.warning("%s", exc)
    return out


@lru_cache(maxsize=4096)
def _parse_service_record(raw: bytes) -> ServiceRecord:
    """Records are immutable, so one parse serves every reader of the same bytes: the leader
    reads every service record on each pass, and checking a spec costs ~50 us."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise UnreadableRecord(f"a stored service record is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UnreadableRecord("a stored service record is not a JSON object")
    name = data.get("name", "?")
    names = _field_names(ServiceRecord)
    try:
        return ServiceRecord(**{k: v for k, v in data.items() if k in names})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        why = f"{where}: {first['msg']}" if where else first["msg"]
    except TypeError as exc:  # a required field is missing
        why = str(exc)
    raise UnreadableRecord(f"the stored spec of service {name!r} cannot be read: {why}")


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
    cpu: float = 0.0  # cores reserved on `node` (the spec's resources.cpu when assigned)
    memory: int = 0  # bytes reserved on `node`
    replaces: str = ""  # the task id this one takes over from (moved off a drained node, ...)
    handoff: dict[str, Any] = field(default_factory=dict)  # the old task (an Assignment's fields)
    #   that keeps serving the slot until this one is ready (start-first); empty when none
    uid: str = ""  # the service incarnation it was assigned for; another uid than the service's: stale
    # -- durable events (issue 14) -------------------------------------------------------
    cause: str = ""  # the `cause` of the service version that placed it (its events carry it)

    def handed_off(self) -> Assignment | None:
        """The old task still serving this slot, while a handoff lasts."""
        if not self.handoff:
            return None
        names = _field_names(Assignment)  # cached: the scheduler asks for every held task of a pass
        return Assignment(**{k: v for k, v in self.handoff.items() if k in names and k != "handoff"})


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
    # Health (`TaskHealth`): "" (no check: routable once running), "starting", "healthy",
    # "unhealthy". A task serves (its endpoint is published) exactly when `routable`.
    health: str = ""
    health_message: str = ""  # the last check's result, e.g. "HTTP 500 from GET /health (expected 200)"
    health_failures: int = 0  # consecutive failed checks
    health_at: float = 0.0  # when that result first came (written on a change only: issue 11)
    healthy_since: float = 0.0  # wall clock since when it is routable without a break; 0: it is not
    terminal: bool = False  # the restart policy gave up: it stays exited/failed, `message` says why
    # An exit decided, its restart waiting (`exited`): when the restart is due (wall clock;
    # 0: none waits) and whether the exit counted as an attempt. A restarted agent reads
    # them back (`node.agent.machine.Slots.seed`) rather than deciding the exit again.
    restart_due: float = 0.0
    restart_counted: bool = False

    @property
    def routable(self) -> bool:
        """Running, and healthy or without a check: its agent publishes its endpoint."""
        return routable(self.state, self.health)


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
    # issue 17 (no userland hop): the replica's address on its Docker network; the mesh of
    # its own node connects there (node.proxy.direct). "" from agents that predate it
    container_address: str = ""

    def host_port(self, container_port: int) -> int:
        """Where this replica publishes `container_port`; 0 when it does not."""
        if self.ports:
            return int(self.ports.get(str(container_port), 0))
        return self.port if self.container_port == container_port else 0


def readable_endpoints(values: Iterable[bytes]) -> list[EndpointRecord]:
    """The endpoint records among `values` that can be used; the others (not JSON objects,
    fields of the wrong type, a port outside 1-65535) are logged and left out, as
    `readable_services` does: one bad record written around the agents must not stop every
    node's mesh (it once did: the sync raised, and each daemon exited and met it again)."""
    out = []
    for raw in values:
        try:
            record = EndpointRecord.from_json(raw)
            _check_endpoint(record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("endpoint record left out (unreadable): %s", str(exc)[:200])
            continue
        out.append(record)
    return out


def _check_endpoint(e: EndpointRecord) -> None:
    for name in ("task_id", "service", "node", "address", "container_address"):
        if not isinstance(getattr(e, name), str):
            raise TypeError(f"{name} of endpoint {str(e.task_id)[:40]} is not a string")
    if not isinstance(e.ports, dict) or not all(
        isinstance(k, str) and k.isascii() and k.isdigit() for k in e.ports
    ):
        raise TypeError(f"ports of endpoint {e.task_id[:40]} is not a map of container port to host port")
    ports = [e.port, e.container_port, *e.ports.values()]
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 65535 for p in ports):
        raise ValueError(f"endpoint {e.task_id[:40]} has a port that is not 0-65535")


def serving(tasks: Iterable[Assignment], uids: Mapping[str, str] | None = None) -> set[tuple[str, str]]:
    """(task id, node) of every assigned task, and of every old task a handoff keeps
    serving its slot until the new one is ready (a start-first update). With `uids`
    (service -> its current incarnation), a task of another incarnation (a removed
    namesake's) is left out; one without uid (its leader predates uids) is kept."""
    out = set()
    for t in tasks:
        if uids is not None and t.uid and uids.get(t.service, t.uid) != t.uid:
            continue
        out.add((t.task_id, t.node))
        if t.handoff:
            out.add((str(t.handoff.get("task_id")), str(t.handoff.get("node"))))
    return out


def routable_endpoints(
    endpoints: Iterable[EndpointRecord],
    assigned: Collection[tuple[str, str]],
    gone: Collection[str],
) -> list[EndpointRecord]:
    """The published endpoints traffic may go to (rule 2 above), sorted by task id.
    `assigned` holds what `serving` returns; `gone` the nodes not to use."""
    out = [e for e in endpoints if (e.task_id, e.node) in assigned and e.node not in gone]
    return sorted(out, key=lambda e: e.task_id)


@dataclass(frozen=True)
class RolloutRecord(Record):
    """`rollouts/<service>`: the state of the service's latest rolling update, written by
    the leader only (fenced); `leader.rollout` steps it."""

    service: str
    from_version: int
    to_version: int
    target: str  # template hash every slot should end on
    state: str = "updating"  # updating, rolling_back, paused, completed, rolled_back, failed
    rollback_of: int = 0  # a rollback: the version that failed
    started_at: float = 0.0
    updated_at: float = 0.0
    batch: dict[str, float] = field(default_factory=dict)  # slot -> when given its new task
    monitored: dict[str, float] = field(default_factory=dict)  # slot -> when it turned ready
    failed: list[int] = field(default_factory=list)
    cooldown: list[float] = field(default_factory=list)  # when resting places of the window free up
    updated: int = 0  # slots on the target template
    total: int = 0
    message: str = ""
    uid: str = ""  # the service incarnation it rolls out; another one's record is not continued


@dataclass(frozen=True)
class PendingRecord(Record):
    """`pending/<service>`: replicas the scheduler found no node for, and why; written by the
    leader (fenced) when the reason changes, deleted once every replica has a node."""

    service: str
    reason: str  # e.g. "0/3 nodes available: 3 lack memory (need 2.0 GiB, most free 1.5 GiB)"
    slots: list[int] = field(default_factory=list)  # replicated: the slots without a node
    nodes: list[str] = field(default_factory=list)  # global: eligible nodes without room
    since: float = 0.0  # when replicas started waiting for this reason (unix seconds)
    uid: str = ""  # the service incarnation waiting ("" from a leader before it was recorded)

    def of(self, uid: str) -> bool:
        """Whether this is the reason of incarnation `uid`, not of a removed namesake's."""
        return not self.uid or not uid or self.uid == uid

    @property
    def count(self) -> int:
        return len(self.slots) + len(self.nodes)


@dataclass(frozen=True)
class PortClaim(Record):
    """`ports/<published>`: the service incarnation that publishes this port on every node.
    Written with the service record in one transaction (`node.store.ports`); deleted with it."""

    service: str
    uid: str = ""
    since: float = 0.0


@dataclass(frozen=True)
class Event(Record):
    """`events/<time>/<node>/<seq>`: one entry of the cluster's event log (`node.telemetry.events`)."""

    time: float
    kind: str
    node: str
    message: str
    service: str = ""
    task: str = ""
    cause: str = ""


@dataclass(frozen=True)
class VolumeClaim(Record):
    """`volumes/<service>/<slot>/<name>`: the node that holds one slot's volume (issue 13).

    Written by the leader (fenced) when the slot is first placed, or for a task found
    without one; the slot is then placed on `node` only. `claim` is the task id that first
    took it and names the Docker volume (`node.model.spec_volumes.docker_volume_name`), so a
    namesake service or a rescheduled slot never reuses old data. `removing`: `volume rm`
    asked for the data to go; the agent of `node` removes the Docker volume, then this key."""

    service: str
    slot: int
    name: str
    node: str
    claim: str
    uid: str = ""  # the service incarnation it belongs to
    since: float = 0.0
    removing: bool = False

    @property
    def docker_name(self) -> str:
        return docker_volume_name(self.service, self.slot, self.name, self.claim)


def read_claim(raw: bytes) -> VolumeClaim:
    """A volume claim, checked: `UnreadableRecord` when it is not a JSON object with every
    field of its type (one written around the leader), so a reader leaves that one out
    and goes on with the others (one bad claim used to end the agent's pass for every task)."""
    try:
        c = VolumeClaim.from_json(raw)
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object, a field missing
        raise UnreadableRecord(f"a volume claim cannot be read: {str(exc)[:200]}") from None
    texts = (c.service, c.name, c.node, c.claim, c.uid)
    number = isinstance(c.since, int | float) and not isinstance(c.since, bool)
    if not all(isinstance(t, str) for t in texts) or type(c.slot) is not int or not number:
        raise UnreadableRecord(f"a volume claim has a field of the wrong type: {raw[:200]!r}")
    if not isinstance(c.removing, bool):
        raise UnreadableRecord(f"a volume claim has a field of the wrong type: {raw[:200]!r}")
    return c


def claims_to_drop(kvs: Iterable[tuple[str, bytes]]) -> tuple[list[str], bool]:
    """The volume claim keys a service's removal deletes, and whether that is all of them:
    not those `volume rm` marked `removing`, whose agent still has a Docker volume to remove
    and deletes the claim then (else the volume is never removed, and unlisted)."""
    drop, kept = [], False
    for key, value in kvs:
        try:
            removing = VolumeClaim.from_json(value).removing
        except (ValueError, TypeError, KeyError):
            removing = False  # unreadable: nothing to remove by it
        if removing:
            kept = True
        else:
            drop.append(key)
    return drop, not kept
