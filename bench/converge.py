"""Time to converge: `apply` of N replicas until all N run and answer, shoal next to Swarm.

    .venv/bin/python bench/converge.py --runs 3 [--replicas 30] [--skip-swarm]

What is measured, on this machine, `--runs` times each, median reported:

- shoal: a fresh 3-node `DevCluster` (embedded etcd, daemons on 127.0.0.1-3, a unique
  cluster name, data in a temp dir). Once it is ready the clock starts, `apply` sends a
  spec of N replicas of shoal-demo/web:1 (port 8080), and the clock stops when `resolve`
  lists N distinct endpoints and every one answers `GET /` with 200 ("answering").
- Swarm: `docker service create --replicas N --detach --no-resolve-image` of the same
  image; the clock stops when N tasks are in state running ("running"). Swarm's routing
  mesh does not answer on 127.0.0.1 here, so that is the headline Swarm figure, and it is
  the weaker one (a running container may not answer yet). For a like-for-like check
  the same is also run with `--publish mode=host,target=8080` (a host port per task,
  no mesh), timed both to "running" and to "answering" on 127.0.0.1.
- docker run: the physical floor, N containers of the image created and started with
  the Docker SDK publishing 127.0.0.1::8080, one after the other, then from
  `--plain-threads` threads (12 by default, as many Docker calls as shoal's 3 agents
  make at once); timed to "started" (create+start returned) and to "answering".

Each run measures every system in turn, so that load from other work on the machine
falls on all of them alike; the load average before each run is printed.

Swarm mode: an engine not in a swarm is put in one (`swarm init --advertise-addr
127.0.0.1`) for the Swarm part of each run and always taken out again (`swarm leave
--force`); an engine that already is in a swarm is used as it is and left in it.

Everything this bench makes carries its id: shoal containers the cluster label
`shoal-bench-<id>-<run>`, Swarm services and all other containers the label
`shoal.bench=<id>`; only those are removed. Every wait is bounded by `--deadline`
seconds per run. Exit status 1 when something does not converge, with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker

from node.dev.devcluster import DevCluster, DevError, free_port_on_all, free_port_pair
from node.wire.client import ShoalClient, ShoalError

IMAGE = "shoal-demo/web:1"
CONTAINER_PORT = 8080
BODY_MARK = b"web v1"  # what `GET /` of shoal-demo/web:1 says
LABEL = "shoal.bench"
GOAL = 0.5
NODES = 3

Endpoint = tuple[str, int]  # (address, host port)


class BenchError(Exception):
    """A system did not converge (or could not be set up); the message says why."""


# -- small helpers -----------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def fail(self, detail: str) -> BenchError:
        return BenchError(f"{self.what}: not done within {self.seconds:g}s ({detail})")


def poll_steps(deadline: Deadline, interval: float) -> Iterator[int]:
    """Yield 0, 1, 2, ... every `interval` s until the deadline; bounded in count too."""
    limit = int(deadline.seconds / interval) + 10
    for step in range(limit):
        yield step
        if deadline.expired():
            return
        time.sleep(min(interval, max(0.0, deadline.left())))


def check_loopback(address: str) -> None:
    if ipaddress.ip_address(address) not in ipaddress.ip_network("127.0.0.0/8"):
        raise BenchError(f"refusing to send HTTP to {address}: the bench only talks to 127.0.0.0/8")


def answers(endpoint: Endpoint) -> bool:
    """True when `GET /` answers 200 with the demo page within 1 s."""
    address, port = endpoint
    check_loopback(address)
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=1.0) as resp:
            return bool(resp.status == 200 and BODY_MARK in resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False


@dataclass
class Answering:
    """Progress of one wait for N answering endpoints (monotonic times)."""

    first_listed: float | None = None  # some endpoint listed
    all_listed: float | None = None  # N endpoints listed
    all_answering: float | None = None
    listed: int = 0
    answered: int = 0


def wait_answering(
    list_endpoints: Callable[[], list[Endpoint]],
    n: int,
    deadline: Deadline,
    interval: float,
    pool: ThreadPoolExecutor,
) -> Answering:
    """Poll `list_endpoints` and GET every new one until N distinct endpoints answer."""
    progress = Answering()
    ok: set[Endpoint] = set()
    last_error = ""
    for _ in poll_steps(deadline, interval):
        try:
            listed = set(list_endpoints())
        except (ShoalError, docker.errors.DockerException) as exc:
            last_error = f"; last listing error: {exc}"
            continue
        now = time.monotonic()
        if listed and progress.first_listed is None:
            progress.first_listed = now
        if len(listed) >= n and progress.all_listed is None:
            progress.all_listed = now
        todo = sorted(listed - ok)
        for endpoint, good in zip(todo, pool.map(answers, todo), strict=True):
            if good:
                ok.add(endpoint)
        progress.listed, progress.answered = len(listed), len(listed & ok)
        if progress.answered >= n:
            progress.all_answering = time.monotonic()
            return progress
    raise deadline.fail(f"{progress.listed} endpoint(s) listed, {progress.answered} answering{last_error}")


@dataclass
class Run:
    seconds: float
    notes: str = ""


@dataclass
class Row:
    system: str
    measure: str
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)


# -- shoal ---------------------------------------------------------------------------------


def shoal_spec(replicas: int) -> str:
    return json.dumps(
        {"name": "web", "image": IMAGE, "replicas": replicas, "ports": [{"container": CONTAINER_PORT}]}
    )


def shoal_once(opts: argparse.Namespace, bench_id: str, run: int, pool: ThreadPoolExecutor) -> Run:
    tmp = Path(tempfile.mkdtemp(prefix=f"shoal-bench-{bench_id}-{run}-"))
    hosts = [f"127.0.0.{i}" for i in range(1, NODES + 1)]
    cluster = DevCluster(
        tmp,
        nodes=NODES,
        grpc_port=free_port_on_all(hosts),
        etcd_port=free_port_pair(),
        cluster=f"shoal-bench-{bench_id}-{run}",
    )
    ok = False
    try:
        try:
            cluster.start(timeout=60.0)
        except DevError as exc:
            raise BenchError(f"shoal: the dev cluster did not start: {exc}") from exc
        with cluster.client() as client:
            deadline = Deadline(opts.deadline, f"shoal run {run}: {opts.replicas} replicas answering")

            def endpoints() -> list[Endpoint]:
                found = [(e.address, int(e.port)) for e in client.resolve("web")]
                for address, _ in found:
                    check_loopback(address)
                return found

            wall0, t0 = time.time(), time.monotonic()
            try:
                client.apply(shoal_spec(opts.replicas), source="bench/converge.py")
            except ShoalError as exc:
                raise BenchError(f"shoal: apply failed: {exc}") from exc
            progress = wait_answering(endpoints, opts.replicas, deadline, opts.interval, pool)
            assert progress.all_answering is not None
            seconds = progress.all_answering - t0
            notes = shoal_breakdown(client, wall0, t0, progress)
        ok = True
        return Run(seconds, notes)
    finally:
        cluster.stop()
        if ok and not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  shoal run {run}: data and daemon logs kept in {tmp}", file=sys.stderr)


def shoal_breakdown(client: ShoalClient, wall0: float, t0: float, progress: Answering) -> str:
    """Where the time went, from the cluster's events (seconds after apply)."""
    try:
        events = list(client.events(service="web", limit=1000))
    except ShoalError as exc:
        return f"(no events: {exc})"
    placed = [e.time - wall0 for e in events if e.kind == "task.placed"]
    started: dict[str, list[float]] = {}
    for e in events:
        if e.kind == "task.started":
            started.setdefault(e.node, []).append(e.time - wall0)
    parts = []
    if placed:
        parts.append(f"placed {min(placed):.2f}-{max(placed):.2f}")
    if started:
        every = [t for ts in started.values() for t in ts]
        parts.append(f"started {min(every):.2f}-{max(every):.2f}")
        per_node = " ".join(f"{n}:{len(ts)}@{max(ts):.2f}" for n, ts in sorted(started.items()))
        parts.append(f"[{per_node}]")
    if progress.first_listed is not None and progress.all_listed is not None:
        parts.append(f"resolve 1st {progress.first_listed - t0:.2f} all {progress.all_listed - t0:.2f}")
    return ", ".join(parts)


# -- Docker and Swarm ----------------------------------------------------------------------


def docker_cli(*args: str, timeout: float = 60.0) -> str:
    try:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"docker {' '.join(args)}: no answer within {timeout:g}s") from exc
    except FileNotFoundError as exc:
        raise BenchError("the docker CLI is not installed (apt-get install docker.io)") from exc
    if done.returncode != 0:
        raise BenchError(f"docker {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def swarm_mode() -> Iterator[None]:
    """Swarm mode for the duration: init (and always leave) unless already in a swarm."""
    state = docker_cli("info", "--format", "{{.Swarm.LocalNodeState}}")
    if state == "active":
        if docker_cli("info", "--format", "{{.Swarm.ControlAvailable}}") != "true":
            raise BenchError("this engine is in a swarm but is not a manager: cannot create services")
        print("  swarm: the engine already is in a swarm; using it and leaving it in place")
        yield
        return
    if state != "inactive":
        raise BenchError(f"the engine's swarm state is {state!r}; expected inactive or active")
    try:
        docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1")
        yield
    finally:
        docker_cli("swarm", "leave", "--force")


def remove_labelled(client: docker.DockerClient, label: str, deadline: Deadline, grace: float = 0.0) -> float:
    """Wait until no container has `label` (key=value); return how long that took.

    Containers still there after `grace` seconds are force-removed.
    """
    t0 = time.monotonic()
    for _ in poll_steps(deadline, 0.1):
        found = client.api.containers(all=True, filters={"label": label})
        if not found:
            return time.monotonic() - t0
        if time.monotonic() - t0 < grace:
            continue
        for summary in found:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_container(summary["Id"], force=True)
    raise deadline.fail(f"containers labelled {label} are still there")


def host_ports(client: docker.DockerClient, label: str) -> list[Endpoint]:
    """(127.0.0.1, host port of 8080) of every running container with `label`."""
    out = []
    for summary in client.api.containers(filters={"label": label, "status": "running"}):
        for p in summary.get("Ports") or []:
            if p.get("PrivatePort") == CONTAINER_PORT and p.get("PublicPort") and p.get("Type") == "tcp":
                out.append(("127.0.0.1", int(p["PublicPort"])))
                break
    return out


def swarm_once(
    opts: argparse.Namespace,
    client: docker.DockerClient,
    bench_id: str,
    run: int,
    publish: bool,
    pool: ThreadPoolExecutor,
) -> tuple[Run, Run | None]:
    """One `service create`; the time to N running (and, with `publish`, N answering)."""
    name = f"shoal-bench-web-{bench_id}-{run}{'-hp' if publish else ''}"
    mark = f"{LABEL}={bench_id}"
    args = ["service", "create", "--name", name, "--replicas", str(opts.replicas), "--detach"]
    args += ["--no-resolve-image", "--label", mark, "--container-label", mark]
    args += ["--container-label", f"{LABEL}.service={name}"]
    if publish:
        args += ["--publish", f"mode=host,target={CONTAINER_PORT}"]
    deadline = Deadline(opts.deadline, f"swarm run {run}{' (host publish)' if publish else ''}")
    t0 = time.monotonic()
    docker_cli(*args, IMAGE)
    try:
        created = time.monotonic() - t0
        running, last = None, ""
        for _ in poll_steps(deadline, opts.interval):
            tasks = client.api.tasks(filters={"service": name, "desired-state": "running"})
            states = [t.get("Status", {}).get("State", "") for t in tasks]
            up = states.count("running")
            errors = {t["Status"]["Err"] for t in tasks if t.get("Status", {}).get("Err")}
            last = f"{up}/{opts.replicas} running" + (
                f"; task errors: {sorted(errors)[:2]}" if errors else ""
            )
            if up >= opts.replicas:
                running = time.monotonic() - t0
                break
        if running is None:
            raise deadline.fail(last)
        notes = f"service create returned {created:.2f}"
        answering = None
        if publish:
            label = f"{LABEL}.service={name}"
            progress = wait_answering(
                lambda: host_ports(client, label), opts.replicas, deadline, opts.interval, pool
            )
            assert progress.all_answering is not None
            answering = Run(progress.all_answering - t0)
        return Run(running, notes), answering
    finally:
        with contextlib.suppress(BenchError):
            docker_cli("service", "rm", name)
        gone = remove_labelled(client, f"{LABEL}.service={name}", Deadline(90.0, f"removing {name}"), 30.0)
        print(f"  swarm: {name} removed, its containers gone after {gone:.2f} s", flush=True)


def plain_once(
    opts: argparse.Namespace,
    client: docker.DockerClient,
    bench_id: str,
    run: int,
    threads: int,
    pool: ThreadPoolExecutor,
) -> tuple[Run, Run]:
    """Create and start N containers with the SDK; times to all started and all answering."""
    tag = f"plain-{bench_id}-{run}-t{threads}"
    label = f"{LABEL}.run={tag}"
    deadline = Deadline(opts.deadline, f"docker run x{opts.replicas} ({threads} thread(s)), run {run}")

    def start(i: int) -> None:
        if deadline.expired():
            raise deadline.fail(f"container {i} not started")
        client.containers.run(
            IMAGE,
            detach=True,
            name=f"shoal-bench-{tag}-{i}",
            labels={LABEL: bench_id, f"{LABEL}.run": tag},
            ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", None)},
        )

    try:
        t0 = time.monotonic()
        if threads <= 1:
            for i in range(opts.replicas):
                start(i)
        else:
            with ThreadPoolExecutor(threads) as starters:
                list(starters.map(start, range(opts.replicas)))
        started = time.monotonic() - t0
        progress = wait_answering(
            lambda: host_ports(client, label), opts.replicas, deadline, opts.interval, pool
        )
        assert progress.all_answering is not None
        return Run(started), Run(progress.all_answering - t0)
    finally:
        remove_labelled(client, label, Deadline(60.0, f"removing the containers of {tag}"))


# -- main ----------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = ("system", "measure", "runs", "median s", "each run s")
    lines = [
        (
            r.system,
            r.measure,
            str(len(r.runs)),
            f"{r.median:.2f}",
            " ".join(f"{x.seconds:.2f}" for x in r.runs),
        )
        for r in rows
        if r.runs
    ]
    print_aligned(header, lines)


def print_aligned(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> None:
    """A left-aligned text table; "no run completed" when there are no lines."""
    if not lines:
        print("no run completed")
        return
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    for line in (header, *lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--replicas", type=int, default=30, help="replicas to converge (default 30)")
    p.add_argument("--runs", type=int, default=3, help="runs of each system (default 3)")
    p.add_argument("--skip-swarm", action="store_true", help="measure shoal and docker run only")
    p.add_argument("--skip-plain", action="store_true", help="skip the docker run floor")
    p.add_argument(
        "--plain-threads",
        type=int,
        default=12,
        help="threads of the parallel docker run floor (default 12: shoal's 3 agents x 4 Docker workers)",
    )
    p.add_argument("--deadline", type=float, default=120.0, help="seconds allowed per run (default 120)")
    p.add_argument("--interval", type=float, default=0.05, help="poll interval in s (default 0.05)")
    p.add_argument("--keep", action="store_true", help="keep shoal's data dirs and daemon logs")
    opts = p.parse_args(argv)
    if not 1 <= opts.replicas <= 200:
        p.error("--replicas must be between 1 and 200")
    if not 1 <= opts.runs <= 20:
        p.error("--runs must be between 1 and 20")
    if not 2 <= opts.plain_threads <= 64:
        p.error("--plain-threads must be between 2 and 64")
    if not 0.005 <= opts.interval <= 1.0:
        p.error("--interval must be between 0.005 and 1")
    return opts


def load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def measure(opts: argparse.Namespace, bench_id: str, rows: dict[str, Row]) -> None:
    """Run the systems in turn within each run, so that load from elsewhere hits all alike."""
    n = opts.replicas
    with ThreadPoolExecutor(16, thread_name_prefix="bench-http") as pool:
        client = docker.from_env(timeout=60)
        try:
            client.images.get(IMAGE)
        except docker.errors.ImageNotFound as exc:
            raise BenchError(f"image {IMAGE} is missing: run deploy/images/build.sh") from exc
        try:
            for run in range(1, opts.runs + 1):
                print(f"run {run}: load average {load_average():.2f} ({os.cpu_count()} cores)", flush=True)
                r = shoal_once(opts, bench_id, run, pool)
                rows["shoal"].runs.append(r)
                print(f"  shoal: {r.seconds:.2f} s to {n} answering ({r.notes})", flush=True)
                if not opts.skip_swarm:
                    with swarm_mode():
                        r, _ = swarm_once(opts, client, bench_id, run, False, pool)
                        rows["swarm"].runs.append(r)
                        print(f"  swarm: {r.seconds:.2f} s to {n} running ({r.notes})", flush=True)
                        r, a = swarm_once(opts, client, bench_id, run, True, pool)
                        assert a is not None
                        rows["swarm-hp"].runs.append(r)
                        rows["swarm-hp-ans"].runs.append(a)
                        print(
                            f"  swarm, host-mode ports: {r.seconds:.2f} s running, "
                            f"{a.seconds:.2f} s answering ({r.notes})",
                            flush=True,
                        )
                if not opts.skip_plain:
                    for threads, key in ((1, "plain"), (opts.plain_threads, "plainN")):
                        s, a = plain_once(opts, client, bench_id, run, threads, pool)
                        rows[key].runs.append(s)
                        rows[f"{key}-ans"].runs.append(a)
                        print(
                            f"  docker run x{n}, {threads} thread(s): "
                            f"{s.seconds:.2f} s started, {a.seconds:.2f} s answering",
                            flush=True,
                        )
        finally:
            remove_labelled(client, f"{LABEL}={bench_id}", Deadline(60.0, "final cleanup"))
            client.close()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    bench_id = uuid.uuid4().hex[:8]
    n = opts.replicas
    rows = {
        "shoal": Row("shoal", "answering"),
        "swarm": Row("swarm", "running"),
        "swarm-hp": Row("swarm host-publish", "running"),
        "swarm-hp-ans": Row("swarm host-publish", "answering"),
        "plain": Row("docker run, sequential", "started"),
        "plain-ans": Row("docker run, sequential", "answering"),
        "plainN": Row(f"docker run, {opts.plain_threads} threads", "started"),
        "plainN-ans": Row(f"docker run, {opts.plain_threads} threads", "answering"),
    }
    print(f"converge bench {bench_id}: {n} replicas of {IMAGE}, {opts.runs} run(s) each", flush=True)
    failure = None
    try:
        measure(opts, bench_id, rows)
    except BenchError as exc:
        failure = str(exc)
    except docker.errors.DockerException as exc:
        failure = f"Docker: {exc}"
    print()
    print_table(list(rows.values()))
    if failure:
        print(f"\nconverge: FAILED: {failure}", file=sys.stderr)
        return 1
    shoal = rows["shoal"].median
    if opts.skip_swarm:
        print(f"converge {n} replicas: shoal {shoal:.2f} s (swarm skipped)")
        return 0
    swarm = rows["swarm"].median
    print(
        f"converge {n} replicas: shoal {shoal:.2f} s, swarm {swarm:.2f} s, "
        f"ratio shoal/swarm {shoal / swarm:.2f} (goal <= {GOAL})"
    )
    print(
        "  shoal is timed to all answering HTTP, swarm to all tasks running (its routing mesh does "
        "not answer on 127.0.0.1 here);"
    )
    hp = rows["swarm-hp-ans"].median
    print(f"  like for like, swarm with host-mode ports to all answering: {hp:.2f} s, ratio {shoal / hp:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
