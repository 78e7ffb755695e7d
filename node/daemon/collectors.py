"""The daemon's series on `/metrics` (next to the proxy's, in the same registry).

Read when Prometheus scrapes, from prometheus-client's thread: each collector copies
the dicts it walks (`list(d.items())`, atomic under the GIL) and never awaits or
blocks the event loop. `docs/metrics.md` lists every series with its meaning.

Cardinality: labels are `service`, `slot`, `state`, `desired`, `outcome`, `kind`,
`operation`, `reason`: the number of series grows with the number of services (and,
for usage, the replicas of those on this node), never with task ids or time.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from node.daemon.telemetry import TASK_EVENTS, Telemetry
from node.model.domain import Assignment, RolloutRecord, ServiceRecord, TaskState, TaskStatus
from node.proxy.stats import Histogram


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def add_histogram(family: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    counts = list(h.counts)  # one copy: buckets and count agree
    running, buckets = 0, []
    for bound, n in zip((*h.bounds, float("inf")), counts, strict=True):
        running += n
        buckets.append((_le(bound), float(running)))
    family.add_metric(labels, buckets, h.total)


def _hist(name: str, help_: str, h: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_, labels=[])
    add_histogram(family, [], h)
    return family


class _Parsed:
    """Records parsed once per mod revision (a leader with many tasks does not parse them
    all on every scrape)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, Any]] = {}

    def parse(self, items: list[tuple[str, Any]], parse: Any) -> dict[str, Any]:
        out, cache = {}, self._cache
        for key, kv in items:
            hit = cache.get(key)
            if hit is None or hit[0] != kv.mod_revision:
                try:
                    hit = cache[key] = (kv.mod_revision, parse(kv.value))
                except (ValueError, TypeError, KeyError):
                    continue
            out[key] = hit[1]
        for key in cache.keys() - out.keys():
            del cache[key]
        return out


class LeaderCollector(Collector):
    def __init__(self, t: Telemetry) -> None:
        self.t = t
        self._lock = threading.Lock()
        self._tasks, self._statuses, self._services = _Parsed(), _Parsed(), _Parsed()

    def collect(self) -> Iterator[Any]:
        leadership = self.t.leadership
        epoch = leadership.epoch if leadership is not None else 0
        yield GaugeMetricFamily(
            "shoal_leader_is_leader", "1 while this node leads the cluster", value=int(epoch > 0)
        )
        yield GaugeMetricFamily(
            "shoal_leader_epoch", "the epoch this node leads at (0: not leading)", value=epoch
        )
        yield _hist(
            "shoal_leader_reconcile_seconds", "duration of the leader's reconcile passes", self.t.leader_pass
        )
        loop = leadership.loop if leadership is not None else None
        if not epoch or loop is None:
            return
        tasks = GaugeMetricFamily(
            "shoal_leader_tasks",
            "assigned tasks by desired state and the state their node reported (unknown: none yet)",
            labels=["service", "desired", "state"],
        )
        with self._lock:
            assigned: dict[str, Assignment] = self._tasks.parse(
                list(loop.tasks.items.items()), Assignment.from_json
            )
            statuses: dict[str, TaskStatus] = self._statuses.parse(
                list(loop.statuses.items.items()), TaskStatus.from_json
            )
        by_task = {s.task_id: s.state for s in statuses.values()}
        counts = Counter(
            (a.service, a.desired, by_task.get(a.task_id, TaskState.UNKNOWN.value)) for a in assigned.values()
        )
        for labels, n in sorted(counts.items()):
            tasks.add_metric(list(labels), n)
        yield tasks
        with self._lock:
            services: dict[str, ServiceRecord] = self._services.parse(
                list(loop.services.items.items()), ServiceRecord.from_json
            )
        desired = GaugeMetricFamily(
            "shoal_leader_service_replicas", "replicas each service asks for (its spec)", labels=["service"]
        )
        running = GaugeMetricFamily(
            "shoal_leader_service_running",
            "replicas of each service running now (desired running, reported running)",
            labels=["service"],
        )
        for spec in sorted(services.values(), key=lambda r: r.name):
            desired.add_metric([spec.name], spec.replicas)
            up = sum(
                n
                for (svc, want, state), n in counts.items()
                if svc == spec.name and want == "running" and state == "running"
            )
            running.add_metric([spec.name], up)
        yield desired
        yield running
        pending = GaugeMetricFamily(
            "shoal_leader_pending_slots", "replicas that fit on no node now", labels=["service"]
        )
        for name, record in sorted((loop.pending._published or {}).items()):
            if record is not None:  # None: a record it could not read, written anew next pass
                pending.add_metric([name], len(record.slots))
        yield pending
        rollouts = GaugeMetricFamily(
            "shoal_leader_rollouts", "services by the state of their latest rollout", labels=["state"]
        )
        states: Counter[str] = Counter()
        for _, kv in list(loop.rollouts.items.items()):
            try:
                states[RolloutRecord.from_json(kv.value).state] += 1
            except (ValueError, TypeError, KeyError):
                states["unreadable"] += 1
        for state, n in sorted(states.items()):
            rollouts.add_metric([state], n)
        yield rollouts


class AgentCollector(Collector):
    def __init__(self, t: Telemetry) -> None:
        self.t = t

    def collect(self) -> Iterator[Any]:
        t = self.t
        containers = GaugeMetricFamily(
            "shoal_agent_tasks",
            "this node's tasks by the state its agent observed",
            labels=["service", "state"],
        )
        restarts = GaugeMetricFamily(
            "shoal_agent_restarts",
            "restarts of this node's current tasks (their restart policy's count)",
            labels=["service"],
        )
        if t.agent is not None:
            statuses = list(t.agent.status.values())
            for (service, state), n in sorted(Counter((s.service, s.state) for s in statuses).items()):
                containers.add_metric([service, state], n)
            sums: Counter[str] = Counter()
            for s in statuses:
                sums[s.service] += s.restarts
            for service, n in sorted(sums.items()):
                restarts.add_metric([service], n)
        yield containers
        yield restarts
        helps = {
            "starts": "containers started by this node's agent",
            "stops": "containers stopped and removed by this node's agent",
            "exits": "containers that exited by themselves (then restarted as their policy says)",
            "unhealthy": "containers replaced for failing their health check",
            "failures": "containers that could not be created or started",
        }
        families = {
            name: CounterMetricFamily(f"shoal_agent_{name}", helps[name], labels=["service"])
            for name in TASK_EVENTS.values()
        }
        for (name, service), n in sorted(list(t.task_events.items())):
            families[name].add_metric([service], n)
        yield from families.values()
        passes = CounterMetricFamily("shoal_agent_passes", "agent passes run")
        passes.add_metric([], t.agent.passes if t.agent is not None else 0)
        yield passes
        yield _hist("shoal_agent_pass_seconds", "duration of the agent's passes", t.agent_pass)
        checks = CounterMetricFamily(
            "shoal_agent_health_checks",
            "health checks run, by outcome (pass, fail, error)",
            labels=["service", "outcome"],
        )
        for (service, outcome), n in sorted(list(t.health_checks.items())):
            checks.add_metric([service, outcome], n)
        yield checks
        pulls = HistogramMetricFamily(
            "shoal_agent_pull_seconds", "image pulls, by outcome", labels=["outcome"]
        )
        for outcome, h in t.pulls.items():
            add_histogram(pulls, [outcome], h)
        yield pulls
        events = CounterMetricFamily("shoal_events", "events this node emitted, by kind", labels=["kind"])
        for kind, n in sorted(list(t.events.items())):
            events.add_metric([kind], n)
        yield events


class GossipCollector(Collector):
    def __init__(self, t: Telemetry) -> None:
        self.t = t

    def collect(self) -> Iterator[Any]:
        t = self.t
        members = GaugeMetricFamily(
            "shoal_gossip_members", "members by state, as this node sees them", labels=["state"]
        )
        counts: Counter[str] = Counter({"alive": 0, "suspect": 0, "dead": 0, "left": 0})
        if t.membership is not None:
            for m in t.membership.list.members():
                counts[str(m.state)] += 1
        for state, n in sorted(counts.items()):
            members.add_metric([state], n)
        yield members
        if t.membership is not None:
            yield GaugeMetricFamily(
                "shoal_gossip_health", "Lifeguard health score (0 healthy; higher: probes slowed)",
                value=t.membership.list.health,
            )  # fmt: skip
        yield _hist("shoal_gossip_probe_seconds", "round trip of direct probes answered", t.probe_rtt)
        failures = CounterMetricFamily(
            "shoal_gossip_probe_failures",
            "probes unanswered: ping (direct), ping_req (through a relay)",
            labels=["kind"],
        )
        for kind in ("ping", "ping_req"):
            failures.add_metric([kind], t.probe_failures[kind])
        yield failures
        suspicions = CounterMetricFamily("shoal_gossip_suspicions", "members this node saw become suspect")
        suspicions.add_metric([], t.transitions["suspect"])
        yield suspicions
        transitions = CounterMetricFamily(
            "shoal_gossip_transitions",
            "state changes of members seen by this node, by the state entered",
            labels=["state"],
        )
        for state, n in sorted(list(t.transitions.items())):
            transitions.add_metric([state], n)
        yield transitions
        if t.membership is not None:  # decision 93: forged or unprovable ALIVE/LEFT claims
            dropped = CounterMetricFamily(
                "shoal_gossip_claims_dropped",
                "ALIVE/LEFT claims about other members refused: their proof did not check, by why",
                labels=["reason"],
            )
            for reason, n in sorted(t.membership.proofs.dropped.items()):
                dropped.add_metric([reason], n)
            yield dropped


class StoreCollector(Collector):
    def __init__(self, t: Telemetry) -> None:
        self.t = t

    def collect(self) -> Iterator[Any]:
        meter = self.t.meter
        if meter is None:
            return
        latency = HistogramMetricFamily(
            "shoal_etcd_request_seconds",
            "etcd calls of this node, by operation (failed ones too)",
            labels=["operation"],
        )
        for op, h in meter.latency.items():
            add_histogram(latency, [op], h)
        yield latency
        errors = CounterMetricFamily(
            "shoal_etcd_errors",
            "etcd calls that failed: unavailable, refused, compacted",
            labels=["operation", "kind"],
        )
        for (op, kind), n in sorted(list(meter.errors.items())):
            errors.add_metric([op, kind], n)
        yield errors
        watches = CounterMetricFamily(
            "shoal_etcd_watches", "watch streams asked for (each re-list asks anew)"
        )
        watches.add_metric([], meter.watches)
        yield watches
        reconnects = CounterMetricFamily(
            "shoal_etcd_watch_reconnects", "watch streams re-opened after they dropped"
        )
        reconnects.add_metric([], meter.watch_reconnects)
        yield reconnects


class UsageCollector(Collector):
    def __init__(self, t: Telemetry) -> None:
        self.t = t

    def collect(self) -> Iterator[Any]:
        sampler = self.t.usage
        if sampler is None:
            return
        latest = list(sampler.latest.values())  # the dict is replaced whole, never changed
        fields = (
            (
                "cpu_seconds_total",
                CounterMetricFamily,
                "cpu_seconds",
                "CPU time used (user + system), seconds",
            ),
            (
                "memory_bytes",
                GaugeMetricFamily,
                "memory_bytes",
                "memory in use, without the inactive page cache",
            ),
            (
                "memory_limit_bytes",
                GaugeMetricFamily,
                "memory_limit",
                "memory limit (the host's memory when none)",
            ),
            (
                "network_receive_bytes_total",
                CounterMetricFamily,
                "rx_bytes",
                "bytes received on its networks",
            ),
            ("network_transmit_bytes_total", CounterMetricFamily, "tx_bytes", "bytes sent on its networks"),
            ("block_read_bytes_total", CounterMetricFamily, "block_read", "bytes read from block devices"),
            ("block_write_bytes_total", CounterMetricFamily, "block_write", "bytes written to block devices"),
        )
        for suffix, kind, attr, help_ in fields:
            name = suffix.removesuffix("_total")
            per_task: Counter[tuple[str, str]] = Counter()
            per_service: Counter[str] = Counter()
            for u in latest:
                per_task[(u.service, str(u.slot))] += getattr(u, attr)
                per_service[u.service] += getattr(u, attr)
            task_family = kind(
                f"shoal_task_{name}", f"{help_}, per replica on this node", labels=["service", "slot"]
            )
            for labels, value in sorted(per_task.items()):
                task_family.add_metric(list(labels), value)
            yield task_family
            if attr == "memory_limit":
                continue
            service_family = kind(
                f"shoal_service_{name}",
                f"{help_}, summed over the service's replicas on this node",
                labels=["service"],
            )
            for service, value in sorted(per_service.items()):
                service_family.add_metric([service], value)
            yield service_family
        rounds = CounterMetricFamily("shoal_usage_rounds", "rounds of usage sampling done")
        rounds.add_metric([], sampler.rounds)
        yield rounds
        errors = CounterMetricFamily("shoal_usage_errors", "stats calls to the engine that failed")
        errors.add_metric([], sampler.errors)
        yield errors
        yield GaugeMetricFamily(
            "shoal_usage_round_seconds",
            "duration of the last sampling round",
            value=sampler.last_round_seconds,
        )


class ApiCollector(Collector):
    def __init__(self, t: Telemetry) -> None:
        self.t = t

    def collect(self) -> Iterator[Any]:
        meter = self.t.api
        if meter is None:
            return
        calls = CounterMetricFamily(
            "shoal_api_requests",
            "gRPC calls this node answered (client and peer API), by method and status code",
            labels=["method", "code"],
        )
        for (method, code), n in sorted(list(meter.calls.items())):
            calls.add_metric([method, code], n)
        yield calls
        latency = HistogramMetricFamily(
            "shoal_api_request_seconds",
            "gRPC call durations by method (streams: until they end)",
            labels=["method"],
        )
        for method, h in sorted(list(meter.latency.items())):
            add_histogram(latency, [method], h)
        yield latency


def collectors(t: Telemetry) -> list[Collector]:
    return [
        LeaderCollector(t),
        AgentCollector(t),
        GossipCollector(t),
        StoreCollector(t),
        UsageCollector(t),
        ApiCollector(t),
        *([t.usage_meter.collector()] if t.usage_meter is not None else []),  # issue 15: usage metering
    ]
