"""Placements per second of the pure scheduler: 5,000 nodes, 100,000 tasks, one core.

    .venv/bin/python bench/scheduler.py [--nodes 5000] [--services 1000] [--tasks 100000] [--runs 3]

The cluster: `--nodes` nodes of three sizes (4 cores/16 GiB, 8/32, 16/64), labelled
`zone` (a, b, c), `disk` (ssd, hdd) and `rack` (r00..r49). The services: `--services`
services sharing `--tasks` replicas (sizes drawn around the mean), with a mix of
reservations (0.1 core/128 MiB up to 2 cores/4 GiB), constraints (`zone ==`,
`disk !=`), label spread (`node.labels.zone`), `max_per_node` and the binpack strategy,
about 60% of the cluster's memory in all. Everything is drawn from a seeded random
generator, so every run plans the same cluster.

Measured, `--runs` times, median reported: one `schedule_all` call that places every
task from nothing (the figure compared with the goals), and one that re-plans the
result (everything kept: the cost of a leader's idle pass). Each run also checks the
plan: every task placed, no node over its cpu or memory.

Goal: >= 50,000 placements/s. Nomad's C1M (1,000,000 containers on 5,000 hosts in
under 5 minutes, with 5 servers) is about 3,750/s; both ratios are printed.
Bounded: `--deadline` seconds in all (exit status 1 if exceeded or a check fails).

`--e2e` runs the end-to-end part instead (`bench/scheduler_e2e.py`): the same cluster
as simulated nodes registered in a real etcd, a real leader process, the same services
applied through the API's writer; time until every task is committed to etcd, the
leader's peak memory and etcd's database size.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leader.scheduler import Plan, Snapshot, schedule_all
from node.model.domain import Assignment, NodeInfo, ServiceRecord

GOAL = 50_000.0
NOMAD_C1M = 1_000_000 / (5 * 60 - 33)  # 1M containers in 4 min 27 s: ~3,750/s
GIB, MIB = 2**30, 2**20
SIZES = [(0.1, 128 * MIB), (0.25, 256 * MIB), (0.5, 512 * MIB), (1.0, 1 * GIB), (2.0, 4 * GIB)]
SIZE_WEIGHTS = [30, 30, 20, 15, 5]


def make_nodes(n: int, rng: random.Random) -> dict[str, NodeInfo]:
    nodes = {}
    for i in range(n):
        cores, memory = rng.choice([(4, 16 * GIB), (8, 32 * GIB), (16, 64 * GIB)])
        labels = {"zone": "abc"[i % 3], "disk": rng.choice(["ssd", "hdd"]), "rack": f"r{i % 50:02d}"}
        node_id = f"n{i:05d}"
        nodes[node_id] = NodeInfo(
            node_id, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 7070, labels, cores, memory
        )
    return nodes


def make_services(count: int, tasks: int, rng: random.Random, memory: int) -> list[ServiceRecord]:
    """`count` services with `tasks` replicas in all, their reservations about `memory` bytes."""
    shares = [rng.uniform(0.2, 1.8) for _ in range(count)]
    scale = tasks / sum(shares)
    replicas = [max(1, round(s * scale)) for s in shares]
    replicas[-1] += tasks - sum(replicas)
    sizes = rng.choices(SIZES, SIZE_WEIGHTS, k=count)
    demand = sum(r * mem for r, (_, mem) in zip(replicas, sizes, strict=True))
    shrink = min(1.0, memory / demand)
    services = []
    for i in range(count):
        cpu, mem = sizes[i]
        mem = max(16 * MIB, int(mem * shrink) // MIB * MIB)
        placement: dict[str, object] = {}
        kind = rng.random()
        if kind < 0.15:
            placement["constraints"] = [f"node.labels.zone == {rng.choice('abc')}"]
        elif kind < 0.25:
            placement["constraints"] = ["node.labels.disk != hdd"]
        elif kind < 0.35:
            placement["spread"] = "node.labels.zone"
        elif kind < 0.45:
            placement["strategy"] = "binpack"
        elif kind < 0.50:
            placement["max_per_node"] = 1
            replicas[i] = min(replicas[i], 1000)
        spec = {
            "name": f"svc{i:04d}",
            "image": "shoal-demo/web:1",
            "env": {},
            "ports": [],
            "replicas": replicas[i],
            "resources": {"cpu": cpu, "memory": mem},
        }
        if placement:
            spec["placement"] = placement
        services.append(ServiceRecord(spec["name"], 1, spec))  # type: ignore[arg-type]  # checked into a ServiceSpec
    return services


def check(nodes: dict[str, NodeInfo], plans: list[Plan], services: list[ServiceRecord]) -> list[str]:
    problems = []
    cpu: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    for plan in plans:
        if plan.unplaced:
            problems.append(f"{plan.service}: {len(plan.unplaced)} unplaced: {plan.reason}")
        for t in plan.keep + plan.place:
            cpu[t.node] += round(t.cpu * 1000)
            mem[t.node] += t.memory
    for node, info in nodes.items():
        if cpu[node] > round(info.cpu * 1000) or mem[node] > info.memory:
            problems.append(
                f"{node} overcommitted: {cpu[node]}m/{info.cpu} cores, {mem[node]}/{info.memory} B"
            )
    wanted = sum(s.replicas for s in services)
    got = sum(len(p.keep) + len(p.place) for p in plans)
    if got + sum(len(p.unplaced) for p in plans) != wanted:
        problems.append(f"{got} tasks planned, {wanted} wanted")
    return problems[:10]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fill", type=float, default=0.6, help="share of the cluster's memory reserved")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds allowed in all")
    ap.add_argument(
        "--e2e", action="store_true", help="end to end instead: real etcd, leader, simulated nodes"
    )
    ap.add_argument("--no-status", action="store_true", help="--e2e: simulated agents report no status")
    ap.add_argument("--profile", default="", metavar="FILE", help="--e2e: cProfile the leader into FILE")
    ap.add_argument("--keep", action="store_true", help="--e2e: keep etcd's data dir")
    args = ap.parse_args()
    if args.e2e:
        from bench import scheduler_e2e

        return scheduler_e2e.main(args, make_nodes, make_services)
    start = time.monotonic()
    rng = random.Random(args.seed)
    nodes = make_nodes(args.nodes, rng)
    memory = int(sum(n.memory for n in nodes.values()) * args.fill)
    services = make_services(args.services, args.tasks, rng, memory)

    def kind(s: ServiceRecord) -> str:
        p = s.spec.placement
        if p is None:
            return "plain spread"
        return (
            "binpack"
            if p.strategy
            else "constraints"
            if p.constraints
            else "label spread"
            if p.spread
            else "max_per_node"
            if p.max_per_node
            else "plain spread"
        )

    kinds = Counter(kind(s) for s in services)
    total = sum(s.replicas for s in services)
    print(
        f"cluster: {len(nodes)} nodes; {len(services)} services, {total} tasks "
        f"({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))} services)"
    )
    first, again, failed = [], [], False
    for run in range(1, args.runs + 1):
        t0 = time.perf_counter()
        plans = schedule_all(Snapshot(nodes, {}), services, epoch=1, now=1.0)
        t1 = time.perf_counter()
        placed = sum(len(p.place) for p in plans)
        tasks: dict[tuple[str, int], Assignment] = {(t.service, t.slot): t for p in plans for t in p.place}
        t2 = time.perf_counter()
        replan = schedule_all(Snapshot(nodes, tasks), services, epoch=1, now=2.0)
        t3 = time.perf_counter()
        problems = check(nodes, plans, services)
        if any(not p.empty for p in replan):
            problems.append("re-planning the result changed something")
        first.append(placed / (t1 - t0))
        again.append(t3 - t2)
        used = len({t.node for t in tasks.values()})
        print(
            f"run {run}: {placed} placements in {t1 - t0:.3f} s = {placed / (t1 - t0):,.0f}/s "
            f"on {used} nodes; "
            f"re-plan (all kept) {t3 - t2:.3f} s" + ("" if not problems else "; PROBLEMS:")
        )
        for p in problems:
            print("   ", p)
        failed |= bool(problems)
        if time.monotonic() - start > args.deadline:
            print(f"deadline of {args.deadline:.0f} s passed; stopping")
            failed = True
            break
    rate = statistics.median(first)
    print(
        f"\nmedian: {rate:,.0f} placements/s = {rate / GOAL:.2f}x the goal (50,000/s), "
        f"{rate / NOMAD_C1M:.1f}x Nomad C1M (~3,750/s); idle re-plan {statistics.median(again):.3f} s"
    )
    return 1 if failed or rate < GOAL else 0


if __name__ == "__main__":
    sys.exit(main())
