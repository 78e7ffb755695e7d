"""`autoscale:` of a service spec: target tracking on one metric (issue 15, item 1).

    autoscale:
      min: 1
      max: 20
      target: {requests_per_replica: 50}   # or cpu: 60% | memory: 70% | p95_latency: 200ms
      scale_up_cooldown: 15s
      scale_down_cooldown: 2m

The leader (`leader.autoscale`, driven by `node.daemon.autoscaler`) keeps the replica
count between `min` and `max` so that the metric stays near its target:
- `requests_per_replica`: requests a second per replica (L7: HTTP requests; L4:
  connections), counted by every node's proxy;
- `cpu`: CPU use per replica, in % of its CPU limit (`resources.limits.cpu`, else
  `resources.cpu`, else one core);
- `memory`: memory use per replica, in % of its memory limit;
- `p95_latency`: the 95th percentile of the proxies' latency (request to response
  headers) over every node.

`replicas` is the starting count; an apply of the same service keeps the count the
autoscaler set (`keep_count`). `min: 0` (item 2, scale to zero) needs the
`requests_per_replica` target: with no replica only the proxies measure anything; every
node's proxy then holds a request for the service (`node.proxy.coldstart`) up to
`cold_start_timeout` while the leader starts a replica.

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from node.model.spec_lifecycle import ShortDuration

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
MAX_REPLICAS = 10_000  # what `shoal service scale` accepts

Metric = Literal["requests_per_replica", "cpu", "memory", "p95_latency"]
METRICS: tuple[Metric, ...] = ("requests_per_replica", "cpu", "memory", "p95_latency")


def _fail(message: str, at: tuple[str, ...] = ()) -> PydanticCustomError:
    # Same shape as node.model.spec's errors: the message goes in as context, never as a template.
    return PydanticCustomError("spec", "{msg}", {"msg": message, "at": at})


def _percent(v: Any) -> Any:
    """`60%` or `60` -> 60.0; anything else is refused with the syntax to use."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise _fail(f"must be a percentage such as 60% (or the number 60), got {type(v).__name__}")
    text = v.strip() if isinstance(v, str) else v
    if isinstance(text, str):
        number = text[:-1].strip() if text.endswith("%") else text
        try:
            text = float(number)
        except ValueError:
            raise _fail(f"must be a percentage such as 60% (or the number 60), got {v!r}") from None
    value = float(text)
    if not math.isfinite(value) or not 0 < value <= 100:
        raise _fail(f"must be a percentage above 0% and at most 100%, got {v!r}")
    return value


_Percent = Annotated[float, BeforeValidator(_percent)]


class AutoscaleTarget(BaseModel):
    """What one replica should carry: exactly one of the four metrics."""

    model_config = _STRICT
    requests_per_replica: Annotated[float, Field(gt=0, le=1_000_000)] | None = None  # per second
    cpu: _Percent | None = None  # % of the replica's CPU limit
    memory: _Percent | None = None  # % of the replica's memory limit
    p95_latency: ShortDuration | None = None  # seconds; YAML says 200ms

    @model_validator(mode="after")
    def _one(self) -> Self:
        set_ = [m for m in METRICS if getattr(self, m) is not None]
        if len(set_) != 1:
            got = ", ".join(set_) if set_ else "none"
            raise _fail(f"set exactly one of {', '.join(METRICS)}; got {got}")
        if self.p95_latency is not None and not 0.001 <= self.p95_latency <= 60:
            raise _fail(f"must be between 1ms and 60s, got {self.p95_latency:g}s", ("p95_latency",))
        return self

    @property
    def metric(self) -> Metric:
        return next(m for m in METRICS if getattr(self, m) is not None)

    @property
    def value(self) -> float:
        v = getattr(self, self.metric)
        assert v is not None  # one is set: _one
        return float(v)


class Autoscale(BaseModel):
    model_config = _STRICT
    min: int = 1
    max: int
    target: AutoscaleTarget
    scale_up_cooldown: ShortDuration = 15.0  # s after a scale-up before the next one
    scale_down_cooldown: ShortDuration = 120.0  # s of lower demand (and since any scale) before a scale-down
    # item 2, min 0: how long a proxy holds a request while a first replica starts (then 503)
    cold_start_timeout: ShortDuration = 30.0

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min == 0 and self.target.metric != "requests_per_replica":
            raise _fail(
                f"0 (scale to zero) needs target requests_per_replica: {self.target.metric} "
                "is measured on running replicas, and there would be none; use min: 1",
                ("min",),
            )
        for field, lo in (("min", 0), ("max", 1)):
            v = getattr(self, field)
            if not lo <= v <= MAX_REPLICAS:
                raise _fail(f"must be between {lo} and {MAX_REPLICAS}, got {v}", (field,))
        if not self.cold_start_timeout >= 0.1:
            raise _fail(f"must be at least 100ms, got {self.cold_start_timeout:g}s", ("cold_start_timeout",))
        if self.max < self.min:
            raise _fail(f"must be at least min ({self.min}), got {self.max}", ("max",))
        return self

    def clamp(self, replicas: int) -> int:
        return max(self.min, min(self.max, replicas))


def autoscale_fits(spec: Any) -> Any:
    """A `ServiceSpec` validator: autoscaling is for replicated services, not jobs or
    `mode: global` (one replica per node, whatever the load)."""
    if spec.autoscale is None:
        return spec
    if spec.mode == "global":
        raise _fail("a global service runs one replica per node: remove autoscale or mode", ("autoscale",))
    if spec.kind == "job":
        raise _fail("a job runs to completion, it is not scaled: remove autoscale", ("autoscale",))
    return spec


def keep_count(asked: Any, current: Any) -> Any:
    """The spec an apply stores: with `autoscale` in both the asked and the current spec, the
    count the autoscaler set is kept, not reset to `replicas`; either way within min/max.
    `asked` and `current` are `ServiceSpec`s (typed loosely: node.model.spec imports this)."""
    if asked.autoscale is None:
        return asked
    kept = current is not None and current.autoscale is not None
    count = asked.autoscale.clamp(current.replicas if kept else asked.replicas)
    return asked if count == asked.replicas else asked.model_copy(update={"replicas": count})
