"""The daemon's numbers for `/metrics`, taken at the seams that already exist.

Nothing here changes what the agent, the leader or the gossip do; each hook adds a
count or a clock reading around a call they already make, on the event loop, into plain
counters and histograms (`node.proxy.stats.Histogram`). The collectors
(`node.daemon.collectors`) read them, and the components' own state, when Prometheus
scrapes, from prometheus-client's thread.

Hooks (each a few lines; the components do not know they are measured):
- events: `EventLog.observers` gets `on_event`: events by kind, and the agent's
  starts, stops, exits and failures per service from its `task.*` events;
- agent: its `reconcile` is wrapped (pass duration), its health prober is wrapped
  (checks by outcome per service), the runtime its pulls use is wrapped (pull durations);
- leader: `Leadership.on_loop` wraps each new `LeaderLoop.reconcile` (pass duration);
- gossip: the transport's `ping`/`ping_req` are wrapped (probe round trips, failures),
  and `run` reads the member list's state changes (suspicions);
- etcd: `MeteredEtcdStore` keeps its own (`node.daemon.metered`);
- usage: `run` starts the `UsageSampler` thread (`node.runtime.docker_stats`), and the
  usage meter (`node.daemon.usage_meter`, issue 15), whose roll-up settings
  `attach_leadership` gives the leadership.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from node.api.metering import RequestMeter
from node.daemon.metered import StoreMeter
from node.model.domain import Event
from node.proxy.stats import Histogram
from node.runtime.base import LABELS
from node.runtime.docker_stats import UsageSampler

if TYPE_CHECKING:
    from leader.loop import LeaderLoop
    from node.agent.agent import Agent
    from node.daemon.leadership import Leadership
    from node.daemon.membership import Membership
    from node.daemon.usage_meter import UsageMeter

log = logging.getLogger(__name__)

T = TypeVar("T")

# s: image pulls take seconds to minutes; reconcile passes milliseconds to seconds
PULL_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
PASS_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# agent events counted per service: kind -> counter name
TASK_EVENTS = {
    "task.started": "starts",
    "task.stopped": "stops",
    "task.exited": "exits",
    "task.unhealthy": "unhealthy",
    "task.failed": "failures",
}


def histogram(bounds: tuple[float, ...]) -> Histogram:
    return Histogram(bounds, [0] * (len(bounds) + 1))


def timed(call: Callable[..., Awaitable[T]], into: Histogram) -> Callable[..., Awaitable[T]]:
    """`call` that adds its duration (failed calls too) to `into`."""

    @functools.wraps(call)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        start = time.monotonic()
        try:
            return await call(*args, **kwargs)
        finally:
            into.observe(time.monotonic() - start)

    return wrapper


class _CountingProber:
    """The agent's health prober, counting each check's outcome per service."""

    def __init__(self, inner: Any, counts: Counter[tuple[str, str]]) -> None:
        self.inner, self.counts = inner, counts

    async def probe(self, check: Any, c: Any) -> tuple[bool, str]:
        service = c.labels.get(LABELS.SERVICE, "")
        try:
            ok, message = await self.inner.probe(check, c)
        except Exception:
            self.counts[(service, "error")] += 1
            raise
        self.counts[(service, "pass" if ok else "fail")] += 1
        return ok, message


class _TimedPulls:
    """The runtime as the agent's pulls see it: `pull` timed by outcome, the rest as is."""

    def __init__(self, inner: Any, by_outcome: dict[str, Histogram]) -> None:
        self._inner, self._by_outcome = inner, by_outcome

    async def pull(
        self,
        image: str,
        timeout: float,
        progress: Callable[[str], None],
        auth: tuple[str, str] | None = None,
    ) -> None:
        start, outcome = time.monotonic(), "error"
        try:
            await self._inner.pull(image, timeout, progress, auth)
            outcome = "ok"
        except (TimeoutError, asyncio.CancelledError):
            outcome = "timeout"
            raise
        finally:
            self._by_outcome[outcome].observe(time.monotonic() - start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Telemetry:
    def __init__(self, node: str, meter: StoreMeter | None = None, usage: UsageSampler | None = None) -> None:
        self.node = node
        self.meter = meter
        self.usage = usage
        self.usage_meter: UsageMeter | None = None  # issue 15: usage metering (run by `run`)
        self.agent: Agent | None = None
        self.leadership: Leadership | None = None
        self.membership: Membership | None = None
        self.api = RequestMeter()  # the gRPC server's first interceptor
        self.events: Counter[str] = Counter()  # kind -> events emitted by this node
        self.task_events: Counter[tuple[str, str]] = Counter()  # (counter name, service)
        self.health_checks: Counter[tuple[str, str]] = Counter()  # (service, outcome)
        self.pulls = {outcome: histogram(PULL_BUCKETS) for outcome in ("ok", "error", "timeout")}
        self.agent_pass = histogram(PASS_BUCKETS)
        self.leader_pass = histogram(PASS_BUCKETS)
        self.probe_rtt = Histogram()  # direct pings answered
        self.probe_failures: Counter[str] = Counter()  # "ping" | "ping_req"
        self.transitions: Counter[str] = Counter()  # member state entered, as seen here

    # -- hooks --------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        self.events[event.kind] += 1
        name = TASK_EVENTS.get(event.kind)
        if name is not None:
            self.task_events[(name, event.service)] += 1

    def attach_agent(self, agent: Agent) -> None:
        self.agent = agent
        agent.reconcile = timed(agent.reconcile, self.agent_pass)  # type: ignore[method-assign,assignment]
        agent.monitor.prober = _CountingProber(agent.monitor.prober, self.health_checks)
        agent.pulls.runtime = _TimedPulls(agent.pulls.runtime, self.pulls)

    def attach_leadership(self, leadership: Leadership) -> None:
        self.leadership = leadership
        leadership.on_loop.append(self._on_loop)
        if self.usage_meter is not None:  # issue 15: the roll-up's settings are this node's
            leadership.bounds = replace(
                leadership.bounds,
                usage_rollup_after=self.usage_meter.rollup_after,
                usage_keep_days=self.usage_meter.keep_days,
            )

    def _on_loop(self, loop: LeaderLoop) -> None:
        loop.reconcile = timed(loop.reconcile, self.leader_pass)  # type: ignore[method-assign,assignment]

    def attach_membership(self, membership: Membership) -> None:
        self.membership = membership
        transport: Any = membership.transport
        transport.ping = self._probe(transport.ping, "ping", self.probe_rtt)
        transport.ping_req = self._probe(transport.ping_req, "ping_req", None)

    def _probe(
        self, call: Callable[..., Awaitable[T]], kind: str, rtt: Histogram | None
    ) -> Callable[..., Awaitable[T]]:
        async def wrapper(*args: Any, **kwargs: Any) -> T:
            start = time.monotonic()
            try:
                answer = await call(*args, **kwargs)
            except asyncio.CancelledError:
                raise
            except Exception:  # ProbeFailed, or anything the transport lets through
                self.probe_failures[kind] += 1
                raise
            if rtt is not None:
                rtt.observe(time.monotonic() - start)
            return answer

        return wrapper

    # -- the background part ---------------------------------------------------------------

    async def run(self) -> None:
        """Start the usage sampler's thread and count gossip state changes; never fails
        (a bug here must not stop the daemon: it is logged and the counting stops)."""
        if self.usage is not None:
            self.usage.start()
        meter = asyncio.create_task(self.usage_meter.run(), name="usage-meter") if self.usage_meter else None
        try:
            if self.membership is None:
                await asyncio.Event().wait()
                return
            changes = self.membership.list.subscribe()
            while True:
                change = await changes.get()
                with contextlib.suppress(Exception):
                    self.transitions[str(change.state)] += 1
        finally:
            if meter is not None:
                meter.cancel()
            if self.usage is not None:
                self.usage.stop()
