"""What an idle shoal costs: etcd watchers per daemon, and each daemon's memory and CPU.

    .venv/bin/python bench/footprint.py [--window 60] [--replicas 30]

A fresh 3-node `DevCluster` (embedded etcd with its metrics on a port of their own,
daemons on 127.0.0.1-3). Once it is ready and has been left alone for `--settle`
seconds, for 0 replicas and then for `--replicas` replicas of shoal-demo/web:1 (spread
over the three nodes, each running and published before the window starts):

- **watchers**: etcd's own count of open watchers (`etcd_debugging_mvcc_watcher_total`
  on its metrics port) divided by the number of daemons, the figure the "house" issue
  bounds (goal: at most 6 per daemon; nothing but the daemons watches this etcd);
- **RSS**: each daemon's resident memory (`VmRSS` of /proc/<pid>/status) at the end of
  the window (goal: at most 60 MiB);
- **CPU**: each daemon's user + system CPU over the window (/proc/<pid>/stat), as a
  percentage of one core (goal: at most 1 %); the leader is marked.

Next to them, references measured in the same run (`REFERENCES`): an idle Python
process, one that has imported grpc, and one that has imported what shoald imports
(`node.daemon.app`) without running it, so the part of a daemon's RSS that is import
cost shows. Nothing is sent to the cluster during a window; the figures are reported,
not asserted.
Exit status 1 when the cluster cannot be set up or the replicas do not run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from node.dev.devcluster import DevCluster, DevError, free_port_on_all, remove_containers
from node.wire.client import ShoalClient

TICKS = os.sysconf("SC_CLK_TCK")
SPEC = "name: web\nimage: shoal-demo/web:1\nreplicas: {n}\nports: [{{container: 8080}}]\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mib(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found[1]) / 1024 if found else 0.0


def watchers(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.M)
    if found is None:
        raise DevError(f"no etcd_debugging_mvcc_watcher_total at {metrics_url}")
    return int(float(found[1]))


REFERENCES = {  # name -> what the idle process imports before it waits
    "python, idle": "",
    "python + import grpc (aio)": "import grpc, grpc.aio",
    "python + import node.daemon.app": "import node.daemon.app",
}


def references() -> list[tuple[str, float]]:
    """(name, RSS MiB) of each reference process, once it has imported and sits idle."""
    out = []
    for name, imports in REFERENCES.items():
        code = f"{imports}\nimport sys, time\nprint('ready', flush=True)\nsys.stdin.read()"
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", name
            out.append((name, rss_mib(proc.pid)))
        finally:
            proc.communicate("", timeout=10)  # stdin closed: it exits
    return out


def wait_running(client: ShoalClient, n: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        tasks = client.list_tasks("web") if n else []
        if sum(t.state == "running" for t in tasks) == n and len(client.resolve("web") if n else []) == n:
            return
        time.sleep(0.5)
    raise DevError(f"web did not reach {n} running and published replicas in time")


def measure(cluster: DevCluster, metrics_url: str, window: float) -> list[tuple[str, bool, float, float]]:
    """(node, leads, RSS MiB at the end, CPU % of a core over the window) per daemon."""
    pids = {m.node_id: m.proc.pid for m in cluster.members if m.proc is not None}
    start = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(window)  # the measurement itself: nothing is waited for
    took = time.monotonic() - t0
    with ShoalClient(cluster.addr, timeout=10, tls=cluster.tls) as client:
        leader = {n.id for n in client.list_nodes().nodes if n.leader}
    return [
        (n, n in leader, rss_mib(p), 100 * (cpu_seconds(p) - start[n]) / took)
        for n, p in sorted(pids.items())
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds each measurement lasts (60)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds left alone before (10)")
    parser.add_argument("--replicas", type=int, default=30, help="replicas of the second round (30)")
    args = parser.parse_args()
    rows: list[tuple[int, int, list[tuple[str, bool, float, float]]]] = []
    refs = references()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-footprint-") as tmp:
        cluster = DevCluster.on_free_ports(Path(tmp) / "dev", nodes=3, name="bench-footprint-")
        etcd_metrics = free_port_on_all(["127.0.0.1"])
        cluster.etcd.extra_args += ["--listen-metrics-urls", f"http://127.0.0.1:{etcd_metrics}"]
        metrics_url = f"http://127.0.0.1:{etcd_metrics}/metrics"
        try:
            cluster.start()
            with ShoalClient(cluster.addr, timeout=10, tls=cluster.tls) as client:
                for n in (0, args.replicas):
                    if n:
                        client.apply(SPEC.format(n=n), source="bench")
                    wait_running(client, n, time.monotonic() + 120)
                    time.sleep(args.settle)  # let start-up work (elections, first passes) end
                    rows.append((n, watchers(metrics_url), measure(cluster, metrics_url, args.window)))
        except (DevError, OSError) as exc:
            print(f"bench/footprint.py: {exc}", file=sys.stderr)
            return 1
        finally:
            cluster.stop()
            remove_containers(cluster.cluster)
    print(f"load average {os.getloadavg()[0]:.2f}; window {args.window:g} s after {args.settle:g} s alone")
    print(f"{'replicas':>8} {'watchers/daemon':>15} {'node':>5} {'RSS MiB':>8} {'CPU %':>6}")
    for n, total, per_node in rows:
        for i, (node, leads, rss, cpu) in enumerate(per_node):
            first = f"{n:>8} {total / len(per_node):>15.1f}" if i == 0 else " " * 24
            print(f"{first} {node + ('*' if leads else ''):>5} {rss:>8.1f} {cpu:>6.2f}")
    worst_rss = max(r for _, _, per in rows for _, _, r, _ in per)
    worst_cpu = max(c for _, _, per in rows for _, _, _, c in per)
    most = max(total / len(per) for _, total, per in rows)
    print()
    for name, rss in refs:
        print(f"reference: {name:<32} RSS {rss:6.1f} MiB")
    print()
    print(f"watchers per daemon {most:.1f} (goal <= 6), {most / 6:.2f}x the goal")
    print(f"largest RSS {worst_rss:.1f} MiB, {worst_rss / 60:.2f}x the goal (60 MiB)")
    print(f"most CPU {worst_cpu:.2f} % of a core, {worst_cpu:.2f}x the goal (1 %); * marks the leader")
    return 0


if __name__ == "__main__":
    sys.exit(main())
