"""Autoscaling (issue 15): reaction to a step of load, cold start from zero against
`docker run`, requests lost while scaling.

    .venv/bin/python bench/autoscale.py [--colds 5] [--rate 60] [--target 10] [--max 4]

A fresh 2-node `DevCluster` (free ports, a unique cluster name, data in a temp dir) runs
shoal-demo/web:1 published with protocol http and
`autoscale: {min: 0, max: M, target: {requests_per_replica: T}, scale_up_cooldown: 3s,
scale_down_cooldown: 3s}`.

- cold start: `--colds` times, once the service is scaled to zero, one `GET /` through the
  next node's proxy, timed from the send to the 200; each followed by a `docker run -d -p
  127.0.0.1::8080` of the same image (label `shoal.bench=<id>`), timed from the call to
  its first 200, so both see the same machine load. Goal: shoal's p50 <= 1.5x docker's.
- reaction: from one replica, a step to `--rate` req/s (split over both nodes' proxies);
  timed from the step to ceil(rate / target) replicas (at most max) running and routable.
  Goal <= 10 s.
- lost: requests of the step load that got no 200 while scaling up, and of a light load
  (2 req/s) that goes on while the count comes back down to 1 (goal 0 each).

Loopback only; every load and wait is bounded (`--deadline`). Prints the load average.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.converge import LABEL, BenchError, Deadline, load_average, poll_steps
from node.dev.devcluster import DevCluster, free_port_on_all
from node.wire.client import ShoalClient
from tests.integration.load import Load

HOSTS = ["127.0.0.1", "127.0.0.2"]
IMAGE = "shoal-demo/web:1"


def spec(opts: argparse.Namespace, port: int) -> str:
    return f"""
name: auto
image: {IMAGE}
pull: never
replicas: 1
ports: [{{container: 8080, published: {port}, protocol: http}}]
autoscale:
  min: 0
  max: {opts.max}
  target: {{requests_per_replica: {opts.target}}}
  scale_up_cooldown: 3s
  scale_down_cooldown: 3s
"""


def first_ok(url: str, deadline: Deadline) -> float:
    """Seconds until `GET url` answers 200 (one request held by shoal, or polled)."""
    start = time.monotonic()
    for _ in poll_steps(deadline, 0.02):
        try:
            with urllib.request.urlopen(url, timeout=max(0.1, deadline.left())) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
    raise deadline.fail(url)


def docker_run(bench_id: str, deadline: Deadline) -> float:
    start = time.monotonic()
    cid = subprocess.run(
        ["docker", "run", "-d", "--rm", "-p", "127.0.0.1::8080", "--label", f"{LABEL}={bench_id}", IMAGE],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    try:
        port = subprocess.run(["docker", "port", cid, "8080"], capture_output=True, text=True, timeout=30)
        host_port = int(port.stdout.split(":")[-1])
        first_ok(f"http://127.0.0.1:{host_port}/", deadline)
        return time.monotonic() - start  # from the `docker run` call
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)


def wait_count(c: ShoalClient, n: int, deadline: Deadline) -> None:
    for _ in poll_steps(deadline, 0.1):
        svc = c.get_service("auto")
        if svc.replicas == n and svc.running == n and len(c.resolve("auto")) == n:
            return
    raise deadline.fail(f"{n} replica(s) running and routable")


def run(opts: argparse.Namespace) -> int:
    bench_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix=f"shoal-autoscale-{bench_id}-"))
    port = free_port_on_all(HOSTS)
    cluster = DevCluster.on_free_ports(tmp, len(HOSTS), name=f"shoal-autoscale-{bench_id}")
    print(f"load average {load_average():.2f}")
    cluster.start(timeout=60.0)
    try:
        shoal, plain = [], []
        with cluster.client() as c:
            c.apply(spec(opts, port), source="bench/autoscale.py")
            for i in range(opts.colds):
                wait_count(c, 0, Deadline(opts.deadline, f"cold {i}: scaled to zero"))
                host, sent = HOSTS[i % len(HOSTS)], time.time()
                shoal.append(
                    first_ok(f"http://{host}:{port}/", Deadline(opts.deadline, f"cold {i}: first answer"))
                )
                steps = [(e.time - sent, e.kind) for e in c.events(service="auto", since=sent)]
                print("  events after the request: " + ", ".join(f"{k} +{t:.2f}s" for t, k in steps))
                plain.append(docker_run(bench_id, Deadline(opts.deadline, f"cold {i}: docker run answering")))
                print(f"cold {i}: shoal via {host} {shoal[-1]:.2f}s, docker run {plain[-1]:.2f}s")
            wait_count(c, 1, Deadline(opts.deadline, "one replica after a cold start"))
            want = min(opts.max, math.ceil(opts.rate / opts.target))
            per = opts.rate / len(HOSTS)
            loads = [Load(f"http://{h}:{port}/", per, opts.deadline, int(per * opts.deadline)) for h in HOSTS]
            step = time.monotonic()
            for load in loads:
                load.__enter__()
            try:
                wait_count(c, want, Deadline(opts.deadline, f"{want} replicas under the step"))
                reaction = time.monotonic() - step
            finally:
                results = [r for load in loads for r in load.stop()]
            with Load(f"http://{HOSTS[1]}:{port}/", 2.0, opts.deadline, int(2 * opts.deadline)) as light:
                wait_count(c, 1, Deadline(opts.deadline, "back to one replica"))
            down = light.results
    except BenchError as exc:
        print(f"error: {exc}")
        return 1
    finally:
        cluster.stop()
    p50, p50_plain = statistics.median(shoal), statistics.median(plain)
    p99, p99_plain = max(shoal), max(plain)  # few samples: the highest stands for p99
    lost_up, lost_down = sum(not r.ok for r in results), sum(not r.ok for r in down)
    print(
        f"\ncold start p50 {p50:.2f}s, max {p99:.2f}s; docker run p50 {p50_plain:.2f}s, max {p99_plain:.2f}s"
    )
    print(f"cold start ratio p50 {p50 / p50_plain:.2f}x (goal <= 1.5x)")
    print(
        f"reaction to a step to {opts.rate:g} req/s: {want} replicas serving after {reaction:.1f}s (goal 10s)"
    )
    print(f"lost while scaling up: {lost_up}/{len(results)}, down: {lost_down}/{len(down)} (goal 0)")
    print(f"load average {load_average():.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--colds", type=int, default=5, help="cold starts measured (default 5)")
    p.add_argument("--rate", type=float, default=60.0, help="req/s of the step (default 60)")
    p.add_argument("--target", type=float, default=10.0, help="requests_per_replica (default 10)")
    p.add_argument("--max", type=int, default=4, help="autoscale max (default 4)")
    p.add_argument("--deadline", type=float, default=90.0, help="s allowed per wait (default 90)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
