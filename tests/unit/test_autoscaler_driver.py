"""The leader's autoscaler (node.daemon.autoscaler) and each node's load record
(node.daemon.loadreport) on an in-memory etcd: what they write, and what happens when etcd
stops answering or the leader dies between its two writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from node.api.services import ServiceWriter
from node.daemon.autoscaler import Autoscaler
from node.daemon.loadreport import LoadReporter, usage_by_service
from node.model.keys import Keys
from node.model.load import AutoscaleStatus, LoadRecord, ServiceLoad
from node.proxy.routes import Route
from node.proxy.stats import ProxyStats
from node.runtime.docker_stats import Usage
from node.store import Compare, StoreError, TxnResult
from node.store.base import Op
from node.store.memory import MemoryStore
from tests.helpers import wait_until

KEYS = Keys()
SPEC = """
name: web
image: shoal-demo/web:1
replicas: 1
ports: [{container: 8080, published: 18080, protocol: http}]
autoscale:
  {min: 1, max: 4, target: {requests_per_replica: 10}, scale_up_cooldown: 5s, scale_down_cooldown: 10s}
"""


class OutageStore(MemoryStore):
    """`down`: every call fails as an unreachable etcd; `die_on`: a txn writing under that
    prefix fails (the leader died before its write reached etcd)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.die_on = ""

    def _check(self) -> None:
        if self.down:
            raise StoreError("etcd unreachable (test)")

    async def range(self, prefix: str) -> Any:
        self._check()
        return await super().range(prefix)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._check()
        return await super().put(key, value, lease)

    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], else_ops: Sequence[Op] = ()
    ) -> TxnResult:
        self._check()
        if self.die_on and any(op.key.startswith(self.die_on) for op in ops):
            raise StoreError("leader died (test)")
        return await super().txn(compares, ops, else_ops)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _setup() -> tuple[OutageStore, ServiceWriter, Autoscaler, Clock, list[tuple[Any, ...]]]:
    store, clock, events = OutageStore(), Clock(), []
    writer = ServiceWriter(store, KEYS, "n1")
    await writer.apply(SPEC, "web.yaml")
    scaler = Autoscaler(store, KEYS, "n1", writer, lambda *a, **kw: events.append((*a, kw)), clock)
    return store, writer, scaler, clock, events


async def _load(store: MemoryStore, at: float, **rates: float) -> None:
    for node, rate in rates.items():
        record = LoadRecord(node, at, 6.0, (0.1,), {"web": ServiceLoad(routed=True, requests=rate)})
        await store.put(KEYS.load(node), record.to_json())


async def _status(store: MemoryStore) -> AutoscaleStatus:
    kv = await store.get(KEYS.autoscale("web"))
    assert kv is not None
    return AutoscaleStatus.from_json(kv.value)


async def test_a_load_over_target_scales_through_the_scale_path_with_an_event_and_a_status() -> None:
    store, writer, scaler, clock, events = await _setup()
    await _load(store, clock.now, n1=20.0, n2=15.0)  # 35/s on one replica, target 10
    await scaler.pass_once()
    record, _ = await writer.read("web")
    assert record.replicas == 4 and record.version == 2  # a new version, as `service scale` writes
    kind, message, service, kw = events[0]
    assert kind == "service.autoscaled" and service == "web" and kw["cause"] == record.cause
    assert "1 -> 4 replica(s)" in message and "requests_per_replica 35/s against target 10/s" in message
    status = await _status(store)
    assert (status.replicas, status.value, status.last_up, status.leader) == (4, 35.0, 1000.0, "n1")
    assert status.last is not None and status.last.replicas_to == 4
    clock.now += 2
    await _load(store, clock.now, n1=20.0, n2=15.0)  # 8.75/s per replica: within the band
    await scaler.pass_once()
    assert (await writer.read("web"))[0].version == 2 and len(events) == 1


async def test_no_figures_hold_and_the_status_says_why() -> None:
    store, writer, scaler, clock, events = await _setup()
    await _load(store, clock.now - 60, n1=500.0)  # a minute old: stale
    await scaler.pass_once()
    assert (await writer.read("web"))[0].replicas == 1 and not events
    status = await _status(store)
    assert status.value is None and "no node reported" in status.missing and status.holding


async def test_a_load_record_from_the_future_is_not_read_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, writer, scaler, clock, events = await _setup()
    await _load(store, clock.now + 3600, n2=500.0)  # a clock an hour fast (or a forged date)
    await _load(store, clock.now, n1=5.0)
    with caplog.at_level("WARNING", logger="node.daemon.autoscaler"):
        await scaler.pass_once()
        clock.now += 2
        await scaler.pass_once()
    assert (await writer.read("web"))[0].replicas == 1 and not events  # 5/s, not 505/s
    ahead = [r.getMessage() for r in caplog.records if "ahead" in r.getMessage()]
    assert len(ahead) == 1 and "load record of n2 is dated 3600.0s ahead" in ahead[0]


async def test_etcd_down_skips_the_pass_and_the_next_one_decides() -> None:
    store, writer, scaler, clock, events = await _setup()
    assert not events
    await _load(store, clock.now, n1=40.0)
    store.down = True
    with pytest.raises(StoreError):
        await scaler.pass_once()  # `run` logs it and goes on a period later
    store.down = False
    await scaler.pass_once()
    assert (await writer.read("web"))[0].replicas == 4


async def test_a_leader_dying_between_status_and_scale_leaves_a_cooldown_not_a_double_scale() -> None:
    store, writer, scaler, clock, events = await _setup()
    await _load(store, clock.now, n1=20.0)
    store.die_on = KEYS.service("web")
    with pytest.raises(StoreError):
        await scaler.pass_once()
    store.die_on = ""
    assert (await writer.read("web"))[0].replicas == 1 and not events  # the scale never happened
    successor = Autoscaler(store, KEYS, "n2", writer, lambda *a, **kw: events.append(a), clock)
    clock.now += 2
    await _load(store, clock.now, n1=20.0)
    await successor.pass_once()
    assert (await writer.read("web"))[0].replicas == 1  # the written cooldown holds it back
    assert "scale-up cooldown" in (await _status(store)).holding
    clock.now += 4
    await _load(store, clock.now, n1=20.0)
    await successor.pass_once()
    assert (await writer.read("web"))[0].replicas == 2


async def test_a_new_leader_keeps_the_cooldowns_and_statuses_of_gone_services_are_deleted() -> None:
    store, writer, scaler, clock, events = await _setup()
    await _load(store, clock.now, n1=20.0)
    await scaler.pass_once()
    assert (await writer.read("web"))[0].replicas == 2
    successor = Autoscaler(store, KEYS, "n2", writer, lambda *a, **kw: events.append(a), clock)
    clock.now += 3
    await _load(store, clock.now, n1=60.0)  # 30/s per replica: wants 4, cooldown 5s
    await successor.pass_once()
    assert (await writer.read("web"))[0].replicas == 2
    await writer.remove("web")
    await successor.pass_once()
    assert await store.get(KEYS.autoscale("web")) is None


async def test_an_apply_of_the_same_file_keeps_the_autoscaled_count() -> None:
    store, writer, scaler, clock, _ = await _setup()
    await _load(store, clock.now, n1=30.0)
    await scaler.pass_once()
    record, changed = await writer.apply(SPEC, "web.yaml")
    assert record.replicas == 3 and not changed


def _usage(service: str, task: str, at: float, cpu_s: float, mem: int) -> Usage:
    return Usage(service, 1, task, cpu_s, mem, 1000, 0, 0, at)


async def test_the_load_record_sums_ports_and_replicas_and_rides_the_lease() -> None:
    store, clock = MemoryStore(), Clock()
    stats = {Route("web", 18080, 8080, "http"): ProxyStats(), Route("web", 18443, 8443, "tcp"): ProxyStats()}
    lease = [0]
    reporter = LoadReporter(store, KEYS, "n1", stats, None, lambda: lease[0], clock)
    await reporter.publish()
    assert await store.get(KEYS.load("n1")) is None  # no lease yet: nothing that could outlive the node
    lease[0] = await store.grant(10)
    await reporter.publish()
    clock.now += 2
    for s in stats.values():
        s.requests += 30
        s.latency.observe(0.003)
    await reporter.publish()
    kv = await store.get(KEYS.load("n1"))
    assert kv is not None and kv.lease == lease[0]
    web = LoadRecord.from_json(kv.value).services["web"]
    assert web.routed and web.requests == 30.0 and sum(web.latency) == 2


async def test_an_idle_node_writes_once_then_keeps_still() -> None:
    store, clock = MemoryStore(), Clock()
    lease = await store.grant(10)
    reporter = LoadReporter(store, KEYS, "n1", {}, None, lambda: lease, clock)
    await reporter.publish()
    first = await store.get(KEYS.load("n1"))
    clock.now += 2
    await reporter.publish()
    again = await store.get(KEYS.load("n1"))
    assert first is not None and again is not None and again.mod_revision == first.mod_revision


def test_usage_needs_two_samples_and_sums_per_service() -> None:
    class Sampler:
        history = {
            "c1": (_usage("web", "t1", 0.0, 1.0, 100), _usage("web", "t1", 2.0, 2.0, 300)),
            "c2": (_usage("web", "t2", 0.0, 1.0, 100), _usage("web", "t2", 2.0, 1.5, 200)),
            "c3": (_usage("db", "t3", 2.0, 1.0, 100),),
        }

    assert usage_by_service(Sampler()) == {"web": (2, 75.0, 500, 2000)}  # type: ignore[arg-type]
    assert usage_by_service(None) == {}


async def test_the_pass_that_scales_to_zero_turns_on_the_fast_passes() -> None:
    store, writer, scaler, clock, events = await _setup()
    await writer.apply(SPEC.replace("min: 1", "min: 0"), "web.yaml")
    for _ in range(7):  # idle for the 10 s scale-down cooldown
        await _load(store, clock.now, n1=0.0)
        await scaler.pass_once()
        clock.now += 2
    assert (await writer.read("web"))[0].replicas == 0 and scaler.at_zero  # at once, not a pass later
    await _load(store, clock.now, n1=0.2)  # a held request woke n1
    await scaler.pass_once()
    assert (await writer.read("web"))[0].replicas == 1 and not scaler.at_zero
    assert [e[1].split(": ", 2)[1] for e in events] == ["1 -> 0 replica(s)", "0 -> 1 replica(s)"]


async def test_at_zero_a_new_load_record_wakes_the_leader_at_once() -> None:
    store, writer, scaler, _, events = await _setup()
    await writer.apply(SPEC.replace("min: 1", "min: 0"), "web.yaml")
    await writer.scale("web", 0)
    scaler.clock = time.time
    runner = asyncio.create_task(scaler.run())
    try:
        await wait_until(lambda: scaler.at_zero, 3.0)
        woken = time.monotonic()
        await _load(store, time.time(), n1=0.2)  # a held request had n1 publish at once
        await wait_until(lambda: events, 1.5)  # well within PERIOD (2 s)
        assert time.monotonic() - woken < 1.0 and "0 -> 1 replica(s)" in events[0][1]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_service_made_again_between_the_read_and_the_scale_is_not_scaled() -> None:
    """The pass read web (autoscaled); before its scale, web is removed and applied again
    without autoscale. Scaling by name set the new incarnation to 4 for good."""
    store, writer, scaler, clock, events = await _setup()
    await _load(store, clock.now, n1=20.0, n2=15.0)
    put = store.put

    async def namesake_first(key: str, value: bytes, lease: int = 0) -> int:
        if key == KEYS.autoscale("web"):  # the status, written just before the scale
            store.put = put  # type: ignore[method-assign]
            await writer.remove("web")
            await writer.apply(SPEC.split("autoscale:")[0], "web.yaml")
        return await put(key, value, lease)

    store.put = namesake_first  # type: ignore[method-assign]
    await scaler.pass_once()
    record, _ = await writer.read("web")
    assert record.replicas == 1 and record.spec.autoscale is None
    assert not [e for e in events if e[0] == "service.autoscaled"]


async def test_one_service_whose_figures_break_the_arithmetic_does_not_stop_the_others() -> None:
    """A target of 5e-324 requests/s passes the checks (above 0) and made `ceil(inf)` raise
    for the whole pass: web, at 3.5x its target, never scaled. A load too large to count is
    as many replicas as allowed."""
    store, writer, scaler, clock, _events = await _setup()
    tiny = SPEC.replace("name: web", "name: tiny").replace("18080", "18081")
    record, _ = await writer.apply(tiny, "tiny.yaml")
    assert record.spec.autoscale is not None
    target = record.spec.autoscale.target.model_copy(update={"requests_per_replica": 5e-324})
    broken = record.spec.model_copy(
        update={"autoscale": record.spec.autoscale.model_copy(update={"target": target})}
    )
    await store.put(KEYS.service("tiny"), replace(record, spec=broken).to_json())
    for node, rate in {"n1": 20.0, "n2": 15.0}.items():
        loads = {
            "web": ServiceLoad(routed=True, requests=rate),
            "tiny": ServiceLoad(routed=True, requests=1.0),
        }
        await store.put(KEYS.load(node), LoadRecord(node, clock.now, 6.0, (0.1,), loads).to_json())
    await scaler.pass_once()
    assert (await writer.read("web"))[0].replicas == 4
    assert (await writer.read("tiny"))[0].replicas == 4  # as many as allowed, not a crash


@pytest.mark.parametrize(
    "services",
    [
        '{"web": {"routed": true, "requests": NaN}}',  # NaN made ceil's guard answer `max`
        '{"web": {"routed": true, "requests": Infinity}}',
        '{"web": {"routed": true, "requests": -1000000}}',  # a negative rate pulled the sum to min
        '{"web": {"routed": true, "requests": "lots"}}',  # a TypeError ended the whole pass
        '{"web": {"routed": true, "requests": 1, "tasks": "2"}}',
        '[["web", {}]]',
    ],
)
async def test_a_hostile_load_record_is_skipped_not_followed(services: str) -> None:
    """One node's record with a figure that is no finite number >= 0 is left out: the
    others decide (20/s on one replica, target 10: 2 replicas), neither max, min nor a crash."""
    store, writer, scaler, clock, events = await _setup()
    await _load(store, clock.now, n1=20.0)
    raw = f'{{"node": "n2", "at": {clock.now}, "window": 6.0, "bounds": [0.1], "services": {services}}}'
    await store.put(KEYS.load("n2"), raw.encode())
    await scaler.pass_once()
    assert (await writer.read("web"))[0].replicas == 2
    assert [e[0] for e in events] == ["service.autoscaled"]
