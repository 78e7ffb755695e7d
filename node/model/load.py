"""What the autoscaler reads and writes in etcd (issue 15, decision 58).

- `load/<node>` (`LoadRecord`): each node's own view of every service it proxies or
  runs, put every `PERIOD` seconds on the node's lease (`node.daemon.loadreport`): its
  proxy's request rate and latency histogram over the last `WINDOW` seconds, and the
  CPU and memory its replicas of the service use now (the usage sampler's last
  samples). Rates, not counters: the leader sums the fresh records (`fresh`: at most
  `STALE` s old, at most `SKEW` s ahead of its clock) and needs no state of its own, so a
  new leader decides from its first pass.
- `autoscale/<service>` (`AutoscaleStatus`): the leader's view of one autoscaled
  service: the metric against its target, the last decision and the cooldowns. `shoal
  service autoscale` and `inspect` show it; a new leader takes its cooldowns from it.

`RateWindow` turns a node's cumulative counters into those rates.

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

PERIOD = 2.0  # s between two records of a node
WINDOW = 6.0  # s over which a node's rates are taken
STALE = 10.0  # s: an older record is not read (a node that stopped publishing)
SKEW = 5.0  # s: a record dated further ahead is not read either (a node's clock, or a forged `at`)


def fresh(at: float, now: float) -> bool:
    """Is a record dated `at` current at `now`? Not older than `STALE`, and not dated more
    than `SKEW` ahead: `now - at` alone took a record from the future as fresh, for as
    long as its date was ahead (a node whose clock runs a year fast counted all year)."""
    return -SKEW <= now - at <= STALE


@dataclass(frozen=True)
class ServiceLoad:
    """One service as one node sees it."""

    routed: bool = False  # this node's proxy listens for it (it publishes a port)
    requests: float = 0.0  # per second over the record's window: HTTP requests, or TCP connections
    latency: tuple[int, ...] = ()  # counts per bucket over the window (`LoadRecord.bounds`, +Inf last)
    tasks: int = 0  # its replicas sampled on this node
    cpu: float = 0.0  # their CPU use summed, in % of one core
    memory: int = 0  # their memory use summed, bytes
    memory_limit: int = 0  # their memory limits summed, bytes


@dataclass(frozen=True)
class LoadRecord:
    node: str
    at: float  # time.time() on the node
    window: float  # s the rates cover (shorter after the node starts)
    bounds: tuple[float, ...]  # upper bounds (s) of the latency buckets; +Inf implied
    services: dict[str, ServiceLoad] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LoadRecord:
        """A record as a node wrote it; `ValueError` for one the leader must not decide from
        (a figure that is not a finite number >= 0, a count that is not a whole number,
        latency buckets that do not match the bounds): the autoscaler skips it, so one bad
        record can neither crash the pass nor scale a service to its max on a NaN."""
        d = json.loads(raw)
        if not isinstance(d, dict) or not isinstance(d.get("node"), str):
            raise ValueError("a load record is an object naming its node")
        bounds = tuple(_figure("bounds", b) for b in _list("bounds", d.get("bounds")))
        if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"bounds must be increasing, got {bounds[:8]!r}")
        services = d.get("services", {})
        if not isinstance(services, dict):
            raise ValueError("services must be an object")
        return cls(
            d["node"],
            _figure("at", d.get("at")),
            _figure("window", d.get("window")),
            bounds,
            {str(name): _service_load(s, len(bounds) + 1) for name, s in services.items()},
        )


def _figure(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r:.40}")
    return float(value)


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r:.40}")
    return value


def _list(name: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list, got {type(value).__name__}")
    return value


def _service_load(s: Any, width: int) -> ServiceLoad:
    if not isinstance(s, dict):
        raise ValueError("a service's load must be an object")
    unknown = set(s) - set(ServiceLoad.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    latency = tuple(_whole("latency", n) for n in _list("latency", s.get("latency", [])))
    if latency and len(latency) != width:
        raise ValueError(f"latency has {len(latency)} buckets, the bounds make {width}")
    routed = s.get("routed", False)
    if not isinstance(routed, bool):
        raise ValueError(f"routed must be true or false, got {routed!r:.40}")
    return ServiceLoad(
        routed=routed,
        requests=_figure("requests", s.get("requests", 0.0)),
        latency=latency,
        tasks=_whole("tasks", s.get("tasks", 0)),
        cpu=_figure("cpu", s.get("cpu", 0.0)),
        memory=_whole("memory", s.get("memory", 0)),
        memory_limit=_whole("memory_limit", s.get("memory_limit", 0)),
    )


Counters = dict[str, tuple[int, tuple[int, ...]]]  # service -> (requests so far, latency counts so far)


class RateWindow:
    """A node's cumulative proxy counters, sampled every period, as rates over `WINDOW`.

    A counter that went back (the route was re-created, the node restarted) starts the
    service's window again instead of counting a negative rate."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, Counters]] = deque()

    def add(self, at: float, counters: Counters) -> tuple[float, dict[str, tuple[float, tuple[int, ...]]]]:
        """Record `counters` at `at`; (the window's length, service -> (rate, latency counts))."""
        for service, now in counters.items():
            before = next((c[service] for _, c in reversed(self.samples) if service in c), None)
            if before is not None and _went_back(before, now):
                for _, old in self.samples:
                    old.pop(service, None)
        self.samples.append((at, dict(counters)))
        while len(self.samples) > 2 and at - self.samples[1][0] >= self.window:
            self.samples.popleft()
        out: dict[str, tuple[float, tuple[int, ...]]] = {}
        for service, (requests, latency) in counters.items():
            first_at, (r0, l0) = next((t, c[service]) for t, c in self.samples if service in c)
            span = at - first_at
            if span <= 0:
                out[service] = (0.0, tuple(0 for _ in latency))
            else:
                out[service] = (
                    (requests - r0) / span,
                    tuple(b - a for a, b in zip(l0, latency, strict=True)),
                )
        return at - self.samples[0][0], out


def _went_back(before: tuple[int, tuple[int, ...]], now: tuple[int, tuple[int, ...]]) -> bool:
    return (
        before[0] > now[0]
        or len(before[1]) != len(now[1])
        or any(a > b for a, b in zip(before[1], now[1], strict=True))
    )


def show(metric: str, value: float) -> str:
    """`value` in the metric's unit: 12.3/s, 61%, 180ms."""
    if metric == "requests_per_replica":
        return f"{value:.4g}/s"
    if metric == "p95_latency":
        return f"{value * 1000:.4g}ms"
    return f"{value:.3g}%"


@dataclass(frozen=True)
class Decision:
    """One change of the count by the autoscaler, as shown by `service autoscale`."""

    at: float
    replicas_from: int
    replicas_to: int
    metric: str
    value: float
    why: str


@dataclass(frozen=True)
class AutoscaleStatus:
    service: str
    uid: str  # the service's incarnation: a status of a removed and re-created service is not shown
    metric: str
    target: float
    value: float | None  # None: no figures (see `missing`)
    missing: str  # why there is no value ("" when there is one)
    replicas: int  # the count now
    desired: int  # what the metric asks for (within min and max), cooldowns aside
    min: int
    max: int
    holding: str  # why the count is not being changed ("" when it just was, or need not be)
    last_up: float  # time.time() of the last scale-up (0: none)
    last_change: float  # of the last scale, either way (0: none)
    up_cooldown_until: float
    down_cooldown_until: float
    at: float
    leader: str
    last: Decision | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> AutoscaleStatus:
        d: dict[str, Any] = json.loads(raw)
        last = d.pop("last", None)
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names}, last=Decision(**last) if last else None)
