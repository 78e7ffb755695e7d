"""Rolling update of N replicas under steady load: shoal next to Swarm.

    .venv/bin/python bench/rollout.py [--replicas 30] [--parallelism 5] [--monitor 2] [--runs 1]
                                      [--skip-swarm]

- shoal: a fresh 3-node `DevCluster` (local preset, free ports, a unique cluster name,
  data in a temp dir) runs N replicas of shoal-demo/web:1 with an http check on /health
  (0.5 s interval and timeout, 2 retries), published with protocol http, and
  `update: {parallelism: P, monitor: M, order: start-first, delay: 0s}`. Once all N run
  and are routable, a steady load (`--rate`, 50 req/s, one keep-alive connection) goes
  to node 1's published port; the clock starts at the `apply` of the same spec with
  shoal-demo/web:2 and stops when the service's rollout is `completed`.
- Swarm: `docker service create` of the same image, health command, update policy and an
  ingress-published port; once N tasks run (and are healthy) the clock starts at
  `docker service update --image shoal-demo/web:2 --detach` and stops when N running
  tasks run web:2 and `UpdateStatus.State` is `completed`. The routing mesh is tried once
  on 127.0.0.1; it does not answer there on our machines, and then no load is sent and
  its failed-request figure is "n/a", not made up. Swarm's check runs every 0.5 s as
  shoal's, but with a 3 s timeout (`--swarm-health-timeout`): its checks are `docker
  exec`s, 60 a second for 30 replicas, and on 2 cores they often exceed 0.5 s; Swarm
  then replaces the containers and never converges (the bench stops with that reason
  once N were replaced).

Failed requests are those that started between the apply and the end of the update and
got no 200. The load average is printed before each run; each run measures both
systems in turn. Every wait is bounded by `--deadline`; shoal's containers carry the
cluster label `shoal-rollout-<id>-<run>` (removed by `DevCluster.stop`), Swarm's the
label `shoal.bench=<id>`; the engine leaves a swarm it was put in. Exit status 1 when
an update does not complete, with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker

from bench.converge import (
    LABEL,
    BenchError,
    Deadline,
    answers,
    check_loopback,
    docker_cli,
    load_average,
    poll_steps,
    print_aligned,
    remove_labelled,
    swarm_mode,
)
from node.dev.devcluster import DevCluster, DevError, free_port, free_port_on_all, free_port_pair
from node.wire.client import ShoalClient, ShoalError
from tests.integration.load import Load, Result

IMAGES = ("shoal-demo/web:1", "shoal-demo/web:2")
GOAL = 0.5
NODES = 3
HOSTS = [f"127.0.0.{i}" for i in range(1, NODES + 1)]
SWARM_HEALTH = "wget -q -O- http://127.0.0.1:8080/health || exit 1"
MESH_NA = "n/a (mesh unreachable on loopback)"


@dataclass
class Run:
    seconds: float
    failed: int | None = None  # None: no load was sent
    total: int = 0
    notes: str = ""


@dataclass
class Row:
    system: str
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def requests(self) -> str:
        if not self.runs or any(r.failed is None for r in self.runs):
            return MESH_NA
        return f"{sum(r.failed or 0 for r in self.runs)}/{sum(r.total for r in self.runs)}"


def window(results: list[Result], t0: float, t1: float) -> tuple[int, int, dict[str, int]]:
    """Failed and total requests that started in [t0, t1]; answers by version word."""
    inside = [r for r in results if t0 <= r.start <= t1]
    versions: dict[str, int] = {}
    for r in inside:
        if r.ok:
            word = r.body.split()[1] if len(r.body.split()) > 1 else "?"
            versions[word] = versions.get(word, 0) + 1
    return sum(not r.ok for r in inside), len(inside), versions


def start_load(opts: argparse.Namespace, url: str) -> Load:
    limit = opts.deadline * 3
    load = Load(url, rate=opts.rate, max_seconds=limit, max_requests=int(opts.rate * limit) + 100)
    load.__enter__()
    warm = Deadline(10.0, f"load on {url}")
    for _ in poll_steps(warm, 0.05):
        if len(load.results) >= opts.rate / 2:
            return load
    load.stop()
    raise warm.fail(f"{len(load.results)} request(s) sent")


# -- shoal -------------------------------------------------------------------------------


def shoal_spec(opts: argparse.Namespace, image: str, port: int) -> str:
    return f"""
name: web
image: {image}
replicas: {opts.replicas}
ports:
  - {{container: 8080, published: {port}, protocol: http}}
health: {{http: {{port: 8080, path: /health}}, interval: 0.5s, timeout: 0.5s, retries: 2}}
update: {{parallelism: {opts.parallelism}, monitor: {opts.monitor:g}s, order: start-first, delay: 0s}}
"""


def shoal_once(opts: argparse.Namespace, bench_id: str, run: int) -> Run:
    tmp = Path(tempfile.mkdtemp(prefix=f"shoal-rollout-{bench_id}-{run}-"))
    ports: list[int] = []  # gRPC, metrics, the service's published port
    while len(ports) < 3:
        p = free_port_on_all(HOSTS)
        ports += [p] if all(abs(p - q) > 1 for q in ports) else []
    grpc_port, metrics_port, port = ports
    cluster = DevCluster(
        tmp,
        nodes=NODES,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        etcd_port=free_port_pair(),
        cluster=f"shoal-rollout-{bench_id}-{run}",
    )
    ok = False
    load: Load | None = None
    try:
        try:
            cluster.start(timeout=60.0)
        except DevError as exc:
            raise BenchError(f"shoal: the dev cluster did not start: {exc}") from exc
        n = opts.replicas
        url = f"http://{HOSTS[0]}:{port}/"
        check_loopback(HOSTS[0])
        with cluster.client() as c:
            c.apply(shoal_spec(opts, IMAGES[0], port), source="bench/rollout.py")
            ready = Deadline(opts.deadline, f"shoal run {run}: {n} replicas of v1 running and routable")
            last = ""
            for _ in poll_steps(ready, opts.interval * 2):
                try:
                    up = sum(t.state == "running" for t in c.list_tasks("web"))
                    routable = len(c.resolve("web"))
                except ShoalError as exc:
                    last = str(exc)
                    continue
                last = f"{up} running, {routable} routable"
                if up == n and routable == n and answers((HOSTS[0], port)):
                    break
            else:
                raise ready.fail(last)
            load = start_load(opts, url)
            wall0, t0 = time.time(), time.monotonic()
            v2 = c.apply(shoal_spec(opts, IMAGES[1], port), source="bench/rollout.py").version
            deadline = Deadline(opts.deadline, f"shoal run {run}: rollout to version {v2}")
            for _ in poll_steps(deadline, opts.interval):
                try:
                    r = c.get_service("web").rollout
                except ShoalError as exc:
                    last = str(exc)
                    continue
                if r.to_version != v2:
                    last = f"rollout of version {r.to_version} ({r.state})"
                    continue
                last = f"{r.state}, {r.updated}/{r.total} updated: {r.message}"
                if r.state == "completed":
                    break
                if r.state in ("failed", "rolled_back", "paused"):
                    raise BenchError(f"shoal run {run}: the rollout ended {last}")
            else:
                raise deadline.fail(last)
            t1 = time.monotonic()
            results = load.stop()
            failed, total, versions = window(results, t0, t1)
            tasks = c.list_tasks("web")
            on_v2 = [t for t in tasks if t.version == v2 and t.state == "running"]
            healthy = max((t.healthy_since for t in on_v2), default=wall0) - wall0
            notes = (
                f"leader started it {r.started_at - wall0:.2f} s after apply; {len(on_v2)}/{len(tasks)} "
                f"tasks run v2, the last turned healthy at {healthy:.2f} s; answers {versions}; "
                f"failed outside the window: {len(load.failed()) - failed}; {placements(c, wall0)}"
            )
            if failed:
                first = next(x for x in results if not x.ok and t0 <= x.start <= t1)
                notes += f"; first failure at {first.start - t0:.2f} s: {first.body[:120]}"
        ok = True
        return Run(t1 - t0, failed, total, notes)
    finally:
        if load is not None:
            load.stop()
        cluster.stop()
        if ok and not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  shoal run {run}: data and daemon logs kept in {tmp}", file=sys.stderr)


def placements(c: ShoalClient, wall0: float) -> str:
    """When the leader placed new tasks (one batch per pass), from the cluster's events."""
    try:
        events = c.events(service="web", limit=2000)
        times = sorted(e.time - wall0 for e in events if e.kind == "task.placed" and e.time >= wall0)
    except ShoalError as exc:
        return f"no events: {exc}"
    batches = [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.2]
    return "new tasks placed at " + " ".join(f"{t:.2f}" for t in batches) + " s"


# -- Swarm -------------------------------------------------------------------------------


def swarm_tasks(client: docker.DockerClient, name: str) -> list[dict[str, Any]]:
    return list(client.api.tasks(filters={"service": name, "desired-state": "running"}))


def shown(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def swarm_churn(client: docker.DockerClient, label: str, n: int, what: str, interval: float) -> None:
    """Fail once Swarm has killed N containers for failing their health check (no convergence)."""
    bad = client.api.containers(all=True, filters={"label": label, "health": "unhealthy"})
    if len(bad) < n:
        return
    log = (client.api.inspect_container(bad[0]["Id"])["State"].get("Health") or {}).get("Log") or [{}]
    raise BenchError(
        f"{what}: Swarm marked {len(bad)} containers unhealthy and replaced them (last check: "
        f"{str(log[-1].get('Output', '')).strip()[:80]!r}); its exec health checks, every "
        f"{shown(interval)} on {n} replicas, overload this machine (load average {load_average():.1f}): "
        "raise --swarm-health-interval and --swarm-health-timeout"
    )


def swarm_once(opts: argparse.Namespace, client: docker.DockerClient, bench_id: str, run: int) -> Run:
    n, name = opts.replicas, f"shoal-bench-rollout-{bench_id}-{run}"
    mark, own = f"{LABEL}={bench_id}", f"{LABEL}.service={name}"
    port = free_port("127.0.0.1")
    args = ["service", "create", "--name", name, "--replicas", str(n), "--detach", "--no-resolve-image"]
    args += ["--label", mark, "--container-label", mark, "--container-label", own]
    args += ["--publish", f"published={port},target=8080"]
    args += ["--health-cmd", SWARM_HEALTH, "--health-interval", shown(opts.swarm_health_interval)]
    args += ["--health-timeout", shown(opts.swarm_health_timeout)]
    args += ["--health-retries", "2", "--update-parallelism", str(opts.parallelism), "--update-delay", "0s"]
    args += ["--update-monitor", f"{opts.monitor:g}s", "--update-order", "start-first"]
    load: Load | None = None
    docker_cli(*args, IMAGES[0])
    try:
        ready = Deadline(opts.deadline, f"swarm run {run}: {n} tasks of v1 running and healthy")
        last = ""
        for _ in poll_steps(ready, opts.interval * 2):
            running = sum(t["Status"]["State"] == "running" for t in swarm_tasks(client, name))
            healthy = len(client.api.containers(filters={"label": own, "health": "healthy"}))
            swarm_churn(client, own, n, ready.what, opts.swarm_health_interval)
            last = f"{running} running, {healthy} healthy"
            if running >= n and healthy >= n:
                break
        else:
            raise ready.fail(last)
        url = f"http://127.0.0.1:{port}/"
        mesh = answers(("127.0.0.1", port))
        print(f"  swarm: routing mesh on {url}: {'answers' if mesh else 'no answer'}", flush=True)
        if mesh:
            load = start_load(opts, url)
        t0 = time.monotonic()
        docker_cli("service", "update", "--image", IMAGES[1], "--detach", "--no-resolve-image", name)
        deadline = Deadline(opts.deadline, f"swarm run {run}: update to {IMAGES[1]}")
        for _ in poll_steps(deadline, opts.interval):
            state = (client.api.inspect_service(name).get("UpdateStatus") or {}).get("State", "")
            tasks = swarm_tasks(client, name)
            on_v2 = sum(
                t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] == IMAGES[1]
                for t in tasks
            )
            last = f"update {state or '-'}, {on_v2}/{n} running v2"
            swarm_churn(client, own, n, deadline.what, opts.swarm_health_interval)
            if state == "completed" and on_v2 >= n:
                break
            if state in ("paused", "rollback_started", "rollback_completed", "rollback_paused"):
                raise BenchError(f"swarm run {run}: the update ended {last}")
        else:
            raise deadline.fail(last)
        t1 = time.monotonic()
        if load is None:
            return Run(t1 - t0, notes="no load sent")
        failed, total, versions = window(load.stop(), t0, t1)
        return Run(t1 - t0, failed, total, f"answers {versions}")
    finally:
        if load is not None:
            load.stop()
        with contextlib.suppress(BenchError):
            docker_cli("service", "rm", name)
        gone = remove_labelled(client, own, Deadline(90.0, f"removing {name}"), 30.0)
        print(f"  swarm: {name} removed, its containers gone after {gone:.2f} s", flush=True)


# -- main --------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = ("system", "runs", "update s (median)", "each run s", "failed/total requests", "/ swarm")
    swarm = rows[-1].median if rows[-1].runs else None
    lines = [
        (
            r.system,
            str(len(r.runs)),
            f"{r.median:.2f}",
            " ".join(f"{x.seconds:.2f}" for x in r.runs),
            r.requests(),
            f"{r.median / swarm:.2f}" if swarm else "-",
        )
        for r in rows
        if r.runs
    ]
    print_aligned(header, lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--replicas", type=int, default=30, help="replicas updated (default 30)")
    p.add_argument("--parallelism", type=int, default=5, help="update parallelism (default 5)")
    p.add_argument("--monitor", type=float, default=2.0, help="update monitor window in s (default 2)")
    p.add_argument("--runs", type=int, default=1, help="runs of each system (default 1)")
    p.add_argument("--skip-swarm", action="store_true", help="measure shoal only")
    p.add_argument("--swarm-health-interval", type=float, default=0.5, help="s (default 0.5, as shoal's)")
    p.add_argument("--swarm-health-timeout", type=float, default=3.0, help="s (default 3; shoal's: 0.5)")
    p.add_argument("--rate", type=float, default=50.0, help="requests/s of the load (default 50)")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds allowed per wait (default 300)")
    p.add_argument("--interval", type=float, default=0.1, help="poll interval in s (default 0.1)")
    p.add_argument("--keep", action="store_true", help="keep shoal's data dirs and daemon logs")
    opts = p.parse_args(argv)
    bounds = {"replicas": (1, 200), "parallelism": (1, opts.replicas), "monitor": (0, 60), "runs": (1, 20)}
    bounds |= {"swarm_health_interval": (0.1, 60), "swarm_health_timeout": (0.1, 60), "rate": (1, 500)}
    for name, (low, high) in (bounds | {"deadline": (10, 3600), "interval": (0.01, 1)}).items():
        if not low <= getattr(opts, name) <= high:
            p.error(f"--{name.replace('_', '-')} must be between {low} and {high}")
    return opts


def measure(opts: argparse.Namespace, bench_id: str, rows: dict[str, Row]) -> None:
    client = docker.from_env(timeout=60)
    try:
        for image in IMAGES:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound as exc:
                raise BenchError(f"image {image} is missing: run deploy/images/build.sh") from exc
        for run in range(1, opts.runs + 1):
            print(f"run {run}: load average {load_average():.2f} ({os.cpu_count()} cores)", flush=True)
            r = shoal_once(opts, bench_id, run)
            rows["shoal"].runs.append(r)
            print(f"  shoal: {r.seconds:.2f} s, {r.failed}/{r.total} failed ({r.notes})", flush=True)
            if not opts.skip_swarm:
                print(f"run {run}: load average {load_average():.2f} before Swarm", flush=True)
                with swarm_mode():
                    r = swarm_once(opts, client, bench_id, run)
                rows["swarm"].runs.append(r)
                failed = MESH_NA if r.failed is None else f"{r.failed}/{r.total} failed"
                print(f"  swarm: {r.seconds:.2f} s, {failed} ({r.notes})", flush=True)
    finally:
        remove_labelled(client, f"{LABEL}={bench_id}", Deadline(60.0, "final cleanup"))
        client.close()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    bench_id = uuid.uuid4().hex[:8]
    rows = {"shoal": Row("shoal"), "swarm": Row("swarm")}
    print(
        f"rollout bench {bench_id}: {opts.replicas} replicas {IMAGES[0]} -> {IMAGES[1]}, parallelism "
        f"{opts.parallelism}, monitor {opts.monitor:g} s, start-first, load {opts.rate:g} req/s, "
        f"{opts.runs} run(s)",
        flush=True,
    )
    failure = None
    started = time.monotonic()
    try:
        measure(opts, bench_id, rows)
    except BenchError as exc:
        failure = str(exc)
    except (ShoalError, docker.errors.DockerException) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    print()
    print_table(list(rows.values()))
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    if failure:
        print(f"\nrollout: FAILED: {failure}", file=sys.stderr)
        return 1
    shoal, swarm = rows["shoal"].median, (rows["swarm"].median if rows["swarm"].runs else 0.0)
    versus = (
        f"swarm {swarm:.2f} s, ratio shoal/swarm {shoal / swarm:.2f} (goal <= {GOAL})"
        if swarm
        else "no swarm"
    )
    print(f"rollout of {opts.replicas}: shoal {shoal:.2f} s, {versus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
