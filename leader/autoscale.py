"""The autoscaler's decision, pure (issue 15, decision 58): from the nodes' load records
to a replica count.

`measure` sums the fresh `LoadRecord`s of every node into the one figure the service's
target names (requests a second per replica, CPU or memory in % of the limit, p95
latency). `decide` is target tracking:

    recommended = ceil(replicas * value / target), within min and max

with a tolerance band: while the value is within `TOLERANCE` of the target the count
stays, so a steady load does not flap between two counts. Up goes in one step, at most
once per `scale_up_cooldown`; down only after the recommendation has stayed below the
count for `scale_down_cooldown` and no scale happened for as long, and then to the
highest count asked for during that quiet time (a dip is not followed). No figures:
hold. A count outside min..max (a manual `service scale`, a changed spec) is brought
back at once.

No I/O, no clock: `node.daemon.autoscaler` reads etcd, calls these and writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from node.model.load import LoadRecord, fresh, show
from node.model.spec import ServiceSpec
from node.model.spec_autoscale import Autoscale
from node.model.spec_lifecycle import format_duration

TOLERANCE = 0.1  # |value / target - 1| within it: no change


@dataclass(frozen=True)
class Measure:
    metric: str
    value: float | None  # None: no figures, `missing` says why
    missing: str = ""


@dataclass(frozen=True)
class State:
    """What the decision remembers between passes (the two times are kept in etcd too)."""

    last_up: float = 0.0  # the last scale-up (0: none)
    last_change: float = 0.0  # the last scale either way
    low_since: float = 0.0  # recommendations below the count since then (0: they are not)
    low_max: int = 0  # the highest of them


@dataclass(frozen=True)
class Outcome:
    desired: int  # the count to set; the current count: hold
    recommended: int  # what the metric asks for, within min and max
    holding: str  # why the count stays although the recommendation differs ("" otherwise)
    why: str  # the decision, for its event ("" when holding)
    state: State


def percentile(bounds: tuple[float, ...], counts: tuple[int, ...], q: float) -> float | None:
    """The `q` quantile of a histogram (counts per bucket, +Inf last), interpolated inside its
    bucket like Prometheus' histogram_quantile; None without observations."""
    total = sum(counts)
    if total <= 0 or not bounds or len(counts) != len(bounds) + 1:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(bounds):
                return bounds[-1]  # in +Inf: the highest finite bound is all that is known
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / n
        seen += n
    return bounds[-1]


def _cores(spec: ServiceSpec) -> float:
    r = spec.resources
    limit = r.limits.cpu if r is not None and r.limits is not None else None
    return limit or (r.cpu if r is not None else None) or 1.0


def measure(spec: ServiceSpec, replicas: int, records: Iterable[LoadRecord], now: float) -> Measure:
    """The figure `spec.autoscale.target` names, over every node's fresh record (`fresh`:
    neither stale nor dated ahead of `now` by more than the clocks' skew)."""
    assert spec.autoscale is not None
    metric = spec.autoscale.target.metric
    current = [r for r in records if fresh(r.at, now)]
    loads = [r.services[spec.name] for r in current if spec.name in r.services]
    if not current:
        return Measure(metric, None, "no node reported its load lately")
    if metric in ("requests_per_replica", "p95_latency"):
        routed = [s for s in loads if s.routed]
        if not routed:
            return Measure(metric, None, "no node's proxy counts its requests: it publishes no port")
        if metric == "requests_per_replica":
            return Measure(metric, sum(s.requests for s in routed) / max(replicas, 1))
        bounds = next(r.bounds for r in current if spec.name in r.services and r.services[spec.name].routed)
        width = len(bounds) + 1
        counts = tuple(sum(s.latency[i] for s in routed if len(s.latency) == width) for i in range(width))
        p95 = percentile(bounds, counts, 0.95)
        if p95 is None:
            return Measure(metric, None, "no request in the window: no latency to measure")
        return Measure(metric, p95)
    tasks = sum(s.tasks for s in loads)
    if not tasks:
        return Measure(metric, None, "no replica's usage was sampled (are the nodes' /metrics off?)")
    if metric == "cpu":
        return Measure(metric, sum(s.cpu for s in loads) / tasks / _cores(spec))
    limit = sum(s.memory_limit for s in loads)
    if limit <= 0:
        return Measure(metric, None, "no memory limit known for its replicas")
    return Measure(metric, 100.0 * sum(s.memory for s in loads) / limit)


def recommend(cfg: Autoscale, replicas: int, value: float) -> int:
    target = cfg.target.value
    want = value / target if replicas == 0 else replicas * value / target
    if not math.isfinite(want):  # a load too large to count: as many as allowed
        return cfg.max
    if replicas == 0:  # scaled to zero (min 0, requests): `value` is the whole rate
        return cfg.clamp(math.ceil(want - 1e-9) if value > 0 else 0)
    if abs(value / target - 1) <= TOLERANCE:
        return cfg.clamp(replicas)
    return cfg.clamp(math.ceil(want - 1e-9))


def decide(cfg: Autoscale, replicas: int, m: Measure, state: State, now: float) -> Outcome:
    metric, target = cfg.target.metric, cfg.target.value
    if not cfg.min <= replicas <= cfg.max:
        to = cfg.clamp(replicas)
        bound = f"below min ({cfg.min})" if replicas < cfg.min else f"above max ({cfg.max})"
        up = to > replicas
        new = State(now if up else state.last_up, now)
        return Outcome(to, to, "", f"{replicas} replica(s) is {bound}", new)
    if m.value is None or math.isnan(m.value):  # NaN: no figure (it would read as "too large")
        missing = m.missing or "the figures make no number"
        return Outcome(replicas, replicas, f"no figures: {missing}", "", replace(state, low_since=0.0))
    rec = recommend(cfg, replicas, m.value)
    figure = f"{metric} {show(metric, m.value)} against target {show(metric, target)}"
    if rec > replicas:
        state = replace(state, low_since=0.0, low_max=0)
        wait = state.last_up + cfg.scale_up_cooldown - now
        if state.last_up and wait > 0 and replicas > 0:  # from zero a request waits: at once
            return Outcome(
                replicas, rec, f"scale-up cooldown: {format_duration(round(wait, 1))} left", "", state
            )
        return Outcome(rec, rec, "", figure, State(now, now))
    if rec == replicas:
        return Outcome(replicas, rec, "", "", replace(state, low_since=0.0, low_max=0))
    low_since = state.low_since or now
    low_max = max(rec, state.low_max) if state.low_since else rec
    state = replace(state, low_since=low_since, low_max=low_max)
    ready = max(low_since, state.last_change) + cfg.scale_down_cooldown
    if now < ready:
        left = format_duration(round(ready - now, 1))
        return Outcome(replicas, rec, f"scale-down after {left} more of lower demand", "", state)
    return Outcome(low_max, rec, "", figure, State(state.last_up, now))
