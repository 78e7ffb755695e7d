"""etcd lost and restored under a running cluster: fail fast, keep running, converge.

Real etcd (the cluster's own single member), real Docker, real daemons (3 nodes,
`local` preset: node lease 10 s, leader lease 3 s, `etcd_timeout` 5 s per call). The
bounds asserted are those of reliability.md ("etcd quorum lost"):

- while etcd is down, every call that needs it (apply, scale, rm, node ls) answers
  UNAVAILABLE naming etcd within `FAIL_BOUND` (one etcd deadline plus slack), never hangs;
- the daemons stay up, and the replicas keep running (same container ids, never
  stopped) and keep answering HTTP during `HOLD` seconds of outage;
- after etcd is back with its data, within `HEAL_BOUND` the cluster is whole again:
  a leader with an epoch, every node ready, the same containers (no restart, no
  duplicate), and a write (`scale`) is accepted and converges.

A stopped-and-restarted etcd renews every lease when it comes back (its lessor
extends the remaining TTLs on promotion), so a lease never expires *in etcd* this way;
what an outage longer than the lease does is make each daemon give up its lease on its
own clock (`Session`) and take a new one, re-registering and republishing status and
endpoints. The second test holds etcd down until every daemon has done so.

Every wait polls with a deadline; the only fixed durations are the outage's own (the
observation window). The measured times are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import docker
import pytest

from node.dev.devcluster import DevCluster
from node.model.keys import Keys
from node.runtime.base import LABELS
from node.store.etcd import EtcdStore
from node.wire.client import ShoalClient, ShoalError, Unavailable
from tests.helpers import on_store, wait_until_sync
from tests.integration.test_cluster import WEB, converged, http_get

pytestmark = pytest.mark.integration

FAIL_BOUND = 12.0  # s: a call that needs etcd answers UNAVAILABLE within this (etcd_timeout 5 s)
HOLD = 15.0  # s: the outage observed, containers must never stop during it
HEAL_BOUND = 30.0  # s from etcd's restart: the cluster whole again
LEASE_LOST_BOUND = 25.0  # s from etcd's stop: every daemon gave up its 10 s lease
LEASE_NEW = "new etcd lease"


# -- looking at the cluster ------------------------------------------------------------------


def running(cluster: DevCluster) -> dict[str, tuple[str, int]]:
    """id -> (task id, restart count) of this cluster's running containers, from Docker."""
    client = docker.from_env()
    try:
        found = client.containers.list(filters={"label": f"{LABELS.CLUSTER}={cluster.cluster}"})
        return {c.id: (c.labels[LABELS.TASK], int(c.attrs.get("RestartCount", 0))) for c in found}
    finally:
        client.close()


def patient(cluster: DevCluster, i: int = 1) -> ShoalClient:
    """A client whose own deadline is longer than FAIL_BOUND, so the server's answer is seen."""
    return ShoalClient(cluster.members[i - 1].addr, timeout=FAIL_BOUND + 10, tls=cluster.tls)


def timed_failure(call: Callable[[], object]) -> tuple[float, ShoalError | None]:
    start = time.monotonic()
    try:
        call()
    except ShoalError as err:
        return time.monotonic() - start, err
    return time.monotonic() - start, None


def whole(cluster: DevCluster, n: int, ids: set[str] | None = None) -> Callable[[], bool]:
    """A leader with an epoch, every node ready, `n` replicas converged (the same containers)."""
    check_replicas = converged(cluster, n)

    def check() -> bool:
        with cluster.client() as c:
            nodes = c.list_nodes()
        ready = {node.id for node in nodes.nodes if node.status == "ready"}
        leaders = [node.id for node in nodes.nodes if node.leader]
        if nodes.epoch <= 0 or len(leaders) != 1 or ready != {m.node_id for m in cluster.members}:
            return False
        if not check_replicas():
            return False
        return ids is None or set(running(cluster)) == ids

    return check


def node_leases(cluster: DevCluster) -> dict[str, int]:
    """node id -> the lease its registry entry hangs on, read from etcd."""
    keys = Keys(prefix=cluster.prefix)

    async def go(store: EtcdStore) -> dict[str, int]:
        kvs, _ = await store.range(keys.nodes)
        return {keys.tail(kv.key, keys.nodes): kv.lease for kv in kvs}

    return on_store(cluster.etcd.endpoint, go)


def log_count(cluster: DevCluster, needle: str) -> dict[str, int]:
    return {m.node_id: m.log_path.read_text(errors="replace").count(needle) for m in cluster.members}


def start_web(cluster: DevCluster) -> tuple[dict[str, tuple[str, int]], list[tuple[str, int]]]:
    with cluster.client() as c:
        c.apply(WEB)
    wait_until_sync(whole(cluster, 3), 30, message="3 replicas and a whole cluster")
    with cluster.client() as c:
        endpoints = [(e.address, e.port) for e in c.resolve("web")]
    for address, port in endpoints:
        assert address.startswith("127.0.0."), address
        wait_until_sync(lambda a=address, p=port: http_get(a, p), 10, message=f"{address}:{port}")
    return running(cluster), endpoints


def observe_outage(
    cluster: DevCluster, before: dict[str, tuple[str, int]], endpoints: list[tuple[str, int]], until: float
) -> int:
    """Until `until` (monotonic): daemons alive, the same containers running, never restarted,
    every replica answering HTTP. Returns the number of samples taken."""
    samples = 0
    while True:
        dead = [m.node_id for m in cluster.members if not m.alive()]
        assert not dead, f"daemon(s) {dead} exited while etcd was down; see {cluster.members[0].log_path}"
        assert running(cluster) == before, "a container stopped, restarted or appeared while etcd was down"
        for address, port in endpoints:
            assert http_get(address, port).startswith("hello from web v1 on "), f"{address}:{port}"
        samples += 1
        if time.monotonic() >= until:
            return samples
        time.sleep(0.5)  # the sampling period of a bounded observation, not a wait to converge


# -- the scenarios ---------------------------------------------------------------------------


def test_etcd_down_fails_calls_fast_keeps_containers_and_converges_after_restore(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster()
    before, endpoints = start_web(cluster)
    assert len(before) == 3
    with cluster.client() as c:
        old_epoch = c.list_nodes().epoch
    leases_before = node_leases(cluster)

    cluster.etcd.stop()
    down_at = time.monotonic()
    assert not cluster.etcd.healthy()

    # every call that needs etcd fails clearly and quickly, on any node, also all at once
    calls: dict[str, Callable[[], object]] = {
        "apply": lambda: patient(cluster, 1).apply(WEB.replace("hello", "bye"), "web.yaml"),
        "scale": lambda: patient(cluster, 2).scale("web", 5),
        "rm": lambda: patient(cluster, 3).delete_service("web"),
        "node ls": lambda: patient(cluster, 1).list_nodes(),
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        futures: dict[str, Future[tuple[float, ShoalError | None]]] = {
            name: pool.submit(timed_failure, call) for name, call in calls.items()
        }
        samples = observe_outage(cluster, before, endpoints, down_at + HOLD)
        results = {name: f.result() for name, f in futures.items()}
    for name, (took, err) in results.items():
        print(f"etcd down: {name} answered in {took:.2f}s: {err}")
        assert err is not None, f"{name} succeeded while etcd was down"
        assert isinstance(err, Unavailable), f"{name}: {type(err).__name__}: {err}"
        assert "etcd unreachable at " in str(err) and cluster.etcd.endpoint in str(err), str(err)
        assert took < FAIL_BOUND, f"{name} took {took:.1f}s to fail"
    print(f"etcd down: {samples} samples over {time.monotonic() - down_at:.1f}s, nothing stopped")

    # restore with the same data dir: the cluster is whole again, nothing moved, and a
    # write made right then is acted on (by a leader that really leads, not a stale key)
    cluster.etcd.start()
    up_at = time.monotonic()
    wait_until_sync(whole(cluster, 3, set(before)), HEAL_BOUND, 0.2, message="the cluster whole again")
    healed = time.monotonic() - up_at

    def every_daemon_writes_again() -> bool:  # each gave its lease up during HOLD (> 10 s)
        leases = node_leases(cluster)
        assert set(leases) == set(leases_before), f"registered: {sorted(leases)}"
        assert all(leases[n] != leases_before[n] for n in leases), f"not re-registered: {leases}"
        return True

    wait_until_sync(every_daemon_writes_again, HEAL_BOUND, 0.2, message="every daemon re-registered")
    rejoined = time.monotonic() - up_at
    with cluster.client() as c:
        assert c.get_service("web").replicas == 3  # no write of the outage went through
        assert c.scale("web", 4).replicas == 4
    assert running(cluster) == before  # same ids, 0 restarts, no duplicate
    wait_until_sync(converged(cluster, 4), HEAL_BOUND - (time.monotonic() - up_at), 0.2, message="4 replicas")
    scaled = time.monotonic() - up_at
    with cluster.client() as c:
        epoch = c.list_nodes().epoch
    print(
        f"etcd restored: reads whole again in {healed:.2f}s, every daemon re-registered in "
        f"{rejoined:.2f}s, scaled to 4 and converged {scaled:.2f}s "
        f"after the restore (epoch {old_epoch} -> {epoch})"
    )
    now = running(cluster)
    assert set(before) < set(now)  # the 3 originals are among the 4, untouched
    assert all(now[i] == before[i] for i in before)
    assert len({task for task, _ in now.values()}) == 4


def test_etcd_down_past_the_node_lease_gets_new_leases_and_republishes(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster()
    before, endpoints = start_web(cluster)
    leases_before = node_leases(cluster)
    lost = {node: f"etcd lease {lease:x} lost" for node, lease in leases_before.items()}  # Session
    renewed_before = log_count(cluster, LEASE_NEW)

    cluster.etcd.stop()
    down_at = time.monotonic()
    stop_observing = threading.Event()

    def every_daemon_lost_its_lease() -> bool:
        return all(lost[m.node_id] in m.log_path.read_text(errors="replace") for m in cluster.members)

    # observe while waiting: the outage lasts until every daemon gave its lease up
    observed: list[int] = []

    def watch() -> None:
        while not stop_observing.is_set():
            observed.append(observe_outage(cluster, before, endpoints, time.monotonic()))

    watcher = ThreadPoolExecutor(1)
    watching = watcher.submit(watch)
    try:
        wait_until_sync(every_daemon_lost_its_lease, LEASE_LOST_BOUND, 0.2, message="every lease lost")
    finally:
        stop_observing.set()
        watcher.shutdown()
    watching.result()  # re-raises an observation that failed
    held = time.monotonic() - down_at
    print(f"etcd down {held:.1f}s: every daemon gave its lease up; {len(observed)} samples, nothing stopped")

    cluster.etcd.start()
    up_at = time.monotonic()
    wait_until_sync(whole(cluster, 3, set(before)), HEAL_BOUND, 0.2, message="the cluster whole again")
    healed = time.monotonic() - up_at

    def republished() -> bool:
        renewed = log_count(cluster, LEASE_NEW)
        leases = node_leases(cluster)
        with cluster.client(2) as c:
            resolved = {(e.address, e.port) for e in c.resolve("web")}
        assert all(renewed[n] > renewed_before[n] for n in renewed), f"new leases: {renewed}"
        assert set(leases) == set(leases_before), f"registered: {sorted(leases)}"
        assert all(leases[n] != leases_before[n] for n in leases), f"{leases} vs {leases_before}"
        assert resolved == set(endpoints), f"resolved {sorted(resolved)}, want {sorted(endpoints)}"
        return True

    wait_until_sync(republished, HEAL_BOUND, 0.2, message="new leases, registry and endpoints republished")
    print(
        f"etcd restored after {held:.1f}s down: whole again in {healed:.2f}s, "
        f"republished on new leases in {time.monotonic() - up_at:.2f}s"
    )
    assert running(cluster) == before  # same ids, 0 restarts, no duplicate
    for address, port in endpoints:
        assert http_get(address, port).startswith("hello from web v1 on ")


def test_a_frozen_etcd_makes_calls_time_out_not_hang(make_cluster: Callable[..., DevCluster]) -> None:
    """SIGSTOP: etcd accepts connections but never answers, the worst case for a hang."""
    cluster = make_cluster()
    before, endpoints = start_web(cluster)
    assert cluster.etcd.proc is not None
    pid = cluster.etcd.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        calls: dict[str, Callable[[], object]] = {
            "apply": lambda: patient(cluster, 2).apply(WEB.replace("hello", "bye"), "web.yaml"),
            "scale": lambda: patient(cluster, 3).scale("web", 5),
            "node ls": lambda: patient(cluster, 1).list_nodes(),
        }
        with ThreadPoolExecutor(len(calls)) as pool:
            futures = {name: pool.submit(timed_failure, call) for name, call in calls.items()}
            samples = observe_outage(cluster, before, endpoints, frozen_at + FAIL_BOUND / 2)
            results = {name: f.result() for name, f in futures.items()}
    finally:
        os.kill(pid, signal.SIGCONT)
    thawed_at = time.monotonic()
    print(f"etcd frozen {thawed_at - frozen_at:.1f}s: {samples} samples, nothing stopped")
    for name, (took, err) in results.items():
        print(f"etcd frozen: {name} answered in {took:.2f}s: {err}")
        assert isinstance(err, Unavailable), f"{name}: {type(err).__name__}: {err}"
        assert "etcd unreachable at " in str(err) and cluster.etcd.endpoint in str(err), str(err)
        assert took < FAIL_BOUND, f"{name} took {took:.1f}s to fail"

    with cluster.client() as c:
        assert c.get_service("web").replicas == 3  # no write of the freeze went through
        assert c.scale("web", 4).replicas == 4
    wait_until_sync(converged(cluster, 4), HEAL_BOUND, 0.2, message="4 replicas after the freeze")
    print(f"etcd thawed: scaled to 4 and converged {time.monotonic() - thawed_at:.2f}s after")
    now = running(cluster)
    assert all(now[i] == before[i] for i in before)  # the 3 originals untouched
    assert len(now) == 4
