"""End to end: 100,000 tasks of 1,000 services onto 5,000 simulated nodes, through etcd.

    .venv/bin/python bench/scheduler.py --e2e [--nodes 5000] [--services 1000] [--tasks 100000]

What runs, all on this machine:
- a real etcd (`node.dev.devcluster.EtcdProcess`, free ports, a temp data dir, an 8 GiB
  quota), a child process;
- a real leader, a child process: `Election` on its own session lease, then the same
  `LeaderLoop` shoald runs (scheduler, fenced applier, events, pending reasons), with
  no gossip (`liveness=None`: nodes die only with their lease);
- `--nodes` simulated nodes (`node.dev.simcluster`, in this process): the pure bench's
  cluster (three sizes, labels zone/disk/rack) registered on one lease, their agents
  reporting every task assigned to them as running in `status/` (`--no-status`: not);
- the services of the pure bench (mixed sizes, constraints, label spread, binpack,
  max_per_node), applied through `ServiceWriter` (what the API runs on `apply`,
  validation included), 32 at a time.

The clock starts before the first apply and stops when etcd holds `--tasks` keys
under `tasks/` ("committed", polled every 0.1 s with a count-only range); the time
until as many statuses are `running` is printed too. Then the committed tasks are
checked (every one on a registered node, no node over its cpu or memory) and the
figures printed: the rate and its ratio to Nomad C1M's ~3,750 placements/s (goal:
<= 27 s for 100,000), the leader's peak resident memory (VmHWM of the leader process,
from /proc/<pid>/status: the whole process, Python included; goal <= 1 GiB) and
etcd's database size (`etcd_mvcc_db_total_size_in_bytes` from its /metrics).

Bounded: `--deadline` seconds for the whole run; every child is stopped at the end.
`--profile FILE` runs the leader under cProfile and writes its stats to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.api.services import ServiceWriter
from node.dev.devcluster import EtcdProcess, free_port_pair
from node.dev.simcluster import SIM_ADDRESS, SIM_LABEL, SimCluster
from node.model.domain import Assignment, NodeInfo, ServiceRecord
from node.model.keys import Keys
from node.model.spec import spec_to_dict
from node.store.etcd import EtcdStore

NOMAD_C1M = 1_000_000 / (5 * 60 - 33)  # 1M containers in 4 min 27 s: ~3,750/s
GOAL_SECONDS, GOAL_MEMORY = 27.0, 2**30
PREFIX = "/shoal/v1/"
HERE = str(Path(__file__).resolve())


# -- the leader, in its own process ------------------------------------------------------


async def lead(etcd: str, ttl: int = 10) -> None:
    """Campaign, then run the leader loop until SIGTERM (the child process's whole life)."""
    from leader.election import Election
    from leader.loop import LeaderLoop
    from node.store.session import Session
    from node.telemetry.events import EventLog

    store = EtcdStore([etcd], timeout=30.0)
    await store.connect()
    keys = Keys(PREFIX)
    session = Session(store, ttl)
    await session.start()
    events = EventLog(store, keys, "bench-leader")
    await events.start()
    epoch = await Election(store, keys, "bench-leader", "", session).campaign()
    print(f"leading at epoch {epoch}", flush=True)
    loop = LeaderLoop(store, keys, epoch, events, resync=5.0)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(c) for c in (session.run(), events.run(), loop.run(), stop.wait())]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    ended = [repr(t.exception()) for t in done if not t.cancelled() and t.exception() is not None]
    print(f"leader passes: {loop.passes}" + (f"; ended by {ended[0]}" if ended else ""), flush=True)


def leader_child(etcd: str, profile: str) -> None:
    if profile:
        import cProfile

        async def inline(func, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            return func(*args, **kwargs)  # cProfile sees only this thread: run the pass's work here

        asyncio.to_thread = inline  # type: ignore[assignment]
        prof = cProfile.Profile()
        prof.enable()
        try:
            asyncio.run(lead(etcd, ttl=120))  # the pass now blocks the loop: a long lease
        finally:
            prof.disable()
            prof.dump_stats(profile)
    else:
        asyncio.run(lead(etcd))


# -- measuring ---------------------------------------------------------------------------


def count(etcd: str, prefix: str) -> int:
    """Keys under `prefix`, by a count-only range through etcd's JSON gateway."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps(
        {
            "key": base64.b64encode(prefix.encode()).decode(),
            "range_end": base64.b64encode(end.encode()).decode(),
            "count_only": True,
        }
    ).encode()
    with urllib.request.urlopen(f"http://{etcd}/v3/kv/range", body, timeout=10) as resp:
        return int(json.loads(resp.read()).get("count", 0))


def peak_memory(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def etcd_db_size(etcd: str) -> tuple[int, int]:
    """(total, in use) bytes of etcd's backend database, from its /metrics."""
    out = {}
    with urllib.request.urlopen(f"http://{etcd}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            for name in ("etcd_mvcc_db_total_size_in_bytes", "etcd_mvcc_db_total_size_in_use_in_bytes"):
                if line.startswith(name + " "):
                    out[name] = int(float(line.split()[1]))
    return out.get("etcd_mvcc_db_total_size_in_bytes", 0), out.get(
        "etcd_mvcc_db_total_size_in_use_in_bytes", 0
    )


def check(tasks: list[Assignment], nodes: dict[str, NodeInfo]) -> list[str]:
    cpu: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    problems = [f"task {t.service}.{t.slot} on unknown node {t.node}" for t in tasks if t.node not in nodes]
    for t in tasks:
        cpu[t.node] += round(t.cpu * 1000)
        mem[t.node] += t.memory
    for node, info in nodes.items():
        if cpu[node] > round(info.cpu * 1000) or mem[node] > info.memory:
            problems.append(
                f"{node} overcommitted: {cpu[node]}m of {info.cpu} cores, {mem[node]} of {info.memory} B"
            )
    return problems[:10]


# -- the run -----------------------------------------------------------------------------


async def run(
    args: argparse.Namespace, etcd: str, nodes: dict[str, NodeInfo], services: list[ServiceRecord]
) -> int:
    store = EtcdStore([etcd], timeout=30.0)
    await store.connect()
    keys = Keys(PREFIX)
    sim = SimCluster(store, keys, list(nodes.values()), ttl=30, report=not args.no_status)
    sim_task = asyncio.create_task(sim.run(), name="simcluster")
    t0 = time.monotonic()
    await asyncio.wait(
        {sim_task, asyncio.create_task(sim.registered.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    if sim_task.done():
        sim_task.result()
    print(f"{len(nodes)} simulated nodes registered in {time.monotonic() - t0:.1f} s (one lease)", flush=True)
    leader = await asyncio.create_subprocess_exec(
        sys.executable, HERE, "--leader", etcd, "--profile", args.profile or "",
        stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert leader.stdout is not None
        line = await asyncio.wait_for(leader.stdout.readline(), 30)
        print(f"leader (pid {leader.pid}): {line.decode().strip()}", flush=True)
        return await measure(args, etcd, store, keys, nodes, services, leader)
    finally:
        if leader.returncode is None:
            leader.terminate()
        try:
            rest, _ = await asyncio.wait_for(leader.communicate(), 30)
            print(f"leader: {rest.decode().strip()}")
        except TimeoutError:
            leader.kill()
        sim_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sim_task
        await store.close()


async def measure(
    args: argparse.Namespace,
    etcd: str,
    store: EtcdStore,
    keys: Keys,
    nodes: dict[str, NodeInfo],
    services: list[ServiceRecord],
    leader: asyncio.subprocess.Process,
) -> int:
    writer = ServiceWriter(store, keys, "bench")
    total = sum(s.replicas for s in services)
    limit = asyncio.Semaphore(32)
    leader_cpu0 = cpu_seconds(leader.pid)

    async def apply(record: ServiceRecord) -> None:
        async with limit:
            await writer.apply(json.dumps(spec_to_dict(record.spec)), f"{record.name}.json")

    start = time.monotonic()
    deadline = start + args.deadline
    await asyncio.gather(*(apply(s) for s in services))
    applied = time.monotonic() - start
    print(f"{len(services)} services applied in {applied:.2f} s", flush=True)
    committed = running = 0.0
    last = -1.0
    while time.monotonic() < deadline and not (committed and (running or args.no_status)):
        if leader.returncode is not None:
            print(f"the leader exited ({leader.returncode})", flush=True)
            return 1
        n = await asyncio.to_thread(count, etcd, keys.tasks)
        now = time.monotonic() - start
        if not committed and n >= total:
            committed = now
            print(f"all {total} tasks committed at {committed:.2f} s", flush=True)
        if committed and not args.no_status:
            up = await asyncio.to_thread(count, etcd, keys.status_all)
            if up >= total:
                running = now
                print(f"all {total} tasks reported running (simulated) at {running:.2f} s", flush=True)
        elif now - last >= 5:
            last = now
            print(f"  {now:5.1f} s: {n} tasks committed", flush=True)
        await asyncio.sleep(0.1)
    memory = peak_memory(leader.pid)
    leader_cpu = cpu_seconds(leader.pid) - leader_cpu0
    kvs, _ = await store.range(keys.tasks)
    problems = check([Assignment.from_json(kv.value) for kv in kvs], nodes)
    if not committed:
        problems.append(f"only {len(kvs)} of {total} tasks committed within {args.deadline:.0f} s")
    db_total, db_used = etcd_db_size(etcd)
    print()
    if committed:
        rate = total / committed
        print(
            f"end to end: {total} tasks of {len(services)} services on {len(nodes)} simulated nodes "
            f"committed in {committed:.2f} s = {rate:,.0f} placements/s = {rate / NOMAD_C1M:.2f}x Nomad C1M "
            f"(~3,750/s); goal <= {GOAL_SECONDS:.0f} s: {'met' if committed <= GOAL_SECONDS else 'NOT met'}"
        )
    print(
        f"leader: peak memory {memory / 2**20:,.0f} MiB (VmHWM of the leader process; goal <= 1024 MiB: "
        f"{'met' if memory <= GOAL_MEMORY else 'NOT met'}), {leader_cpu:.1f} CPU-seconds"
    )
    print(f"etcd: database {db_total / 2**20:,.0f} MiB ({db_used / 2**20:,.0f} MiB in use)")
    for p in problems:
        print("PROBLEM:", p)
    ok = committed and committed <= GOAL_SECONDS and memory <= GOAL_MEMORY and not problems
    return 0 if ok else 1


def main(args: argparse.Namespace, make_nodes: object, make_services: object) -> int:
    """Called by bench/scheduler.py --e2e with its cluster and service generators."""
    rng = random.Random(args.seed)
    base = make_nodes(args.nodes, rng)  # type: ignore[operator]
    nodes = {
        n.id: replace(
            n, address=SIM_ADDRESS, grpc_port=0, labels={**n.labels, SIM_LABEL: "true"}, simulated=True
        )
        for n in base.values()
    }
    memory = int(sum(n.memory for n in nodes.values()) * args.fill)
    services = make_services(args.services, args.tasks, rng, memory)  # type: ignore[operator]
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-sched-"))
    port = free_port_pair()
    etcd = EtcdProcess(
        tmp / "etcd" / "data", port, port + 1, extra_args=["--quota-backend-bytes", str(8 * 2**30)]
    )
    try:
        etcd.start()
        print(f"etcd {etcd.endpoint} (data in {tmp})", flush=True)
        return asyncio.run(run(args, etcd.endpoint, nodes, services))
    finally:
        etcd.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--leader", required=True, help="etcd endpoint: run as the leader child")
    ap.add_argument("--profile", default="")
    a = ap.parse_args()
    leader_child(a.leader, a.profile)
