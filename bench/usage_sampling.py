"""What usage sampling and /metrics cost a daemon (issue 14, decision 45).

    .venv/bin/python bench/usage_sampling.py [--replicas 20] [--window 60] [--scrape 5]

A one-node `DevCluster` running `--replicas` idle replicas (busybox `sleep`). The
same daemon is measured over `--window` seconds in three modes, restarted between
them with the same containers (it adopts them, nothing moves):

- **off**: `--metrics-port 0`: no /metrics, no usage sampler (the figures before issue 14);
- **sampling**: /metrics on, nobody scraping: the sampler's thread asks Docker for
  one-shot stats of each replica every 10 s;
- **scraped**: the same, and /metrics read every `--scrape` seconds (as Prometheus
  would, at three times its default rate).

Per mode: the daemon's user + system CPU over the window as a percentage of one core
(/proc/<pid>/stat), its RSS at the end, and dockerd's CPU over the window (the stats
calls are answered there; other work on the host shows in it too). Reported, not
asserted. Exit status 1 when the cluster cannot be set up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from node.dev.devcluster import DevCluster, DevError, remove_containers
from node.wire.client import ShoalClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from footprint import cpu_seconds, rss_mib

SPEC = 'name: idle\nimage: shoal-demo/base:1\nreplicas: {n}\ncommand: ["sleep", "3600"]\n'


def dockerd_pid() -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "dockerd":
                    return int(proc.name)
            except OSError:
                continue
    raise DevError("no dockerd process found")


def wait_running(client: ShoalClient, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = client.list_tasks("idle")
        if len(tasks) == n and all(t.state == "running" for t in tasks):
            return
        time.sleep(1.0)
    raise DevError(f"{n} replicas not running within {timeout:g}s")


def measure(cluster: DevCluster, window: float, scrape: float, url: str) -> tuple[float, float, float]:
    pid = cluster.members[0].proc.pid  # type: ignore[union-attr]
    docker = dockerd_pid()
    c0, d0, t0 = cpu_seconds(pid), cpu_seconds(docker), time.monotonic()
    end = t0 + window
    while (now := time.monotonic()) < end:
        if scrape:
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read()
        time.sleep(min(scrape or window, max(0.0, end - now)))
    elapsed = time.monotonic() - t0
    return (
        100 * (cpu_seconds(pid) - c0) / elapsed,
        rss_mib(pid),
        100 * (cpu_seconds(docker) - d0) / elapsed,
    )


def restart(cluster: DevCluster, metrics: bool) -> None:
    node = cluster.members[0]
    node.stop()
    args = [a for a in node.args]
    i = args.index("--metrics-port")
    args[i + 1] = str(cluster.metrics_port) if metrics else "0"
    node.args = args
    node.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with cluster.client() as client:
                client.list_tasks("idle")
                return
        except Exception:
            time.sleep(0.5)
    raise DevError("the daemon did not come back")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--scrape", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=15.0)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-usage-bench-") as tmp:
        cluster = DevCluster.on_free_ports(Path(tmp), nodes=1, name="ub")
        try:
            cluster.start()
            with cluster.client() as client:
                client.apply(SPEC.format(n=opts.replicas))
                wait_running(client, opts.replicas, 180)
            url = f"http://127.0.0.1:{cluster.metrics_port}/metrics"
            print(f"{opts.replicas} idle replicas on one node; window {opts.window:g}s")
            print(f"{'mode':<10} {'daemon CPU %':>13} {'RSS MiB':>8} {'dockerd CPU %':>14}")
            for mode, metrics, scrape in (
                ("off", False, 0.0),
                ("sampling", True, 0.0),
                ("scraped", True, opts.scrape),
            ):
                restart(cluster, metrics)
                time.sleep(opts.settle)  # past the start and the sampler's first rounds
                cpu, rss, dockerd = measure(cluster, opts.window, scrape, url)
                print(f"{mode:<10} {cpu:>13.2f} {rss:>8.1f} {dockerd:>14.2f}", flush=True)
        except DevError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            cluster.stop()
            remove_containers(cluster.cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
