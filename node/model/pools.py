"""Node pools (issue 15, capacity on demand): the cluster's pools and their nodes' records.

An operator declares pools once for the cluster (`shoal pool apply -f pools.yaml`,
stored in etcd at `pools` as a `PoolsRecord`):

    pools:
      burst:
        provider: {command: [python3, deploy/providers/local.py, --state, /var/lib/x], timeout: 60s}
        min: 0
        max: 10
        node: {cpu: 2, memory: 4Gi, labels: {tier: burst}}
        idle_timeout: 5m
        join_timeout: 2m

Each node a pool asks its provider for has a `PoolNode` record at
`poolnodes/<pool>/<node-id>`, written by the leader (fenced) BEFORE the provider is
called: the leader names the node, so whatever happens between the call and the join
(a leader crash, a lost answer) the node that joins is recognised, and a request is
never made twice for one need (`leader.pools_plan`).

Pure: parsing and records only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from node.model.config import LABEL_KEY
from node.model.errors import InvalidArgument
from node.model.spec_lifecycle import format_duration, parse_duration
from node.model.spec_resources import parse_memory

POOL_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?")  # node ids are `<pool>-<8 hex>`
POOL_LABEL = "shoal.pool"  # every pool node carries this label (its pool's name)
MAX_POOLS = 32
MAX_POOL_NODES = 1000
MAX_NODE_MEMORY = 64 * 2**40  # bytes: the largest node a pool asks for (64Ti; ListPools carries it as int64)
_POOL_KEYS = {"provider", "min", "max", "node", "idle_timeout", "join_timeout"}
_PROVIDER_KEYS = {"command", "timeout"}
_NODE_KEYS = {"cpu", "memory", "labels"}


class PoolState(StrEnum):
    REQUESTED = "requested"  # recorded; the provider's create is (being) called
    CREATED = "created"  # the provider answered; waiting for the node to join
    JOINED = "joined"  # the node registered once
    DELETING = "deleting"  # drained; the provider's delete is (being) called
    RELEASED = "released"  # the provider deleted it; drained until its registration is gone
    FAILED = "failed"  # the provider refused or timed out; no new request before `retry_at`


@dataclass(frozen=True)
class PoolSpec:
    name: str
    command: tuple[str, ...]
    node_cpu: float
    node_memory: int
    labels: dict[str, str] = field(default_factory=dict)
    min: int = 0
    max: int = 1
    idle_timeout: float = 300.0
    join_timeout: float = 180.0  # a node not registered this long after the request is given back
    timeout: float = 120.0  # one provider call

    def node_labels(self) -> dict[str, str]:
        """The labels a node of this pool starts with: the pool's, and `shoal.pool`."""
        return {**self.labels, POOL_LABEL: self.name}

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": {"command": list(self.command), "timeout": format_duration(self.timeout)},
            "min": self.min,
            "max": self.max,
            "node": {"cpu": self.node_cpu, "memory": self.node_memory, "labels": dict(self.labels)},
            "idle_timeout": format_duration(self.idle_timeout),
            "join_timeout": format_duration(self.join_timeout),
        }


def _bad(where: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {what}", target=where)


def _duration(where: str, value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _bad(where, f"must be a duration such as 30s or 5m, got {type(value).__name__}")
    try:
        seconds = float(value) if not isinstance(value, str) else parse_duration(value)
    except ValueError as exc:
        raise _bad(where, str(exc)) from None
    if not 0 < seconds <= 7 * 86400:
        raise _bad(where, f"must be more than 0 and at most 7 days, got {value!r}")
    return seconds


def _count(where: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POOL_NODES:
        raise _bad(where, f"must be a whole number from 0 to {MAX_POOL_NODES}, got {value!r}")
    return value


def _keys(where: str, got: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(got, dict):
        raise _bad(where, f"must be a mapping, got {type(got).__name__}")
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise _bad(
            where, f"unknown key(s) {', '.join(map(str, unknown))} (allowed: {', '.join(sorted(allowed))})"
        )
    return got


def parse_pool(name: str, raw: Any) -> PoolSpec:
    where = f"pools.{name}"
    if not isinstance(name, str) or not POOL_NAME.fullmatch(name):
        raise _bad(where, "a pool name is 1-24 characters a-z, 0-9 and '-', not at either end")
    body = _keys(where, raw, _POOL_KEYS)
    provider = _keys(f"{where}.provider", body.get("provider"), _PROVIDER_KEYS)
    command = provider.get("command")
    if isinstance(command, str):
        command = command.split()
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise _bad(f"{where}.provider.command", "must be a non-empty list of strings (program and arguments)")
    if any("\0" in a or len(a) > 4096 for a in command) or len(command) > 64:
        # a NUL cannot be passed to a program: every call failed, and the record kept retrying
        raise _bad(f"{where}.provider.command", "at most 64 arguments of 4096 characters, without NUL")
    node = _keys(f"{where}.node", body.get("node"), _NODE_KEYS)
    cpu = node.get("cpu")
    if isinstance(cpu, bool) or not isinstance(cpu, int | float) or not 0 < cpu <= 1024:
        raise _bad(f"{where}.node.cpu", f"must be a number of cores more than 0, got {cpu!r}")
    memory = node.get("memory")
    try:
        mem = parse_memory(memory) if isinstance(memory, str) else memory
    except ValueError as exc:
        raise _bad(f"{where}.node.memory", str(exc)) from None
    if isinstance(mem, bool) or not isinstance(mem, int) or not 2**20 <= mem <= MAX_NODE_MEMORY:
        raise _bad(f"{where}.node.memory", f"must be from 1Mi to 64Ti (e.g. 4Gi), got {memory!r:.80}")
    labels = node.get("labels") or {}
    if not isinstance(labels, dict):
        raise _bad(f"{where}.node.labels", "must be a mapping of key: value")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key) or key == POOL_LABEL:
            raise _bad(
                f"{where}.node.labels",
                f"{key!r} is not a label key (letters, digits, '.', '_', '-'; not {POOL_LABEL})",
            )
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise _bad(f"{where}.node.labels.{key}", "must be a string")
        text = str(value)  # as `shoal node label` takes them: a constraint can match it
        if len(text) > 255 or text != text.strip() or not text.isprintable():
            raise _bad(
                f"{where}.node.labels.{key}",
                f"must be printable, at most 255 characters, without spaces at either end, got {text[:80]!r}",
            )
    if len(labels) > 64:
        raise _bad(f"{where}.node.labels", "at most 64 labels")
    low, high = _count(f"{where}.min", body.get("min"), 0), _count(f"{where}.max", body.get("max"), 1)
    if high < 1 or low > high:
        raise _bad(f"{where}.max", f"must be at least 1 and at least min ({low}), got {high}")
    return PoolSpec(
        name=name,
        command=tuple(command),
        node_cpu=float(cpu),
        node_memory=mem,
        labels={k: str(v) for k, v in labels.items()},
        min=low,
        max=high,
        idle_timeout=_duration(f"{where}.idle_timeout", body.get("idle_timeout"), 300.0),
        join_timeout=_duration(f"{where}.join_timeout", body.get("join_timeout"), 180.0),
        timeout=_duration(f"{where}.provider.timeout", provider.get("timeout"), 120.0),
    )


def parse_pools(doc: Any) -> dict[str, PoolSpec]:
    """`{pools: {name: {...}}}` (a YAML document) -> pools by name; `InvalidArgument` naming
    the first thing to fix. `{pools: {}}` removes every pool."""
    top = _keys("pools file", doc, {"pools"})
    pools = top.get("pools")
    if pools is None:
        pools = {}
    if not isinstance(pools, dict):
        raise _bad("pools", "must be a mapping of pool name to pool")
    if len(pools) > MAX_POOLS:
        raise _bad("pools", f"at most {MAX_POOLS} pools, got {len(pools)}")
    return {name: parse_pool(name, raw) for name, raw in sorted(pools.items(), key=lambda kv: str(kv[0]))}


def pools_to_doc(pools: dict[str, PoolSpec]) -> dict[str, Any]:
    return {"pools": {name: p.to_dict() for name, p in sorted(pools.items())}}


@dataclass(frozen=True)
class PoolNode:
    """`poolnodes/<pool>/<node>`: one node a pool asked for, from the request to its return."""

    pool: str
    node: str  # the node id the leader chose; the provider starts the node under it
    state: str = PoolState.REQUESTED.value
    requested_at: float = 0.0
    epoch: int = 0  # the leader epoch that last wrote it
    provider_id: str = ""  # what the provider calls it (an instance id), from its create answer
    address: str = ""
    changed_at: float = 0.0  # when `state` was last set
    message: str = ""  # the provider's error, why it is deleted
    retry_at: float = 0.0  # failed: no new request of this pool before
    command: list[str] = field(default_factory=list)  # the provider as asked: its delete works
    timeout: float = 120.0  #   even once the pool is no longer declared
    dedicated: str = ""  # launch: dedicated (decision 68): the service this node is for
    cpu: float = 0.0  # dedicated: the size asked for (0: the pool's node size)
    memory: int = 0

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> PoolNode:
        """A record as the leader wrote it; `ValueError` for one it cannot act on (not JSON, not
        an object, a field of the wrong type, an unknown state): the keeper skips it, so one
        bad record neither stops every pass nor reaches `decide` (where a string time made
        the arithmetic fail) or a provider call."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"a pool node record is an object, got {type(data).__name__}")
        kept = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("pool", "node"):
            if not isinstance(kept.get(name), str) or not kept[name]:
                raise ValueError(f"{name} must be a non-empty string, got {kept.get(name)!r:.40}")
        for name, value in kept.items():
            kind = _FIELD_KINDS[name]
            if kind is list:
                ok = isinstance(value, list) and all(isinstance(a, str) for a in value)
            elif kind is float:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            else:
                ok = isinstance(value, kind) and not isinstance(value, bool)
            if not ok:
                raise ValueError(f"{name} must be {_KIND_NAMES[kind]}, got {value!r:.40}")
        if kept.get("state", PoolState.REQUESTED.value) not in set(PoolState):
            raise ValueError(f"unknown state {kept['state']!r:.40}")
        return cls(**kept)


_FIELD_KINDS: dict[str, type] = {
    f.name: {"str": str, "float": float, "int": int, "list[str]": list}[str(f.type)] for f in fields(PoolNode)
}
_KIND_NAMES = {str: "a string", float: "a number", int: "a whole number", list: "a list of strings"}
