"""Health of a replica: the pure state machine that the agent's prober feeds.

A replica whose spec has a `health` check goes `starting` -> `healthy` <-> `unhealthy`:

- It starts `starting` and is probed at once, then every `START_INTERVAL` (or
  `interval` if shorter) until a probe passes, so a new replica becomes routable within
  a fraction of a second of answering. A failure counts at most once per `interval`
  while starting, so the tolerance stays `interval x retries`; during `start_period`
  failures do not count at all (until the first success, as in Docker).
- One passing probe makes it `healthy` (published in `endpoints/`) and resets the count.
- `retries` consecutive counted failures make it `unhealthy`: the agent withdraws its
  endpoint at once. Probes go on every `interval`; one success makes it healthy again.
- `REPLACE_AFTER x retries` consecutive failures: the agent replaces it (drain, stop,
  start anew under the restart policy). The gap between withdrawing and replacing lets
  a replica that is only briefly sick (a GC pause, a slow dependency) come back
  without a restart, as Kubernetes separates readiness from liveness.

Probes are scheduled at a fixed rate (`due + interval`), so a slow probe does not
stretch the schedule: an unhealthy replica is withdrawn within `interval x retries`
(plus the last probe's own time) of its last success.

A replica without a check is routable once running (`Health.NONE`); one whose image has
a Docker HEALTHCHECK (and no check in the spec) follows Docker's verdict (`docker_verdict`).

Pure: no I/O, no clock of its own (times are passed in, monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from node.model.domain import TaskHealth as Health  # the verdicts, named where the routable rule is
from node.model.domain import TaskState, routable
from node.model.spec import ServiceSpec
from node.model.spec_lifecycle import HealthCheck, HttpCheck
from node.runtime.base import DockerHealth

START_INTERVAL = 0.5  # s between probes of a replica that was never healthy (or `interval`)
REPLACE_AFTER = 2  # x retries consecutive failures, and an unhealthy replica is replaced
_EPSILON = 1e-3  # s: float slack when comparing due times


_TIMING = HealthCheck.model_fields  # the defaults are the spec model's, written once there
_HTTP = HttpCheck.model_fields


@dataclass(frozen=True)
class Check:
    """A spec's `health` section, as the agent runs it."""

    kind: str  # "http", "tcp", "exec" or "grpc"
    port: int = 0  # container port (http, tcp, grpc)
    path: str = _HTTP["path"].default  # http
    status: int | None = _HTTP["status"].default  # http: the status that means healthy (None: 2xx-3xx)
    scheme: str = "http"  # http: "http" or "https" (the spec's None)
    tls_verify: bool = False  # https: check the certificate against `host` (the spec's None)
    host: str | None = _HTTP["host"].default  # http: the Host header (None: the address probed)
    command: tuple[str, ...] = ()  # exec: argv, no shell
    service: str = ""  # grpc: the service asked about ("" the server as a whole)
    interval: float = _TIMING["interval"].default
    timeout: float = _TIMING["timeout"].default
    retries: int = _TIMING["retries"].default
    start_period: float = _TIMING["start_period"].default

    def describe(self) -> str:
        if self.kind == "http":
            return f"GET :{self.port}{self.path}" + (" (https)" if self.scheme == "https" else "")
        if self.kind == "tcp":
            return f"tcp :{self.port}"
        if self.kind == "grpc":
            return f"grpc health :{self.port}" + (f" {self.service}" if self.service else "")
        return "exec " + " ".join(self.command)


def check_of(spec: ServiceSpec | None) -> Check | None:
    """The check of a spec; None when it has none (or no spec is known)."""
    health = spec.health if spec is not None else None
    if health is None:
        return None
    timing = Check(
        "",
        interval=health.interval,
        timeout=health.timeout,
        retries=health.retries,
        start_period=health.start_period,
    )
    if health.http is not None:
        http = health.http
        return replace(
            timing,
            kind="http",
            port=http.port,
            path=http.path,
            status=http.status,
            scheme=http.scheme or "http",
            tls_verify=bool(http.tls_verify),
            host=http.host,
        )
    if health.tcp is not None:
        return replace(timing, kind="tcp", port=health.tcp.port)
    if health.exec is not None:
        return replace(timing, kind="exec", command=tuple(health.exec))
    if health.grpc is not None:
        return replace(timing, kind="grpc", port=health.grpc.port, service=health.grpc.service or "")
    return None


@dataclass(frozen=True)
class HealthState:
    """Where one replica's checking stands. Times are monotonic seconds."""

    health: Health
    started: float  # when checking began (the container was first seen running)
    next_at: float  # when the next probe is due
    failures: int = 0  # consecutive failures that counted
    counted_at: float = float("-inf")  # due time of the last failure that counted
    message: str = ""  # the last probe's result
    changed_at: float = 0.0  # when `health` last changed


def begin(now: float) -> HealthState:
    """A replica just seen running: `starting`, first probe due at once."""
    return HealthState(Health.STARTING, started=now, next_at=now, changed_at=now)


class NotChecked(Exception):
    """A probe that could not run: the container engine did not answer the exec (it hangs,
    or is away). Not the replica's failure: it counts for nothing (`not_checked`). Counted,
    every exec-checked replica of a node whose dockerd hung was replaced once it answered
    again: the checks failed before the engine watch declared the engine down."""


def not_checked(state: HealthState, check: Check, message: str, now: float) -> HealthState:
    """`state` after a probe that could not run: health and failures as they were, the
    next probe due as after any other."""
    step = min(check.interval, START_INTERVAL) if state.health == Health.STARTING else check.interval
    return replace(state, message=message, next_at=max(state.next_at + step, now))


def observe(state: HealthState, check: Check, ok: bool, message: str, now: float) -> HealthState:
    """The result of the probe that was due at `state.next_at`, known at `now`."""
    due = state.next_at
    health, failures, counted_at = state.health, state.failures, state.counted_at
    if ok:
        health, failures = Health.HEALTHY, 0
    else:
        grace = health == Health.STARTING and due < state.started + check.start_period
        paced = health != Health.STARTING or due - counted_at >= check.interval - _EPSILON
        if not grace and paced:
            failures, counted_at = failures + 1, due
            if failures >= check.retries:
                health = Health.UNHEALTHY
    step = min(check.interval, START_INTERVAL) if health == Health.STARTING else check.interval
    next_at = due + step
    if next_at <= now:  # the probe took longer than a step: the next one goes at once
        next_at = now
    changed_at = now if health != state.health else state.changed_at
    return replace(
        state,
        health=health,
        failures=failures,
        counted_at=counted_at,
        message=message,
        next_at=next_at,
        changed_at=changed_at,
    )


def needs_replacing(state: HealthState, check: Check) -> bool:
    """Unhealthy for `REPLACE_AFTER x retries` consecutive failures: replace the replica."""
    return state.health == Health.UNHEALTHY and state.failures >= REPLACE_AFTER * check.retries


@dataclass(frozen=True)
class Verdict:
    """What the agent acts on and reports for one running replica."""

    health: Health = Health.NONE
    message: str = ""
    failures: int = 0
    at: float = 0.0  # wall clock of the last result (0: none yet)
    replace: bool = False

    @property
    def routable(self) -> bool:
        """Published in `endpoints/` (a verdict is of a running replica): `node.model.domain.routable`."""
        return routable(TaskState.RUNNING, self.health)


def docker_verdict(health: DockerHealth | None) -> Verdict:
    """Docker's own HEALTHCHECK, honoured when the spec has no check: the same states,
    and the same replacement rule (a failing streak of `REPLACE_AFTER x` its retries)."""
    if health is None:
        return Verdict()
    state = {"healthy": Health.HEALTHY, "unhealthy": Health.UNHEALTHY}.get(health.status, Health.STARTING)
    return Verdict(
        health=state,
        message=health.message,
        failures=health.failing_streak,
        replace=state == Health.UNHEALTHY and health.failing_streak >= REPLACE_AFTER * max(1, health.retries),
    )
