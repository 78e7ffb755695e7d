"""Failover time: `kill -9` of a worker until its replica runs elsewhere, next to Swarm and Nomad.

    .venv/bin/python bench/failover.py [--runs 5] [--keep]

One real 3-node `DevCluster` (embedded etcd on free ports, daemons on 127.0.0.1-3,
`local` preset, a unique cluster name) runs a 3-replica service of shoal-demo/web:1,
one replica per node. Each run:

1. picks a worker (a node that does not lead and holds one replica; the workers take
   turns) and opens a `WatchMembers` stream on each other node (their gossip views);
2. `kill -9`s the worker's daemon (its container keeps running) at t0;
3. times, from t0:
   - dead in all views: every surviving node's stream has reported the worker DEAD;
   - replacement running: the worker's slot is `running` on another node (`ListTasks`
     polled every `--interval`);
   - replacement answering: that replica's endpoint answers `GET /` with the demo page;
4. restarts the daemon and waits until the cluster is back to exactly 3 replicas: 3
   running tasks, 3 endpoints, exactly 3 running containers of this cluster in Docker
   (the killed node's stale copy stopped; kept exited, as history), every node alive
   and ready in every view. If the replicas are no longer one per node, the service is
   scaled to 0 and back to 3, so that every run starts from the same placement.

The medians and maxima are printed next to the defaults of Docker Swarm (a node is
declared down after ~15 s and its tasks rescheduled then) and HashiCorp Nomad (a node
missing heartbeats is lost after ~20 s with the default heartbeat grace), as ratios.
Goal: replacement running <= 10 s in every run (exit status 1 otherwise, or when
anything does not converge within `--deadline`).

For context it prints gossip's theoretical worst-case detection time
(`node.gossip.config.detection_bound`) for the `local` preset used here and for the
`lan` preset of real deployments, and the grace the leader waits before moving tasks.
Only 127.0.0.0/8 is contacted. Everything this bench starts is stopped, and its
containers (cluster label `shoal-fo-<id>`) removed, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker

from node.dev.devcluster import DevCluster, DevError, NodeProcess, free_port_on_all, free_port_pair
from node.gossip.config import PRESETS as GOSSIP
from node.gossip.config import detection_bound
from node.model.config import PRESETS as TIMINGS
from node.runtime.base import LABELS
from node.wire.client import ShoalClient, ShoalError

NODES = 3
REPLICAS = 3
PRESET = "local"
SPEC = f"""
name: web
image: shoal-demo/web:1
replicas: {REPLICAS}
ports:
  - {{container: 8080, protocol: http}}
"""
BODY_MARK = b"web v1"
PEERS = {"Swarm": 15.0, "Nomad": 20.0}  # s, default time to reschedule a lost node's tasks
GOAL = 10.0  # s, replacement running, every run


class BenchError(Exception):
    """Something did not converge (or could not be set up); the message says what."""


# -- small helpers -----------------------------------------------------------------------


def wait(check: Callable[[], bool], seconds: float, what: str, interval: float = 0.05) -> float:
    """Poll `check` until true; return the monotonic time it was; BenchError at the deadline."""
    end = time.monotonic() + seconds
    last = ""
    while True:
        try:
            if check():
                return time.monotonic()
        except (ShoalError, docker.errors.DockerException) as exc:
            last = f"; last error: {exc}"
        if time.monotonic() >= end:
            raise BenchError(f"{what}: not within {seconds:g}s{last}")
        time.sleep(interval)


def answers(address: str, port: int) -> bool:
    if ipaddress.ip_address(address) not in ipaddress.ip_network("127.0.0.0/8"):
        raise BenchError(f"refusing to send HTTP to {address}: the bench only talks to 127.0.0.0/8")
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=1.0) as resp:
            return bool(resp.status == 200 and BODY_MARK in resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- looking at the cluster ----------------------------------------------------------------


class Cluster:
    """The bench's view of one DevCluster: clients per node, Docker, convergence."""

    def __init__(self, dev: DevCluster) -> None:
        self.dev = dev
        self.engine = docker.from_env()

    def close(self) -> None:
        self.engine.close()

    def client(self, member: NodeProcess) -> ShoalClient:
        return ShoalClient(member.addr, timeout=3.0, context_file=member.context_file)

    def containers(self) -> set[str]:
        """Ids of the running containers of this cluster (exited ones are kept as history,
        `task_history_limit`: the killed node's stale copy stays, stopped)."""
        found = self.engine.containers.list(filters={"label": f"{LABELS.CLUSTER}={self.dev.cluster}"})
        return {c.id for c in found}

    def running(self, member: NodeProcess) -> dict[int, tuple[str, str]]:
        """slot -> (node, container id) of the running tasks, as `member` reports them."""
        with self.client(member) as c:
            return {t.slot: (t.node, t.container_id) for t in c.list_tasks("web") if t.state == "running"}

    def leader(self) -> NodeProcess:
        for member in self.dev.members:
            if not member.alive():
                continue
            with self.client(member) as c:
                node = next((n.id for n in c.list_nodes().nodes if n.leader), None)
            if node:
                return next(m for m in self.dev.members if m.node_id == node)
        raise BenchError("no node reports a leader")

    def exactly(self, n: int = REPLICAS) -> bool:
        """n running tasks, n endpoints, Docker holds exactly their containers, all nodes alive."""
        member = self.dev.members[0]
        with self.client(member) as c:
            tasks = c.list_tasks("web")
            endpoints = c.resolve("web")
        ids = {t.container_id for t in tasks if t.state == "running"}
        if not (len(tasks) == n and len(ids) == n and len(endpoints) == n and self.containers() == ids):
            return False
        for m in self.dev.members:
            with self.client(m) as c:
                view = {x.id: (x.member_state, x.status) for x in c.list_nodes().nodes}
            if any(view.get(o.node_id) != ("alive", "ready") for o in self.dev.members if o is not m):
                return False
        return True

    def spread(self) -> bool:
        nodes = sorted(node for node, _ in self.running(self.dev.members[0]).values())
        return nodes == sorted(m.node_id for m in self.dev.members)


class DeathWatch:
    """A `WatchMembers` stream per surviving node: when each first reports `victim` DEAD."""

    def __init__(self, cluster: Cluster, survivors: list[NodeProcess], victim: str) -> None:
        self.victim = victim
        self.dead_at: dict[str, float] = {}
        self.after = float("inf")  # only deaths reported after the kill count
        self._clients = {m.node_id: cluster.client(m) for m in survivors}
        self._ready = {m.node_id: threading.Event() for m in survivors}
        self._threads = [
            threading.Thread(target=self._follow, args=(node,), daemon=True, name=f"watch-{node}")
            for node in self._clients
        ]
        for t in self._threads:
            t.start()

    def _follow(self, node: str) -> None:
        with contextlib.suppress(ShoalError, ValueError):  # ends when the client is closed
            for m in self._clients[node].watch_members():
                self._ready[node].set()
                now = time.monotonic()
                if m.node == self.victim and m.state == "dead" and now >= self.after:
                    self.dead_at.setdefault(node, now)

    def wait_ready(self, seconds: float) -> None:
        for node, ev in self._ready.items():
            if not ev.wait(seconds):
                raise BenchError(f"WatchMembers of {node} sent nothing within {seconds:g}s")

    def all_dead(self) -> bool:
        return len(self.dead_at) == len(self._clients)

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        for t in self._threads:
            t.join(5)


# -- one run -------------------------------------------------------------------------------


@dataclass
class Run:
    victim: str
    dead: float  # s from the kill: dead in every surviving view
    views: dict[str, float]  # s from the kill, per surviving node
    running: float  # s from the kill: the replacement running
    answering: float  # s from the kill: the replacement answering GET /
    back: float  # s from the restart: exactly 3 again
    load: str


def once(cluster: Cluster, run: int, opts: argparse.Namespace) -> Run:
    dev = cluster.dev
    if not cluster.spread():
        with cluster.client(dev.members[0]) as c:
            c.scale("web", 0)
            wait(lambda: cluster.exactly(0), opts.deadline, "scale to 0")
            c.scale("web", REPLICAS)
        wait(lambda: cluster.exactly() and cluster.spread(), opts.deadline, "scale back to 3, one per node")
    leader = cluster.leader()
    workers = [m for m in dev.members if m is not leader]
    victim = workers[run % len(workers)]
    survivors = [m for m in dev.members if m is not victim]
    tasks = cluster.running(survivors[0])
    slot = next(s for s, (node, _) in tasks.items() if node == victim.node_id)
    before = load()

    watch = DeathWatch(cluster, survivors, victim.node_id)
    try:
        watch.wait_ready(10.0)
        t0 = time.monotonic()
        watch.after = t0
        victim.kill(signal.SIGKILL)

        def moved() -> bool:
            now = cluster.running(survivors[0])
            return len(now) == REPLICAS and slot in now and now[slot][0] != victim.node_id

        running = wait(moved, opts.deadline, f"run {run}: slot {slot} running elsewhere", opts.interval)
        with cluster.client(survivors[0]) as c:
            new_task = next(t for t in c.list_tasks("web") if t.slot == slot)

        def answering() -> bool:
            with cluster.client(survivors[0]) as c:
                ep = next((e for e in c.resolve("web") if e.task == new_task.task_id), None)
            return ep is not None and answers(ep.address, ep.port)

        answered = wait(answering, opts.deadline, f"run {run}: the replacement answering", opts.interval)
        wait(watch.all_dead, opts.deadline, f"run {run}: {victim.node_id} dead in every view", opts.interval)
        views = {node: at - t0 for node, at in sorted(watch.dead_at.items())}
    finally:
        watch.close()

    t1 = time.monotonic()
    victim.start()
    back = wait(cluster.exactly, opts.deadline, f"run {run}: back to exactly {REPLICAS} replicas", 0.1)
    return Run(victim.node_id, max(views.values()), views, running - t0, answered - t0, back - t1, before)


# -- report --------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)


def report(runs: list[Run]) -> None:
    rows = [
        Row("dead in all views", [r.dead for r in runs]),
        Row("replacement running", [r.running for r in runs]),
        Row("replacement answering", [r.answering for r in runs]),
        Row("restart -> exactly 3", [r.back for r in runs]),
    ]
    print(f"\n{'':24} {'median':>8} {'max':>8}")
    for row in rows:
        print(f"{row.name:24} {row.median:7.2f}s {row.max:7.2f}s")
    running = rows[1]
    print()
    for peer, seconds in PEERS.items():
        print(
            f"replacement running vs {peer} default (~{seconds:g} s): "
            f"median {running.median / seconds:.2f}x, max {running.max / seconds:.2f}x"
        )
    local, lan = GOSSIP["local"], GOSSIP["lan"]
    print(
        f"\ngossip detection bound, n={NODES} (theory, worst case): "
        f"local {detection_bound(local, NODES):.1f} s (probe {local.probe_interval:g} s, used here), "
        f"lan {detection_bound(lan, NODES):.1f} s (probe {lan.probe_interval:g} s)"
    )
    print(
        f"then the leader waits down_grace before moving tasks: local {TIMINGS['local'].down_grace:g} s, "
        f"lan {TIMINGS['lan'].down_grace:g} s; so a lan cluster would move them within about "
        f"{detection_bound(lan, NODES) + TIMINGS['lan'].down_grace:.1f} s + placement and start"
    )


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5, help="kills, one after the other (default 5)")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds allowed per wait (default 60)")
    p.add_argument("--interval", type=float, default=0.05, help="poll interval in s (default 0.05)")
    p.add_argument("--keep", action="store_true", help="keep the data dir and daemon logs")
    p.add_argument("--preset", choices=["local", "lan"], default=PRESET, help=f"timing preset ({PRESET})")
    opts = p.parse_args(argv)
    if opts.runs < 1:
        p.error("--runs must be at least 1")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    bench_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix=f"shoal-failover-{bench_id}-"))
    hosts = [f"127.0.0.{i}" for i in range(1, NODES + 1)]
    dev = DevCluster(
        tmp,
        nodes=NODES,
        grpc_port=free_port_on_all(hosts),
        etcd_port=free_port_pair(),
        cluster=f"shoal-fo-{bench_id}",
        preset=opts.preset,
    )
    print(
        f"failover bench {bench_id}: {NODES} nodes ({opts.preset} preset), {REPLICAS} replicas of "
        f"shoal-demo/web:1, kill -9 of a worker, {opts.runs} run(s)",
        flush=True,
    )
    runs: list[Run] = []
    failure = ""
    cluster: Cluster | None = None
    try:
        dev.start(timeout=60.0)
        cluster = Cluster(dev)
        with dev.client() as c:
            c.apply(SPEC, source="bench/failover.py")
        wait(
            lambda: cluster is not None and cluster.exactly() and cluster.spread(),
            opts.deadline,
            "3 replicas",
        )
        for i in range(opts.runs):
            r = once(cluster, i, opts)
            runs.append(r)
            views = ", ".join(f"{n} {s:.2f}" for n, s in r.views.items())
            print(
                f"  run {i + 1}: {r.victim} killed; dead in all views {r.dead:.2f} s ({views}); "
                f"replacement running {r.running:.2f} s, answering {r.answering:.2f} s; "
                f"restart -> exactly {REPLICAS} in {r.back:.2f} s (load {r.load})",
                flush=True,
            )
    except (BenchError, DevError, ShoalError) as exc:
        failure = str(exc)
    except docker.errors.DockerException as exc:
        failure = f"Docker: {exc}"
    finally:
        if cluster is not None:
            cluster.close()
        dev.stop()
        if opts.keep:
            print(f"data dir and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if runs:
        report(runs)
    if failure:
        print(f"\nfailover: FAILED: {failure}", file=sys.stderr)
        return 1
    worst = max(r.running for r in runs)
    verdict = "met" if worst <= GOAL else "MISSED"
    print(f"\ngoal: replacement running <= {GOAL:g} s in every run: {verdict} (max {worst:.2f} s)")
    return 0 if worst <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
