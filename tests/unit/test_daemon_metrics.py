"""The daemon's series on /metrics (issue 14): collectors over fakes, the hooks, usage sampling."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.daemon.collectors import collectors
from node.daemon.metered import StoreMeter
from node.daemon.telemetry import Telemetry, _CountingProber, _TimedPulls, timed
from node.model.domain import Assignment, Event, PendingRecord, RolloutRecord, ServiceRecord, TaskStatus
from node.model.keys import Keys
from node.proxy.stats import Histogram
from node.runtime.base import LABELS
from node.runtime.docker_stats import UsageSampler, usage_of
from node.store import KV, StoreError, StoreUnavailable
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog

# -- helpers ---------------------------------------------------------------------------------


def scrape(t: Telemetry) -> str:
    registry = CollectorRegistry()
    for collector in collectors(t):
        registry.register(collector)
    return generate_latest(registry).decode()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted labels: value} of every sample called `name` in the exposition `text`."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def kv(key: str, value: bytes, rev: int = 1) -> KV:
    return KV(key, value, rev, rev, 1)


def labels_of(service: str, slot: int, task: str = "t") -> dict[str, str]:
    return {LABELS.SERVICE: service, LABELS.SLOT: str(slot), LABELS.TASK: task}


V1 = {  # a cgroup v1 answer, trimmed from a real one (shoal-demo/web:1)
    "cpu_stats": {"cpu_usage": {"total_usage": 29579418}, "online_cpus": 2},
    "memory_stats": {
        "usage": 782336,
        "stats": {"total_inactive_file": 8192, "cache": 12288},
        "limit": 25276194816,
    },
    "networks": {"eth0": {"rx_bytes": 90, "tx_bytes": 0}, "eth1": {"rx_bytes": 10, "tx_bytes": 5}},
}
V2 = {
    "cpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}},
    "memory_stats": {"usage": 10_000, "stats": {"inactive_file": 4_000}, "limit": 64 * 2**20},
    "networks": {"eth0": {"rx_bytes": 1, "tx_bytes": 2}},
}


# -- usage ----------------------------------------------------------------------------------


def test_usage_of_reads_cgroup_v1_and_v2_answers() -> None:
    u = usage_of(labels_of("web", 2, "abc"), V1, 5.0)
    assert (u.service, u.slot, u.task_id) == ("web", 2, "abc")
    assert u.cpu_seconds == pytest.approx(0.029579418)
    assert u.memory_bytes == 782336 - 8192  # without the inactive page cache, as docker stats
    assert (u.memory_limit, u.rx_bytes, u.tx_bytes) == (25276194816, 100, 5)
    u2 = usage_of(labels_of("api", 0), V2, 5.0)
    assert (u2.cpu_seconds, u2.memory_bytes, u2.rx_bytes, u2.tx_bytes) == (2.0, 6_000, 1, 2)


def test_usage_of_an_answer_without_figures_is_zeros_not_an_error() -> None:
    u = usage_of({LABELS.SERVICE: "web", LABELS.SLOT: "x"}, {"memory_stats": {}, "networks": None}, 0.0)
    assert (u.slot, u.cpu_seconds, u.memory_bytes, u.rx_bytes) == (0, 0.0, 0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_round_stops_at_its_deadline_and_keeps_the_last_figures_of_the_rest() -> None:
    clock = Clock()
    listed = {"c1": labels_of("web", 0), "c2": labels_of("web", 1), "c3": labels_of("web", 2)}
    calls: list[str] = []

    def fetch(cid: str) -> dict[str, Any]:
        calls.append(cid)
        clock.now += 6.0  # a slow engine: 6 s per call, the round has 10
        return V1

    sampler = UsageSampler(lambda: listed, fetch, interval=10.0, clock=clock)
    sampler.sample_once()
    assert calls == ["c1", "c2"]  # c3 not reached: after the deadline
    assert set(sampler.latest) == {"c1", "c2"}
    sampler.latest = {**sampler.latest, "c3": usage_of(labels_of("web", 2), V2, 0.0)}
    calls.clear()
    sampler.sample_once()
    assert calls == ["c1", "c2"] and sampler.latest["c3"].cpu_seconds == 2.0  # kept, not dropped


def test_failed_calls_are_counted_and_gone_containers_drop_out() -> None:
    listed = {"c1": labels_of("web", 0), "c2": labels_of("web", 1)}

    def fetch(cid: str) -> dict[str, Any]:
        if cid == "c2":
            raise RuntimeError("no such container")
        return V1

    sampler = UsageSampler(lambda: listed, fetch, interval=10.0)
    sampler.sample_once()
    assert set(sampler.latest) == {"c1"} and sampler.errors == 1 and sampler.rounds == 1

    def engine_away() -> dict[str, dict[str, str]]:
        raise ConnectionError("docker.sock: connection refused")

    sampler.lister = engine_away
    sampler.sample_once()
    assert sampler.latest == {} and sampler.errors == 2  # nothing stale is shown


def test_the_sampler_thread_samples_and_stops() -> None:
    sampled = asyncio.Event()  # only as a flag: set from the thread, read here
    sampler = UsageSampler(
        lambda: {"c1": labels_of("web", 0)}, lambda cid: (sampled.set(), V1)[1], interval=0.05
    )
    sampler.start()
    try:
        deadline = Clock()
        import time

        end = time.monotonic() + 5.0
        while sampler.rounds < 2 and time.monotonic() < end:
            time.sleep(0.01)
        assert sampler.rounds >= 2 and deadline.now == 0.0
    finally:
        sampler.stop()


def test_usage_series_per_replica_and_per_service() -> None:
    sampler = UsageSampler(lambda: {}, lambda cid: V1)
    sampler.latest = {
        "a": usage_of(labels_of("web", 0), V1, 0.0),
        "b": usage_of(labels_of("web", 1), V2, 0.0),
        "c": usage_of(labels_of("web", 1), V2, 0.0),  # an old and a new container of one slot
    }
    text = scrape(Telemetry("n1", usage=sampler))
    cpu = samples(text, "shoal_task_cpu_seconds_total")
    assert cpu[(("service", "web"), ("slot", "0"))] == pytest.approx(0.029579418)
    assert cpu[(("service", "web"), ("slot", "1"))] == 4.0  # summed: one series per slot
    assert samples(text, "shoal_service_memory_bytes") == {(("service", "web"),): 774144 + 12_000}
    assert samples(text, "shoal_service_network_receive_bytes_total") == {(("service", "web"),): 102}
    assert samples(text, "shoal_task_memory_limit_bytes")[(("service", "web"), ("slot", "1"))] > 0
    assert not any("task_id" in line or '"t"' in line for line in text.splitlines())  # no task ids


# -- leader, agent, gossip, store -----------------------------------------------------------------


def leader_loop() -> Any:
    keys = Keys("/shoal/")
    tasks = {
        keys.task("web", i): kv(keys.task("web", i), Assignment(f"t{i}", "web", i, "n1", 1, 3).to_json())
        for i in range(3)
    }
    tasks[keys.task("db", 0)] = kv(
        keys.task("db", 0), Assignment("d0", "db", 0, "n2", 1, 3, desired="stopped").to_json()
    )
    statuses = {
        keys.status(f"t{i}"): kv(keys.status(f"t{i}"), TaskStatus(f"t{i}", "web", i, "n1", state).to_json())
        for i, state in ((0, "running"), (1, "running"), (2, "failed"))
    }
    rollouts = {
        keys.rollout("web"): kv(
            keys.rollout("web"), RolloutRecord("web", 1, 2, "h", state="updating").to_json()
        )
    }
    pending = {"web": PendingRecord("web", "no node has 4 cores free", [3, 4], [], 0.0)}
    services = {
        keys.service("web"): kv(
            keys.service("web"),
            ServiceRecord("web", 1, {"name": "web", "image": "x:1", "replicas": 5}).to_json(),
        )
    }
    return SimpleNamespace(
        services=SimpleNamespace(items=services),
        tasks=SimpleNamespace(items=tasks),
        statuses=SimpleNamespace(items=statuses),
        rollouts=SimpleNamespace(items=rollouts),
        pending=SimpleNamespace(_published=pending),
    )


def test_a_leader_shows_tasks_by_desired_and_observed_state_pending_slots_and_rollouts() -> None:
    t = Telemetry("n1")
    t.leadership = SimpleNamespace(epoch=7, loop=leader_loop())  # type: ignore[assignment]
    t.leader_pass.observe(0.02)
    text = scrape(t)
    assert samples(text, "shoal_leader_is_leader") == {(): 1.0}
    assert samples(text, "shoal_leader_epoch") == {(): 7.0}
    tasks = samples(text, "shoal_leader_tasks")
    assert tasks[(("desired", "running"), ("service", "web"), ("state", "running"))] == 2
    assert tasks[(("desired", "running"), ("service", "web"), ("state", "failed"))] == 1
    assert tasks[(("desired", "stopped"), ("service", "db"), ("state", "unknown"))] == 1  # no report yet
    assert samples(text, "shoal_leader_pending_slots") == {(("service", "web"),): 2}
    assert samples(text, "shoal_leader_service_replicas") == {(("service", "web"),): 5}  # the spec's
    assert samples(text, "shoal_leader_service_running") == {(("service", "web"),): 2}  # t0 and t1
    assert samples(text, "shoal_leader_rollouts") == {(("state", "updating"),): 1}
    assert samples(text, "shoal_leader_reconcile_seconds_count") == {(): 1.0}


def test_a_follower_says_it_does_not_lead_and_shows_no_leader_state() -> None:
    t = Telemetry("n2")
    t.leadership = SimpleNamespace(epoch=0, loop=leader_loop())  # type: ignore[assignment]  # led before
    text = scrape(t)
    assert samples(text, "shoal_leader_is_leader") == {(): 0.0}
    assert samples(text, "shoal_leader_tasks") == {}


def test_the_agent_series_come_from_its_statuses_and_events() -> None:
    t = Telemetry("n1")
    t.agent = SimpleNamespace(  # type: ignore[assignment]
        status={
            "t0": TaskStatus("t0", "web", 0, "n1", "running", restarts=2),
            "t1": TaskStatus("t1", "web", 1, "n1", "exited", restarts=1),
        },
        passes=12,
    )
    for kind in ("task.started", "task.started", "task.stopped", "task.exited", "node.started"):
        t.on_event(Event(0.0, kind, "n1", "...", "web" if kind.startswith("task") else "", "t0"))
    text = scrape(t)
    assert samples(text, "shoal_agent_tasks") == {
        (("service", "web"), ("state", "running")): 1,
        (("service", "web"), ("state", "exited")): 1,
    }
    assert samples(text, "shoal_agent_restarts") == {(("service", "web"),): 3}
    assert samples(text, "shoal_agent_starts_total") == {(("service", "web"),): 2}
    assert samples(text, "shoal_agent_stops_total") == {(("service", "web"),): 1}
    assert samples(text, "shoal_agent_exits_total") == {(("service", "web"),): 1}
    assert samples(text, "shoal_agent_passes_total") == {(): 12}
    assert samples(text, "shoal_events_total")[(("kind", "node.started"),)] == 1


def test_gossip_members_by_state_probe_failures_and_suspicions() -> None:
    t = Telemetry("n1")
    members = [
        SimpleNamespace(state="alive"),
        SimpleNamespace(state="alive"),
        SimpleNamespace(state="suspect"),
    ]
    t.membership = SimpleNamespace(  # type: ignore[assignment]
        list=SimpleNamespace(members=lambda: members, health=1),
        proofs=SimpleNamespace(dropped=Counter({"certificate": 2})),
    )
    t.probe_failures["ping"] += 3
    t.transitions["suspect"] += 2
    text = scrape(t)
    assert samples(text, "shoal_gossip_members") == {
        (("state", "alive"),): 2,
        (("state", "suspect"),): 1,
        (("state", "dead"),): 0,
        (("state", "left"),): 0,
    }
    assert samples(text, "shoal_gossip_probe_failures_total")[(("kind", "ping"),)] == 3
    assert samples(text, "shoal_gossip_suspicions_total") == {(): 2}
    assert samples(text, "shoal_gossip_health") == {(): 1}
    assert samples(text, "shoal_gossip_claims_dropped_total") == {(("reason", "certificate"),): 2}


def test_the_store_meter_times_every_call_and_sorts_errors_by_kind() -> None:
    meter = StoreMeter()

    async def calls() -> None:
        async def ok() -> int:
            return 1

        async def away() -> int:
            raise StoreUnavailable("etcd unreachable")

        async def refused() -> int:
            raise StoreError("etcd refused")

        assert await meter.timed("get", ok) == 1
        for op, call in (("put", away), ("txn", refused)):
            with pytest.raises(StoreError):
                await meter.timed(op, call)

    asyncio.run(calls())
    meter.watches, meter.watch_opens = 4, 6
    t = Telemetry("n1", meter=meter)
    text = scrape(t)
    counts = samples(text, "shoal_etcd_request_seconds_count")
    assert counts[(("operation", "get"),)] == 1 and counts[(("operation", "put"),)] == 1
    assert samples(text, "shoal_etcd_errors_total") == {
        (("kind", "unavailable"), ("operation", "put")): 1,
        (("kind", "refused"), ("operation", "txn")): 1,
    }
    assert samples(text, "shoal_etcd_watch_reconnects_total") == {(): 2}


# -- hooks ------------------------------------------------------------------------------------


def test_hooks_count_health_checks_pulls_and_pass_durations() -> None:
    t = Telemetry("n1")

    class Prober:
        async def probe(self, check: Any, c: Any) -> tuple[bool, str]:
            if check == "boom":
                raise RuntimeError("bug")
            return check == "ok", "msg"

    class Runtime:
        other = "delegated"
        auths: list[tuple[str, str] | None] = []

        async def pull(
            self,
            image: str,
            timeout: float,
            progress: Callable[[str], None],
            auth: tuple[str, str] | None = None,
        ) -> None:
            self.auths.append(auth)
            if image == "slow":
                raise TimeoutError
            if image == "bad":
                raise RuntimeError("denied")

    async def run() -> None:
        prober = _CountingProber(Prober(), t.health_checks)
        c = SimpleNamespace(labels={LABELS.SERVICE: "web"})
        await prober.probe("ok", c)
        await prober.probe("no", c)
        with pytest.raises(RuntimeError):
            await prober.probe("boom", c)
        pulls: Any = _TimedPulls(Runtime(), t.pulls)
        await pulls.pull("good", 1.0, print, ("user", "pw"))
        assert Runtime.auths == [("user", "pw")]  # a pull secret goes through the timing unchanged
        for image in ("slow", "bad"):
            with pytest.raises((TimeoutError, RuntimeError)):
                await pulls.pull(image, 1.0, print)
        assert pulls.other == "delegated"

        async def a_pass() -> str:
            return "done"

        h = Histogram()
        assert await timed(a_pass, h)() == "done" and h.count == 1

    asyncio.run(run())
    text = scrape(t)
    assert samples(text, "shoal_agent_health_checks_total") == {
        (("outcome", "pass"), ("service", "web")): 1,
        (("outcome", "fail"), ("service", "web")): 1,
        (("outcome", "error"), ("service", "web")): 1,
    }
    pulled = samples(text, "shoal_agent_pull_seconds_count")
    assert pulled == {(("outcome", "ok"),): 1, (("outcome", "timeout"),): 1, (("outcome", "error"),): 1}


def test_a_gossip_probe_that_fails_is_counted_and_an_answered_one_timed() -> None:
    t = Telemetry("n1")

    async def ping(address: str) -> str:
        if address == "down":
            raise ConnectionError("no answer")
        return "ack"

    async def run() -> None:
        wrapped = t._probe(ping, "ping", t.probe_rtt)
        assert await wrapped("up") == "ack"
        with pytest.raises(ConnectionError):
            await wrapped("down")

    asyncio.run(run())
    assert t.probe_failures["ping"] == 1 and t.probe_rtt.count == 1


def test_event_observers_see_every_event() -> None:
    seen: list[Event] = []
    log = EventLog(MemoryStore(), Keys("/shoal/"), "n1")
    log.observers.append(seen.append)
    log.emit("task.started", "web.1 started", service="web", task="t1")
    assert [(e.kind, e.service) for e in seen] == [("task.started", "web")]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) not installed")
def test_the_whole_exposition_passes_promtool() -> None:
    t = Telemetry("n1", meter=StoreMeter(), usage=UsageSampler(lambda: {}, lambda cid: V1))
    assert t.usage is not None
    t.usage.latest = {"a": usage_of(labels_of("web", 0), V1, 0.0)}
    t.leadership = SimpleNamespace(epoch=3, loop=leader_loop())  # type: ignore[assignment]
    t.agent = SimpleNamespace(status={"t0": TaskStatus("t0", "web", 0, "n1", "running")}, passes=1)  # type: ignore[assignment]
    t.on_event(Event(0.0, "task.started", "n1", "m", "web", "t0"))
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape(t), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
