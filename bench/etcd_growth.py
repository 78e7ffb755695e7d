"""How etcd grows under replicas with health checks: revisions and DB size per hour.

A real etcd (its own `EtcdProcess`), a real `Agent` (its status writer, publisher and
health monitor) on a `FakeRuntime` with a prober that always passes, and an
accelerated clock: each step moves the agent's clocks (monotonic and wall) by the
check interval, runs the checks that are due and one agent pass. The replicas stay
healthy throughout: this is the steady state, where nothing changes but time.

Two runs in the same process, same etcd version, same machine:

- before: today's main, emulated: an unchanged health result rewritten to `status/`
  every 30 s (`node.agent.machine.HEALTH_REFRESH = 30`), no compaction, no
  defragmentation;
- after: status written on a change only, and the leader's upkeep
  (`leader.upkeep.Upkeep`, default bounds, on the same accelerated clock) run once a
  simulated minute: compaction to the revision of 10 minutes ago, one-at-a-time
  defragmentation past the threshold.

Printed: revisions per hour, DB file size and bytes in use at the start of the steady
state and after the simulated hour, and the ratios before/after.

    python bench/etcd_growth.py [--replicas 1000] [--minutes 60] [--interval 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leader.upkeep import Bounds, Upkeep
from node.agent import machine as machine_module
from node.agent.agent import Agent
from node.agent.health import Check
from node.dev.devcluster import EtcdProcess, free_port_pair
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import Assignment, ServiceRecord, template_hash
from node.model.keys import Keys
from node.runtime.base import Container
from node.store.base import MAX_TXN_OPS, Put
from node.store.etcd import EtcdStore
from node.store.session import Session
from node.telemetry.events import EventLog

KEYS = Keys()
NODE = "n1"
SERVICES = 10  # the replicas are spread over this many services
WALL0 = 1.8e9  # the simulated wall clock starts here


class Clock:
    """The agent's monotonic clock, moved by hand; `wall()` moves with it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL0 + self.now


class Passing:
    """A prober whose every check passes at once (a healthy replica)."""

    async def probe(self, check: Check, c: Container) -> tuple[bool, str]:
        return True, "HTTP 200"


@dataclass
class Figures:
    name: str
    revisions: int  # over the simulated run
    puts: int  # key versions written over the run (a txn of 100 puts is one revision, 100 versions)
    size_start: int
    size_end: int
    in_use_start: int
    in_use_end: int
    compactions: int
    defrags: int
    seconds: float  # real time the run took


def puts(etcd: EtcdProcess) -> int:
    """Key versions etcd has written since it started (its etcd_mvcc_put_total)."""
    with urllib.request.urlopen(f"http://{etcd.endpoint}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("etcd_mvcc_put_total "):
                return int(float(line.split()[1]))
    return 0


async def db(store: EtcdStore) -> tuple[int, int, int]:
    [status] = await store.member_status()
    return status.db_size, status.db_size_in_use, status.revision


async def seed(store: EtcdStore, replicas: int, interval: float) -> None:
    health = {"http": {"port": 8080, "path": "/health", "status": 200}, "interval": interval, "retries": 3}
    ops = []
    per = math.ceil(replicas / SERVICES)
    for s in range(SERVICES):
        name = f"svc{s}"
        spec = {
            "name": name,
            "image": "shoal-demo/web:1",
            "env": {},
            "ports": [{"container": 8080, "protocol": "tcp"}],
            "replicas": per,
            "health": health,
        }
        record = ServiceRecord(name=name, version=1, spec=spec)
        ops += [
            Put(KEYS.service(name), record.to_json()),
            Put(KEYS.history_version(name, 1), record.to_json()),
        ]
        for slot in range(1, min(per, replicas - s * per) + 1):
            task = Assignment(f"{name}-{slot}-{NODE}", name, slot, NODE, 1, 1, template_hash(spec))
            ops.append(Put(KEYS.task(name, slot), task.to_json()))
    for i in range(0, len(ops), MAX_TXN_OPS):
        await store.txn([], ops[i : i + MAX_TXN_OPS])


async def run(name: str, replicas: int, minutes: int, interval: float, after: bool) -> Figures:
    machine_module.HEALTH_REFRESH = math.inf if after else 30.0
    tmp = Path(tempfile.mkdtemp(prefix="shoal-etcd-growth-"))
    port = free_port_pair()
    etcd = EtcdProcess(tmp / "data", port, port + 1)
    etcd.start()
    store = EtcdStore([etcd.endpoint], timeout=30.0)
    started = time.monotonic()
    try:
        await store.connect()
        await seed(store, replicas, interval)
        await store.put(KEYS.leader, NODE.encode())
        leader = await store.get(KEYS.leader)
        assert leader is not None
        session = Session(store, ttl=60)
        await session.start()
        keepalive = asyncio.create_task(session.run())
        clock = Clock()
        events = EventLog(store, KEYS, NODE)
        agent = Agent(
            store,
            KEYS,
            NODE,
            "bench",
            FakeRuntime(),
            session,
            events,
            "127.0.0.1",
            prober=Passing(),
            clock=clock,
        )
        agent.monitor.wall = clock.wall
        upkeep = Upkeep(store, KEYS, leader.create_revision, events, Bounds(), clock, clock.wall)

        async def step(seconds: float) -> None:
            clock.now += seconds
            await agent.monitor.probe_due()
            await agent.tasks.relist()
            await agent.reconcile()

        await agent.tasks.relist()
        await agent.reconcile()
        for _ in range(5):  # starting -> healthy: the steady state begins after this
            await step(interval)
        size0, used0, rev0 = await db(store)
        puts0 = puts(etcd)
        compactions = 0
        steps = int(minutes * 60 / interval)
        next_upkeep = clock.now
        for _ in range(steps):
            await step(interval)
            if after and clock.now >= next_upkeep:
                before = upkeep.compacted
                await upkeep.tick()
                compactions += upkeep.compacted != before
                next_upkeep = clock.now + 60.0
        if after:
            await upkeep.tick()
        await store.put("/bench/tick", b"1")  # freed pages count at etcd's next commit
        size1, used1, rev1 = await db(store)
        puts1 = puts(etcd)
        keepalive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keepalive
        await agent.stopped()
        elapsed = time.monotonic() - started
        defrags = len(upkeep.defragmented)
        return Figures(
            name, rev1 - rev0, puts1 - puts0, size0, size1, used0, used1, compactions, defrags, elapsed
        )
    finally:
        await store.close()
        etcd.stop()


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=60, help="simulated minutes of steady state")
    ap.add_argument("--interval", type=float, default=10.0, help="s between two checks of a replica")
    args = ap.parse_args()
    if not 1 <= args.replicas <= 10_000 or not 1 <= args.minutes <= 24 * 60:
        ap.error("--replicas 1..10000, --minutes 1..1440")
    hours = args.minutes / 60
    runs = [
        asyncio.run(run("before", args.replicas, args.minutes, args.interval, after=False)),
        asyncio.run(run("after", args.replicas, args.minutes, args.interval, after=True)),
    ]
    print(
        f"{args.replicas} replicas, health checks every {args.interval:g}s, {args.minutes} simulated minutes"
    )
    header = ("", "revisions/h", "puts/h", "db start", "db end", "in use end", "db growth/h", "compactions",
              "defrags", "real s")  # fmt: skip
    rows = [
        (
            f.name,
            f"{f.revisions / hours:.0f}",
            f"{f.puts / hours:.0f}",
            mib(f.size_start),
            mib(f.size_end),
            mib(f.in_use_end),
            mib(int((f.size_end - f.size_start) / hours)),
            str(f.compactions),
            str(f.defrags),
            f"{f.seconds:.1f}",
        )
        for f in runs
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        print(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    before, after = runs
    print(
        f"ratio before/after: revisions per hour {before.revisions / max(after.revisions, 1):.0f}x, "
        f"key versions per hour {before.puts / max(after.puts, 1):.0f}x, "
        f"db size at the end {before.size_end / max(after.size_end, 1):.1f}x, "
        f"bytes in use at the end {before.in_use_end / max(after.in_use_end, 1):.1f}x"
    )


if __name__ == "__main__":
    main()
