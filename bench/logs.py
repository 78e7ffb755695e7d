"""Lines per second through `shoal service logs -f`, next to `docker logs -f` of the same
containers, and the daemons' CPU per 10,000 lines.

    .venv/bin/python bench/logs.py [--lines 50000] [--runs 3]

One 3-node `DevCluster` (embedded etcd, daemons on 127.0.0.1-3, free ports) runs a
service `chatty` of 3 replicas (shoal-demo/base:1, one per node) that each print
`--lines` numbered lines at start and then idle. Once every replica has printed all of
them, each run times, alternating:

- `docker logs -f`: one process per container, all three at once, until each has
  printed its `--lines` lines (what an operator does on each host, the floor);
- `shoal service logs -f chatty`: one CLI through node 1, which streams its own
  replica and relays the other two from their nodes over the peer API, merged in time
  order, until `3 x --lines` lines arrived.

It prints lines per second of each, whole and from the first line printed (the CLI's
Python start-up, ~0.3 s, left out), the ratios (goal >= 0.8x), and the CPU seconds the
three daemons spent per 10,000 lines relayed (utime + stime from /proc, summed over the
daemons, during the shoal rows).

`--before TREE` (a checkout of other code, e.g. `git archive main | tar -x -C TREE`)
measures a change in one run: a second cluster runs TREE's daemons and CLI, and each
run times, one cluster after the other, docker's row and shoal's, so the machine's load
(shared, it varies by the minute) falls alike on both and each ratio is against docker
in the same minutes. Every loop is bounded (a deadline per run). Needs
dockerd, etcd and the demo images, as the integration tests do; runs as root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

from node.dev.devcluster import DevCluster, DevError, remove_containers
from node.runtime.base import LABELS
from node.wire.client import ShoalClient

VENV_BIN = Path(sys.executable).parent
SPEC = """
name: chatty
image: shoal-demo/base:1
replicas: 3
placement: {max_per_node: 1}
command: [/bin/sh, -c, '%s']
"""
PRINT = 'i=0; while [ $i -lt %d ]; do echo "line $i of $HOSTNAME"; i=$((i+1)); done; exec sleep 3600'
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / TICKS


def container_ids(cluster: DevCluster) -> list[str]:
    client = docker.from_env()
    try:
        found = client.containers.list(filters={"label": f"{LABELS.CLUSTER}={cluster.cluster}"})
        return [c.id for c in found if c.labels.get(LABELS.SERVICE) == "chatty"]
    finally:
        client.close()


def count_lines(
    cmds: list[list[str]], want: int, env: dict[str, str], deadline: float
) -> tuple[float, float, float]:
    """Run `cmds` at once until each printed `want` lines (then they are stopped): seconds
    from the start, and from the first line (the start-up of the command left out), and
    the CPU seconds the commands spent."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env) for c in cmds]
    first = 0.0
    try:
        for proc in procs:
            assert proc.stdout is not None
            seen = 0
            while seen < want:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(cmds[0][:4])}: {seen}/{want} lines by the deadline")
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{' '.join(cmds[0][:4])} ended after {seen}/{want} lines")
                if not first:
                    first = time.perf_counter()
                seen += 1
        end = time.perf_counter()
        return end - start, end - first, cpu_seconds([p.pid for p in procs])
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


@dataclass
class Setup:
    """One cluster and the shoal CLI that reads it: this tree's, or `--before`'s."""

    name: str
    tree: str  # PYTHONPATH of its daemons and its CLI
    cluster: DevCluster
    env: dict[str, str] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


def start(setup: Setup, lines: int) -> None:
    """Start the cluster with its daemons on `setup.tree`, and chatty's 3 replicas."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = setup.tree  # the daemons inherit it
    try:
        setup.cluster.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    with ShoalClient(setup.cluster.addr, timeout=10, tls=setup.cluster.tls) as client:
        client.apply(SPEC % (PRINT % lines), source="bench")
    context = str(setup.cluster.context_file)
    setup.env = {**os.environ, "SHOAL_CONTEXT_FILE": context, "PYTHONPATH": setup.tree}
    setup.env.pop("SHOAL_ADDR", None)
    deadline = time.monotonic() + 120
    while len(ids := container_ids(setup.cluster)) < 3:
        if time.monotonic() > deadline:
            raise DevError("3 replicas of chatty did not start within 120 s")
        time.sleep(0.2)
    setup.ids = ids
    setup.pids = [m.proc.pid for m in setup.cluster.members if m.proc is not None]
    # every line printed and in the engine's cache before the first timed run
    count_lines([["docker", "logs", "-f", c] for c in ids], lines, setup.env, time.monotonic() + 300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=50_000, help="lines printed by each replica (50000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each row (3)")
    parser.add_argument(
        "--before",
        metavar="TREE",
        help="a checkout of the code to compare with (e.g. `git archive main | tar -x -C TREE`): "
        "a second cluster runs its daemons and CLI, its rows alternate with this tree's",
    )
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    plain = "docker logs -f (3 at once)"
    rows: dict[str, list[tuple[float, float, float]]] = {plain: []}
    cpu: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}  # per run: docker's from-1st-line time / shoal's, same minute
    per_node: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-logs-") as tmp:
        this = DevCluster.on_free_ports(Path(tmp) / "a", 3, "bench-logs-")
        setups = [Setup("shoal service logs -f", here, this)]
        if args.before:
            before = DevCluster.on_free_ports(Path(tmp) / "b", 3, "bench-logs-before-")
            setups.append(Setup("  the same, --before tree", str(Path(args.before).resolve()), before))
        try:
            for setup in setups:
                start(setup, args.lines)
                rows[setup.name], cpu[setup.name], per_node[setup.name], ratios[setup.name] = [], [], [], []
            for _ in range(args.runs):
                for setup in setups:  # alternating: the machine's load falls on every row alike
                    docker_cmds = [["docker", "logs", "-f", cid] for cid in setup.ids]
                    deadline = time.monotonic() + 300
                    rows[plain].append(count_lines(docker_cmds, args.lines, setup.env, deadline))
                    shoal = [str(VENV_BIN / "shoal"), "--addr", setup.cluster.addr, "service", "logs", "-f"]
                    shoal.append("chatty")
                    before_cpu = cpu_seconds(setup.pids)
                    each = [cpu_seconds([pid]) for pid in setup.pids]
                    rows[setup.name].append(
                        count_lines([shoal], 3 * args.lines, setup.env, time.monotonic() + 300)
                    )
                    ratios[setup.name].append(rows[plain][-1][1] / rows[setup.name][-1][1])
                    cpu[setup.name].append((cpu_seconds(setup.pids) - before_cpu) / (3 * args.lines) * 10_000)
                    per_node[setup.name].append(
                        [cpu_seconds([pid]) - b for pid, b in zip(setup.pids, each, strict=True)]
                    )
        except (DevError, RuntimeError) as exc:
            print(f"bench/logs.py: {exc}", file=sys.stderr)
            return 1
        finally:
            for setup in setups:
                setup.cluster.stop()
                remove_containers(setup.cluster.cluster)
    total = 3 * args.lines
    whole = {name: statistics.median(r[0] for r in runs) for name, runs in rows.items()}
    flow = {name: statistics.median(r[1] for r in runs) for name, runs in rows.items()}
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs, {total} lines each (3 replicas)")
    print(f"{'row':<28} {'whole s':>8} {'lines/s':>9} {'from 1st line s':>16} {'lines/s':>9}")
    for name in rows:
        print(f"{name:<28} {whole[name]:>8.2f} {total / whole[name]:>9.0f} {flow[name]:>16.2f} "
              f"{total / flow[name]:>9.0f}")  # fmt: skip
    for setup in setups:
        name = setup.name.strip()
        print(f"\n{name}: / docker logs, whole (start-up included): {whole[plain] / whole[setup.name]:.2f}x; "
              f"from the first line: {flow[plain] / flow[setup.name]:.2f}x (goal >= 0.8x)")  # fmt: skip
        each_run = sorted(ratios[setup.name])
        print(f"  per run (docker's row just before): median {statistics.median(each_run):.2f}x, "
              f"{each_run[0]:.2f}-{each_run[-1]:.2f}x")  # fmt: skip
        cli = statistics.median(r[2] for r in rows[setup.name]) / total * 10_000
        print(f"  daemons' CPU per 10k lines relayed: {statistics.median(cpu[setup.name]):.3f} s; "
              f"the CLI's: {cli:.3f} s")  # fmt: skip
        nodes = ", ".join(
            f"n{i + 1} {statistics.median(r[i] for r in per_node[setup.name]):.2f} s" for i in range(3)
        )
        print(f"  CPU of each daemon during a shoal row (n1 answers the CLI and relays n2, n3): {nodes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
