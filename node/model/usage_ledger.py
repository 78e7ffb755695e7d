"""Usage metering and pricing (issue 15, item 4): the pure rules (decision 67).

Every node's meter closes intervals of `length` s (aligned to the epoch: [k*L, (k+1)*L))
and writes one record per task that ran in it, and one for the node itself:

    usage/raw/<interval start, 12 digits>/<node>/<task id | "_node">

A record holds the group it belongs to (`Dims`: service, stack, node, the node's labels)
and its `Tally`: vCPU-s and GiB-s RESERVED (the spec's `resources`, or `DEFAULT_CPU` and
`DEFAULT_MEMORY` when unset, times the seconds the container ran in the interval), CPU-s
and GiB-s USED (the cgroup CPU counter's growth, the sampled memory times the seconds),
and for the node record the seconds the node was metered with its offered vCPU and GiB.
Writing the same key twice writes the same record: harmless.

The leader rolls old raw records into day totals (`usage/day/<day start>/<digest of the
Dims>`), adding them to the day record and deleting the raw keys in one transaction.

Reports (`report`) group records by service, stack, node or a node label and price them
with a `Rates` card. Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from node.model.errors import InvalidArgument

GIB = 2**30
DAY = 86400
DEFAULT_CPU = 0.25  # vCPU reserved by a task whose spec sets no resources.cpu (Fargate's smallest)
DEFAULT_MEMORY = 512 * 2**20  # bytes reserved by a task whose spec sets no resources.memory
DEFAULT_LENGTH = 60  # s per interval (NodeConfig.usage_interval)
NODE_TASK = "_node"  # the task part of a node's own record
BY_CHOICES = "service, stack, node or label:KEY"


@dataclass(frozen=True)
class UsageKeys:
    """Where usage lives under the cluster's etcd prefix."""

    prefix: str

    @property
    def usage(self) -> str:
        """Every usage key (raw intervals, day totals, cursors, rates): one range, one revision."""
        return f"{self.prefix}usage/"

    @property
    def raw(self) -> str:
        return f"{self.usage}raw/"

    def raw_at(self, start: int) -> str:
        return f"{self.raw}{start:012d}/"

    def raw_key(self, start: int, node: str, task: str) -> str:
        return f"{self.raw_at(start)}{node}/{task}"

    @property
    def days(self) -> str:
        return f"{self.prefix}usage/day/"

    def day_at(self, day: int) -> str:
        return f"{self.days}{day:012d}/"

    def day_key(self, day: int, dims: Dims) -> str:
        return f"{self.day_at(day)}{dims.digest()}"

    @property
    def cursors(self) -> str:
        return f"{self.prefix}usage/cursor/"

    def cursor(self, node: str) -> str:
        return f"{self.cursors}{node}"

    @property
    def rates(self) -> str:
        return f"{self.prefix}usage/rates"


# -- what is counted ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    reserved_vcpu_s: float = 0.0
    reserved_gib_s: float = 0.0
    used_cpu_s: float = 0.0
    used_gib_s: float = 0.0
    node_s: float = 0.0  # seconds a node was metered (node records only)
    node_vcpu_s: float = 0.0  # its offered vCPU times those seconds
    node_gib_s: float = 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Tally:
        """`ValueError` for anything but a mapping of finite figures (a NaN would be billed)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a tally is an object, got {type(data).__name__}")
        out = cls(**{f.name: float(data.get(f.name, 0.0)) for f in fields(cls)})
        if not all(math.isfinite(getattr(out, f.name)) for f in fields(cls)):
            raise ValueError("a tally's figures must be finite numbers")
        return out


@dataclass(frozen=True)
class Dims:
    """What a record can be grouped by; `service` is "" in a node's own record."""

    node: str
    service: str = ""
    stack: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # the node's labels, sorted

    def digest(self) -> str:
        text = json.dumps([self.node, self.service, self.stack, list(self.labels)])
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Record:
    """One raw interval [start, end) of one task (or node), or one day total."""

    dims: Dims
    start: int
    end: int
    tally: Tally
    task: str = ""

    def to_json(self) -> bytes:
        out = {"dims": asdict(self.dims), "start": self.start, "end": self.end, "task": self.task}
        out["tally"] = asdict(self.tally)
        return json.dumps(out, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        """A stored record; `ValueError`, `KeyError` or `TypeError` for one that cannot be
        read (a wrong shape was an AttributeError, which the roll-up did not expect)."""
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("dims"), dict):
            raise ValueError("a usage record is an object with its dims")
        d = data["dims"]
        if not isinstance(d.get("node"), str) or not isinstance(d.get("labels", []), list):
            raise ValueError("a usage record's dims name its node, and its labels are a list")
        dims = Dims(
            d["node"], d.get("service", ""), d.get("stack", ""), tuple(tuple(p) for p in d.get("labels", ()))
        )
        return cls(dims, int(data["start"]), int(data["end"]), Tally.of(data["tally"]), data.get("task", ""))


def check_length(length: int) -> int:
    """An interval length that tiles a UTC day (so no raw interval straddles two days)."""
    if length < 1 or DAY % length:
        raise InvalidArgument(
            f"usage interval must be a whole number of seconds dividing 86400 (60, 2, ...), got {length}"
        )
    return length


def interval_start(t: float, length: int) -> int:
    return math.floor(t / length) * length


def day_of(t: int) -> int:
    return t - t % DAY


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def reservation(cpu: float | None, memory: int | None) -> tuple[float, int]:
    """(vCPU, bytes) a task reserves: its spec's, or the documented defaults when unset."""
    return (cpu if cpu else DEFAULT_CPU, memory if memory else DEFAULT_MEMORY)


@dataclass(frozen=True)
class Span:
    """One container as the meter saw it: it ran from `start` to `end` (None: still running)."""

    task: str
    service: str
    stack: str
    cpu: float  # reserved vCPU
    memory: int  # reserved bytes
    start: float
    end: float | None = None
    cpu_seconds: float = 0.0  # the cgroup counter at `at` (since the container started)
    memory_bytes: int = 0  # in use at `at`
    at: float = 0.0
    container: str = ""  # the container's id: a task restarted in place has several
    sampled: bool = True  # False: no cgroup reading yet (the engine did not answer)


@dataclass
class MeterState:
    """What a node's meter keeps between closings (and in its cursor): the end of the last
    closed interval and each container's CPU counter then."""

    end: int
    cpu: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"end": self.end, "cpu": self.cpu}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> MeterState:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("cpu") or {}, dict):
            raise ValueError("a usage cursor is an object with its end and CPU counters")
        return cls(int(data["end"]), {str(k): float(v) for k, v in (data.get("cpu") or {}).items()})


def close(
    spans: Iterable[Span],
    state: MeterState,
    until: int,
    length: int,
    node: str,
    labels: Mapping[str, str],
    node_since: float,
    capacity: tuple[float, int],
) -> tuple[list[Record], MeterState]:
    """The records of every interval in [state.end, until) (both multiples of `length`) and
    the state after them. A task's CPU used is its counter's growth since the state (all of
    it for a container that started after `state.end`), spread over the intervals by the
    time it ran in each; its memory used is its last sample times those seconds. A span
    with no reading (`sampled` False) counts no CPU and keeps the counter it had. The
    node's record counts the time since `node_since` (the meter's start)."""
    label_items = tuple(sorted(labels.items()))
    merged: dict[tuple[str, int], Record] = {}  # (task, start): a task's containers in one record
    cpus: dict[str, float] = {}
    starts = range(state.end, until, length)
    for span in spans:
        end = span.end if span.end is not None else float(until)
        runs = [overlap(span.start, end, s, s + length) for s in starts]
        total = sum(runs)
        if total <= 0:
            continue
        counter = span.container or span.task
        before = state.cpu.get(counter)
        if not span.sampled:  # no reading: nothing counted, and the counter as it was is kept
            grown = 0.0  # (taken as 0 it read as "went back": the next reading counted it all again)
            if before is not None or span.start >= state.end:
                cpus[counter] = before or 0.0  # a container started since then: its counter began at 0
        elif before is not None and span.cpu_seconds >= before:
            grown = span.cpu_seconds - before
        elif span.start >= state.end or (before is not None and span.cpu_seconds < before):
            grown = span.cpu_seconds  # a new container: its counter started at 0 in this range
        else:
            grown = 0.0  # no earlier reading (the meter's first closing): unknown, not guessed
        if span.sampled:
            cpus[counter] = span.cpu_seconds
        dims = Dims(node, span.service, span.stack, label_items)
        for s, run in zip(starts, runs, strict=True):
            if run <= 0:
                continue
            tally = Tally(
                reserved_vcpu_s=span.cpu * run,
                reserved_gib_s=span.memory / GIB * run,
                used_cpu_s=grown * run / total,
                used_gib_s=span.memory_bytes / GIB * run,
            )
            old = merged.get((span.task, s))
            merged[(span.task, s)] = Record(
                dims, s, s + length, tally + old.tally if old else tally, span.task
            )
    records = list(merged.values())
    vcpu, memory = capacity
    for s in starts:
        run = overlap(node_since, float(until), s, s + length)
        if run > 0:
            tally = Tally(node_s=run, node_vcpu_s=vcpu * run, node_gib_s=memory / GIB * run)
            records.append(Record(Dims(node, "", "", label_items), s, s + length, tally, NODE_TASK))
    return records, MeterState(max(until, state.end), cpus)


# -- roll-up --------------------------------------------------------------------------------


def roll_up(days: Mapping[tuple[int, Dims], Tally], raws: Iterable[Record]) -> dict[tuple[int, Dims], Tally]:
    """Day totals after adding `raws` to `days` (which is left as it was)."""
    out = dict(days)
    for r in raws:
        key = (day_of(r.start), r.dims)
        out[key] = out.get(key, Tally()) + r.tally
    return out


def day_records(days: Mapping[tuple[int, Dims], Tally]) -> list[Record]:
    return [Record(dims, day, day + DAY, tally) for (day, dims), tally in days.items()]


# -- reports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """The rate card: price per vCPU-hour and per GiB-hour reserved (Fargate's model) and,
    to compare, per node-hour (an instance's price)."""

    vcpu_hour: float = 0.0
    gib_hour: float = 0.0
    node_hour: float = 0.0
    currency: str = "USD"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Rates:
        """From a YAML/JSON mapping; unknown keys or a negative price are an error."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise InvalidArgument(
                f"rate card: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(known))}"
            )
        out: dict[str, Any] = {}
        for name in ("vcpu_hour", "gib_hour", "node_hour"):
            value = data.get(name, 0.0)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or value < 0
                or not math.isfinite(value)
            ):
                raise InvalidArgument(f"rate card: {name} must be a price >= 0 (e.g. 0.04048), got {value!r}")
            out[name] = float(value)
        currency = data.get("currency", "USD")
        if not isinstance(currency, str) or not currency or len(currency) > 8:
            raise InvalidArgument(f"rate card: currency must be a short name such as USD, got {currency!r}")
        return cls(currency=currency, **out)

    @classmethod
    def from_json(cls, raw: bytes) -> Rates:
        return cls.of(json.loads(raw))


@dataclass(frozen=True)
class Row:
    key: str
    tally: Tally
    cost: float  # reserved vCPU-h and GiB-h priced
    node_cost: float  # node-hours priced

    def hours(self) -> dict[str, float]:
        t = self.tally
        return {
            "vcpu_hours_reserved": t.reserved_vcpu_s / 3600,
            "vcpu_hours_used": t.used_cpu_s / 3600,
            "gib_hours_reserved": t.reserved_gib_s / 3600,
            "gib_hours_used": t.used_gib_s / 3600,
            "node_hours": t.node_s / 3600,
        }


def group_key(by: str, record: Record) -> str | None:
    """The group of one record; None: it belongs to none (a node record by service/stack)."""
    d = record.dims
    if by == "node":
        return d.node
    if by.startswith("label:"):
        return dict(d.labels).get(by[len("label:") :], "")
    if not d.service:
        return None
    if by == "service":
        return d.service
    return d.stack  # "stack": "" for a service outside any stack


def check_by(by: str) -> str:
    if by in ("service", "stack", "node") or (by.startswith("label:") and len(by) > len("label:")):
        return by
    raise InvalidArgument(f"--by must be {BY_CHOICES}, got {by!r}")


def report(records: Iterable[Record], since: float, until: float, by: str, rates: Rates) -> list[Row]:
    """Records whose interval (or day) starts in [since, until), grouped and priced."""
    check_by(by)
    sums: dict[str, Tally] = {}
    for r in records:
        if not since <= r.start < until:
            continue
        key = group_key(by, r)
        if key is None:
            continue
        sums[key] = sums.get(key, Tally()) + r.tally
    return [price(key, tally, rates) for key, tally in sorted(sums.items())]


def price(key: str, t: Tally, rates: Rates) -> Row:
    cost = (t.reserved_vcpu_s * rates.vcpu_hour + t.reserved_gib_s * rates.gib_hour) / 3600
    return Row(key, t, cost, t.node_s * rates.node_hour / 3600)


def totals(rows: Sequence[Row], rates: Rates) -> Row:
    t = Tally()
    for row in rows:
        t = t + row.tally
    return price("TOTAL", t, rates)


def counters(records: Iterable[Record]) -> dict[tuple[str, str, str], float]:
    """Prometheus counter increments: (metric, service, kind) -> seconds."""
    out: dict[tuple[str, str, str], float] = {}
    for r in records:
        if not r.dims.service:
            continue
        for metric, kind, value in (
            ("vcpu", "reserved", r.tally.reserved_vcpu_s),
            ("vcpu", "used", r.tally.used_cpu_s),
            ("gib", "reserved", r.tally.reserved_gib_s),
            ("gib", "used", r.tally.used_gib_s),
        ):
            key = (metric, r.dims.service, kind)
            out[key] = out.get(key, 0.0) + value
    return out


def with_labels(record: Record, labels: Mapping[str, str]) -> Record:
    return replace(record, dims=replace(record.dims, labels=tuple(sorted(labels.items()))))
