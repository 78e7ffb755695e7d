"""Each node's load, published for the leader's autoscaler (issue 15, decision 58).

Every `PERIOD` seconds the node puts `load/<node>` (`node.model.load.LoadRecord`) on
its session lease, so the record goes with the node: per service, its proxy's request
rate and latency histogram over the last `WINDOW` seconds (the mesh's counters, summed
over the service's published ports), and the CPU and memory of its replicas here (the
usage sampler's last two samples; none when the node's /metrics is off). A node with
nothing to report writes once and then keeps still, so an idle cluster costs etcd nothing.
A failed put is logged and tried again at the next period: the record is a gauge,
the next one replaces it. A request held for a service scaled to zero (`wake`) has the
record published at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from node.model.keys import Keys
from node.model.load import PERIOD, Counters, LoadRecord, RateWindow, ServiceLoad
from node.proxy.routes import Route
from node.proxy.stats import BUCKETS, ProxyStats
from node.runtime.docker_stats import UsageSampler, cpu_percent
from node.store import Store, StoreError

log = logging.getLogger(__name__)


def proxy_counters(stats: Mapping[Route, ProxyStats]) -> Counters:
    """Service -> (requests so far, latency counts so far), over its published ports."""
    out: dict[str, tuple[int, tuple[int, ...]]] = {}
    for route, s in list(stats.items()):
        requests, latency = out.get(route.service, (0, (0,) * (len(BUCKETS) + 1)))
        counts = list(s.latency.counts)  # a copy: the engines count on
        out[route.service] = (
            requests + s.requests,
            tuple(a + b for a, b in zip(latency, counts, strict=True)),
        )
    return out


def usage_by_service(sampler: UsageSampler | None) -> dict[str, tuple[int, float, int, int]]:
    """Service -> (replicas sampled, CPU % of one core summed, memory bytes, memory limit bytes)."""
    out: dict[str, tuple[int, float, int, int]] = {}
    if sampler is None:
        return out
    for history in list(sampler.history.values()):
        if len(history) < 2:
            continue  # no CPU figure from one sample
        last = history[-1]
        n, cpu, mem, limit = out.get(last.service, (0, 0.0, 0, 0))
        cpu += cpu_percent(history[-2], last)
        out[last.service] = (n + 1, cpu, mem + last.memory_bytes, limit + last.memory_limit)
    return out


class LoadReporter:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        stats: Mapping[Route, ProxyStats],
        sampler: UsageSampler | None,
        lease: Callable[[], int],  # the session's lease, 0 while it has none
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.keys, self.node, self.stats, self.sampler = store, keys, node, stats, sampler
        self.lease, self.clock = lease, clock
        self.window = RateWindow()
        self.quiet = False  # the last record put had no service
        self._wake = asyncio.Event()

    def wake(self, service: str) -> None:
        """A request is held for `service`, scaled to zero (`node.proxy.coldstart`): publish now."""
        self._wake.set()

    def record(self) -> LoadRecord:
        at = self.clock()
        span, rates = self.window.add(at, proxy_counters(self.stats))
        usage = usage_by_service(self.sampler)
        services = {}
        for name in sorted({*rates, *usage}):
            rate, latency = rates.get(name, (0.0, ()))
            n, cpu, mem, limit = usage.get(name, (0, 0.0, 0, 0))
            services[name] = ServiceLoad(name in rates, round(rate, 3), latency, n, round(cpu, 2), mem, limit)
        return LoadRecord(self.node, at, round(span, 3), BUCKETS, services)

    async def publish(self) -> None:
        record = self.record()
        if not record.services and self.quiet:
            return
        lease = self.lease()
        if not lease:
            return  # no session yet: a record without a lease would outlive the node
        await self.store.put(self.keys.load(self.node), record.to_json(), lease=lease)
        self.quiet = not record.services

    async def run(self) -> None:
        while True:
            try:
                await self.publish()
            except (StoreError, TimeoutError) as exc:
                log.debug("load record not published: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PERIOD):
                    await self._wake.wait()
            self._wake.clear()
