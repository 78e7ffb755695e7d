"""Volumes on a real `shoal dev` cluster (issue 13, item 5): the data of a slot's volume
survives a `docker kill` of its container and a rolling update (which never runs the old
and the new container at once), `volume ls/rm` work, and a slot whose volume's node is
lost waits with a reason naming the volume and the node.

Real etcd, real Docker, real daemons (3 nodes, `local` preset). Every wait polls with a
deadline; the watcher of the update polls Docker at most 2,000 times."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator

import docker
import pytest

from node.dev.devcluster import DevCluster, remove_containers
from node.runtime.base import LABELS
from node.wire.client import ShoalClient, ShoalError
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

STORE = """
name: store
image: shoal-demo/web:1
env: {{GREETING: "{greeting}"}}
volumes: [{{name: data, target: /data}}]
"""


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def client(cluster: DevCluster) -> ShoalClient:
    m = cluster.members[0]
    return ShoalClient(m.addr, timeout=5.0, context_file=m.context_file)


def running(engine: docker.DockerClient, cluster: DevCluster, service: str) -> list[object]:
    labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}={service}"]
    return list(engine.containers.list(filters={"label": labels}))


def one_running(
    engine: docker.DockerClient, cluster: DevCluster, service: str, not_id: str = ""
) -> Callable[[], object]:
    def check() -> object:
        found = running(engine, cluster, service)
        return found[0] if len(found) == 1 and found[0].id != not_id else None

    return check


def sh(container: object, command: str) -> str:
    code, out = container.exec_run(["sh", "-c", command])  # type: ignore[attr-defined]
    assert code == 0, out
    return str(out.decode()).strip()


def cleanup_volumes(engine: docker.DockerClient, cluster: DevCluster) -> None:
    """The containers, then the volumes (`service rm` keeps them; see docs/volumes.md)."""
    remove_containers(cluster.cluster)
    for v in engine.volumes.list(filters={"label": f"{LABELS.CLUSTER}={cluster.cluster}"}):
        v.remove(force=True)


def test_volume_data_survives_kill_and_update_and_volume_rm_removes_it(
    make_cluster: Callable[..., DevCluster], engine: docker.DockerClient
) -> None:
    cluster = make_cluster(3)
    try:
        with client(cluster) as c:
            c.apply(STORE.format(greeting="one"), "store.yaml")
        first = wait_until_sync(one_running(engine, cluster, "store"), 45, message="store running")
        sh(first, "echo kept > /data/f")
        node = first.labels[LABELS.NODE]  # type: ignore[attr-defined]

        first.kill()  # type: ignore[attr-defined]
        second = wait_until_sync(one_running(engine, cluster, "store", first.id), 45, message="restarted")  # type: ignore[attr-defined]
        assert sh(second, "cat /data/f") == "kept"

        seen: list[int] = []  # running containers of slot 1, each poll during the update
        stop = threading.Event()

        def watch() -> None:
            for _ in range(2000):
                if stop.is_set():
                    return
                seen.append(len(running(engine, cluster, "store")))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with client(cluster) as c:
                c.apply(STORE.format(greeting="two"), "store.yaml")
            third = wait_until_sync(one_running(engine, cluster, "store", second.id), 60, message="updated")  # type: ignore[attr-defined]
        finally:
            stop.set()
            watcher.join(30)
        assert max(seen) == 1, f"old and new ran at once: {seen}"
        assert third.labels[LABELS.NODE] == node  # type: ignore[attr-defined]
        assert sh(third, "cat /data/f") == "kept"
        assert "two" in sh(third, "env | grep GREETING")

        with client(cluster) as c:
            [v] = c.list_volumes("store")
            assert (v.name, v.node, v.in_use) == ("store.1.data", node, True)
            with pytest.raises(ShoalError, match="in use"):
                c.remove_volume("store.1.data")
            c.scale("store", 0)
        wait_until_sync(lambda: not running(engine, cluster, "store"), 45, message="scaled to 0")
        with client(cluster) as c:
            assert "being removed" in c.remove_volume("store.1.data").message
        docker_name = v.docker_name

        def gone() -> bool:
            with client(cluster) as c:
                listed = c.list_volumes("store")
            return not listed and docker_name not in {x.name for x in engine.volumes.list()}

        wait_until_sync(gone, 30, message="claim and Docker volume removed")
    finally:
        cleanup_volumes(engine, cluster)


def test_a_slot_whose_volume_node_is_lost_is_pending_naming_the_volume_and_the_node(
    make_cluster: Callable[..., DevCluster], engine: docker.DockerClient
) -> None:
    cluster = make_cluster(3)
    try:
        with client(cluster) as c:
            c.apply(STORE.format(greeting="one").replace("name: store", "name: db"), "db.yaml")
        first = wait_until_sync(one_running(engine, cluster, "db"), 45, message="db running")
        node = first.labels[LABELS.NODE]  # type: ignore[attr-defined]
        victim = next(m for m in cluster.members if m.node_id == node)
        survivor = next(m for m in cluster.members if m is not victim)
        if victim is cluster.members[0]:
            cluster.members.remove(victim)
            cluster.members.insert(1, victim)  # the client asks a survivor
        victim.kill(signal.SIGKILL)
        t0 = time.monotonic()

        def pending() -> str:
            with ShoalClient(survivor.addr, timeout=3.0, context_file=survivor.context_file) as c:
                [s] = [s for s in c.list_services() if s.name == "db"]
            return s.pending_reason if s.pending else ""

        reason = wait_until_sync(pending, 30, message="db pending")
        assert f"volume data is on node {node}" in reason and "lost" in reason, reason
        print(f"pending {time.monotonic() - t0:.1f}s after the kill: {reason}")
        db = [
            c
            for c in engine.containers.list(filters={"label": f"{LABELS.SERVICE}=db"})
            if c.labels.get(LABELS.CLUSTER) == cluster.cluster
        ]
        assert [c.labels[LABELS.NODE] for c in db] == [node]  # no second copy started elsewhere
    finally:
        cleanup_volumes(engine, cluster)
