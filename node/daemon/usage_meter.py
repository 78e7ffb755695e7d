"""Each node meters its own tasks into etcd (issue 15, item 4; decision 67).

Every `TICK` s (or half an interval, if shorter) the meter looks at this node's shoal
containers (running and exited: the engine's own start and finish times, so a task's
time does not depend on when it is looked at) and remembers each as a `Span`; a
container that disappears keeps the span it had when last seen. Once an interval
[t, t+L) is over (plus `GRACE`), it takes one cgroup reading of each running container
(one-shot stats: CPU counter, memory in use), turns everything since its cursor into
records (`node.model.usage_ledger.close`) and writes them in ONE transaction with its
cursor `usage/cursor/<node>` (the end it reached and each task's CPU counter), on the
condition that the cursor is still the one it read. So:

- a crash before the write loses nothing: the next start resumes from the cursor, and
  the containers' start/finish times cover the time the daemon was away;
- a crash after it doubles nothing: the cursor moved with the records, and a record's
  key is (interval, node, task), so writing it again replaces it;
- a write whose answer was lost (etcd timeout) is found out by the cursor's compare.

More records than one transaction takes go in batches; only the last moves the cursor
(the earlier ones are rewritten, not added, if it fails). A cursor older than
`MAX_BACKFILL` is not followed back further. What a task reserves comes from the spec
version that started it (`history/<service>/<version>`, the container's version label).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from node.model.domain import NodeInfo, NodeSpec, ServiceRecord, effective_labels
from node.model.keys import Keys
from node.model.usage_ledger import (
    MeterState,
    Record,
    Span,
    UsageKeys,
    close,
    counters,
    interval_start,
    reservation,
)
from node.runtime.base import LABELS, engine_time
from node.store import Compare, Put, Store, StoreError
from node.store.base import MAX_TXN_OPS

log = logging.getLogger(__name__)

TICK = 5.0  # s between two looks at the containers
GRACE = 0.3  # s after an interval's end before it is closed
MAX_BACKFILL = 6 * 3600  # s a restarted meter goes back at most


@dataclass(frozen=True)
class Seen:
    """One container as the engine describes it."""

    cid: str
    labels: Mapping[str, str]
    running: bool
    started: float  # wall clock
    finished: float  # 0 while running


class DockerEyes:
    """The engine, read from a thread with a client of its own (as the usage sampler)."""

    def __init__(self, url: str | None, cluster: str, node: str, timeout: float = 5.0) -> None:
        self.url, self.cluster, self.node, self.timeout = url, cluster, node, timeout
        self._client: Any = None
        self._times: dict[str, tuple[float, float]] = {}  # cid -> (started, finished) once final

    def _api(self) -> Any:
        if self._client is None:
            import docker

            kw: dict[str, Any] = {"timeout": self.timeout}
            self._client = docker.DockerClient(base_url=self.url, **kw) if self.url else docker.from_env(**kw)
        return self._client.api

    def look(self) -> list[Seen]:
        api = self._api()
        filters = {"label": [f"{LABELS.CLUSTER}={self.cluster}", f"{LABELS.NODE}={self.node}"]}
        out = []
        listed = api.containers(all=True, filters=filters)
        self._times = {c["Id"]: self._times[c["Id"]] for c in listed if c["Id"] in self._times}  # bounded
        for c in listed:
            cid, running = c["Id"], c.get("State") == "running"
            times = self._times.get(cid)
            if times is None or (running and times[1]) or (not running and not times[1]):
                state = api.inspect_container(cid).get("State") or {}
                started, finished = (
                    engine_time(state.get("StartedAt", "")),
                    engine_time(state.get("FinishedAt", "")),
                )
                times = (started, 0.0 if state.get("Running") else max(finished, started))
                self._times[cid] = times
            if times[0]:
                out.append(Seen(cid, c.get("Labels") or {}, times[1] == 0.0, times[0], times[1]))
        return out

    def reading(self, cid: str) -> tuple[float, int]:
        """(CPU seconds since the container started, memory bytes in use) from its cgroup."""
        from node.runtime.docker_stats import usage_of

        usage = usage_of({}, self._api().stats(cid, stream=False, one_shot=True), time.time())
        return usage.cpu_seconds, usage.memory_bytes


class UsageMeter:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        eyes: Any,
        length: int,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.keys, self.node, self.eyes, self.length = store, keys, node, eyes, length
        self.ukeys = UsageKeys(keys.prefix)
        self.wall = wall
        self.since = wall()  # the node is metered from now on
        self.spans: dict[str, Span] = {}  # cid -> the span last seen
        self.last_seen: dict[str, float] = {}  # cid -> when last seen running
        self.versions: dict[
            tuple[str, str], tuple[float, int, str]
        ] = {}  # (service, version) -> cpu, mem, stack
        self.state: MeterState | None = None
        self.cursor_rev = 0  # the cursor's mod revision as read (0: none)
        self.totals: dict[tuple[str, str, str], float] = {}  # Prometheus counters (metric, service, kind)
        self.node_seconds = 0.0  # seconds of node time recorded by this process
        self.closed = 0  # intervals closed by this process
        self.rollup_after, self.keep_days = 3600.0, 400  # what this node's leadership rolls up by
        self.last_error = ""

    # -- looking -----------------------------------------------------------------------

    async def _reserved(self, service: str, version: str) -> tuple[float, int, str]:
        known = self.versions.get((service, version))
        if known is not None:
            return known
        kv = None
        if version.isdigit():
            kv = await self.store.get(self.keys.history_version(service, int(version)))
        if kv is None:
            kv = await self.store.get(self.keys.service(service))
        if kv is None:
            cpu, memory = reservation(None, None)
            return cpu, memory, ""  # not cached: the record may appear
        spec = ServiceRecord.from_json(kv.value).spec
        res = spec.resources
        cpu, memory = reservation(res.cpu if res else None, res.memory if res else None)
        self.versions[(service, version)] = found = (cpu, memory, spec.stack or "")
        return found

    async def look(self, readings: bool = False) -> None:
        looked = self.wall()
        seen = await asyncio.to_thread(self.eyes.look)
        for s in seen:
            service, task = s.labels.get(LABELS.SERVICE, ""), s.labels.get(LABELS.TASK, "")
            if not service or not task:
                continue
            cpu, memory, stack = await self._reserved(service, s.labels.get(LABELS.VERSION, ""))
            old = self.spans.get(s.cid)
            cpu_s, mem_b, at = (old.cpu_seconds, old.memory_bytes, old.at) if old else (0.0, 0, 0.0)
            if readings and s.running:
                try:
                    cpu_s, mem_b = await asyncio.to_thread(self.eyes.reading, s.cid)
                    at = self.wall()
                except Exception as exc:  # gone meanwhile, engine slow: the last reading stands
                    log.debug("usage: no reading of %s: %s", s.cid[:12], exc)
            end = None if s.running else s.finished
            self.spans[s.cid] = Span(
                task, service, stack, cpu, memory, s.started, end, cpu_s, mem_b, at, s.cid, sampled=at > 0
            )
        for cid in set(self.spans) - {s.cid for s in seen}:  # removed: it ran until we last looked, at most
            span = self.spans[cid]
            if span.end is None:
                self.spans[cid] = replace(span, end=self.last_seen.get(cid, span.start))
        self.last_seen = {s.cid: looked for s in seen if s.running}

    # -- closing -----------------------------------------------------------------------

    async def _load(self) -> MeterState:
        kv = await self.store.get(self.ukeys.cursor(self.node))
        floor = interval_start(self.wall() - MAX_BACKFILL, self.length)
        if kv is None:
            self.cursor_rev = 0
            return MeterState(interval_start(self.wall(), self.length))
        self.cursor_rev = kv.mod_revision
        state = MeterState.from_json(kv.value)
        state.end = max(interval_start(state.end, self.length), floor)
        return state

    async def _node_facts(self) -> tuple[dict[str, str], tuple[float, int]]:
        kv = await self.store.get(self.keys.node(self.node))
        if kv is None:
            return {}, (0.0, 0)
        info = NodeInfo.from_json(kv.value)
        spec_kv = await self.store.get(self.keys.nodespec(self.node))
        spec = NodeSpec.from_json(spec_kv.value) if spec_kv is not None else None
        return effective_labels(info, spec), (info.cpu, info.memory)

    async def close_due(self) -> int:
        """Close every interval over by now; the number of records written."""
        if self.state is None:
            self.state = await self._load()
        until = interval_start(self.wall() - GRACE, self.length)
        if until <= self.state.end:
            return 0
        await self.look(readings=True)
        labels, capacity = await self._node_facts()
        records, after = close(
            list(self.spans.values()), self.state, until, self.length, self.node, labels, self.since, capacity
        )
        await self._write(records, after)
        self.state = after
        self.closed += 1
        totals = dict(self.totals)
        for key, value in counters(records).items():
            totals[key] = totals.get(key, 0.0) + value
        self.totals = totals  # replaced whole: the /metrics thread reads it
        self.node_seconds += sum(r.tally.node_s for r in records)
        self.spans = {cid: s for cid, s in self.spans.items() if s.end is None or s.end > until}
        return len(records)

    async def _write(self, records: list[Record], after: MeterState) -> None:
        puts = [Put(self.ukeys.raw_key(r.start, self.node, r.task), r.to_json()) for r in records]
        step = MAX_TXN_OPS - 1
        head, last = puts[: max(0, len(puts) - step)], puts[max(0, len(puts) - step) :]
        cursor = self.ukeys.cursor(self.node)
        at_cursor = [Compare(cursor, "mod", "==", self.cursor_rev)]
        for i in range(0, len(head), step):  # rewritten, not added, if the cursor write fails
            # compared on the cursor too: after a final write applied whose answer was lost,
            # these records are behind the real cursor, the leader's roll-up may have taken
            # and deleted them, and put back they would be counted twice
            if not (await self.store.txn(at_cursor, head[i : i + step])).succeeded:
                self._moved()
        result = await self.store.txn(at_cursor, [*last, Put(cursor, after.to_json())])
        if not result.succeeded:
            self._moved()
        self.cursor_rev = result.revision

    def _moved(self) -> NoReturn:
        self.state = None  # moved by someone else (an earlier write of ours that answered late)
        raise StoreError(f"usage cursor of {self.node} moved meanwhile; resuming from it")

    def collector(self) -> MeterCollector:
        return MeterCollector(self)

    async def run(self) -> None:
        """Look and close until cancelled; a store or engine error waits for the next tick."""
        tick = min(TICK, self.length / 2)
        while True:
            try:
                if await self.close_due() == 0:
                    await self.look()
                self.last_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd or the engine away: nothing moved, try at the next tick
                if str(exc) != self.last_error:
                    log.warning("usage meter: %s", exc)
                self.last_error = str(exc)
            now = self.wall()
            next_end = interval_start(now, self.length) + self.length + GRACE
            await asyncio.sleep(max(0.05, min(tick, next_end - now)))


class MeterCollector(Collector):
    """`/metrics`: what this node's meter has recorded since the daemon started, as
    counters (`sum by (service)` over the nodes gives the cluster's)."""

    def __init__(self, meter: UsageMeter) -> None:
        self.meter = meter

    def collect(self) -> Iterator[Any]:
        totals = self.meter.totals  # replaced whole, never changed
        for metric, help_ in (
            ("vcpu", "vCPU-seconds of tasks, reserved (spec resources) or used (cgroup CPU time)"),
            ("gib", "GiB-seconds of task memory, reserved (spec resources) or used (sampled)"),
        ):
            family = CounterMetricFamily(f"shoal_usage_{metric}_seconds", help_, labels=["service", "kind"])
            for (m, service, kind), value in sorted(totals.items()):
                if m == metric:
                    family.add_metric([service, kind], value)
            yield family
        nodes = CounterMetricFamily(
            "shoal_usage_node_seconds", "seconds this node was metered", labels=["node"]
        )
        nodes.add_metric([self.meter.node], self.meter.node_seconds)
        yield nodes
