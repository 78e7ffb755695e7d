"""Backup and restore on a real cluster: `shoal cluster backup`, then etcd lost with its
data, `shoal cluster restore` onto a fresh data dir, and the cluster comes back as it
was at the backup, without restarting a container.

Issue 16, item 4. Real etcd (the dev cluster's own, TLS with client certificates), real
Docker, real daemons. A write made *after* the backup (a fourth replica) is undone by
the restore: that shows the daemons' mirrors see the restored etcd (a new cluster id,
revisions behind what they had) and list again instead of resuming past it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from node.dev.devcluster import DevCluster
from tests.helpers import wait_until_sync
from tests.integration.test_cluster import converged
from tests.integration.test_etcd_outage import running, start_web, whole

pytestmark = pytest.mark.integration

HEAL_BOUND = 45.0  # s from the restored etcd's start: the cluster whole again


def shoal(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["SHOAL_CONTEXT_FILE"] = str(cluster.context_file)
    return subprocess.run(
        [sys.executable, "-m", "node.cli.main", "--addr", cluster.addr, *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_a_restored_backup_brings_the_cluster_back_without_restarting_a_container(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    before, _ = start_web(cluster)
    assert len(before) == 3
    file = tmp_path / "shoal.backup"

    done = shoal(cluster, "cluster", "backup", str(file))
    assert done.returncode == 0, done.stderr
    assert "SHA-256 checked" in done.stdout and file.stat().st_mode & 0o777 == 0o600

    # a write after the backup: the restore takes the cluster back before it
    with cluster.client() as c:
        c.scale("web", 4)
    wait_until_sync(converged(cluster, 4), 30, message="a fourth replica after the backup")
    with cluster.client() as c:
        epoch = c.list_nodes().epoch

    # etcd lost with its data; restored from the backup into a new data dir
    cluster.etcd.stop()
    data = cluster.etcd.data_dir
    data.rename(data.with_name("data.lost"))
    refused = shoal(cluster, "cluster", "restore", str(file), "--data-dir", str(data.parent),
                    "--name", "shoal-dev", "--peer-url", "https://127.0.0.1:1")  # fmt: skip
    assert refused.returncode == 1 and "not empty" in refused.stderr, refused.stderr
    peer = f"https://{cluster.etcd.host}:{cluster.etcd.peer_port}"
    done = shoal(cluster, "cluster", "restore", str(file), "--data-dir", str(data),
                 "--name", "shoal-dev", "--peer-url", peer)  # fmt: skip
    assert done.returncode == 0, done.stderr
    cluster.etcd.start()

    # as at the backup: 3 replicas, the very same containers (none restarted), a leader
    wait_until_sync(whole(cluster, 3, set(before)), HEAL_BOUND, 0.2, message="the cluster as at the backup")
    assert running(cluster) == before, "a container was restarted or replaced"
    with cluster.client() as c:
        nodes = c.list_nodes()
        assert c.get_service("web").replicas == 3
    assert nodes.epoch >= epoch

    # and it takes writes again
    with cluster.client() as c:
        assert c.scale("web", 2).replicas == 2
    wait_until_sync(converged(cluster, 2), 30, message="scaled down after the restore")
    assert set(running(cluster)) < set(before)


def test_a_damaged_backup_is_refused_before_anything_is_touched(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=1)
    file = tmp_path / "b"
    assert shoal(cluster, "cluster", "backup", str(file)).returncode == 0
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    file.write_bytes(bytes(raw))
    target = tmp_path / "fresh"
    done = shoal(cluster, "cluster", "restore", str(file), "--data-dir", str(target),
                 "--name", "m", "--peer-url", "https://127.0.0.1:1")  # fmt: skip
    assert done.returncode == 1 and "SHA-256 does not match" in done.stderr, done.stderr
    assert not target.exists()


async def test_a_watch_resumed_onto_a_restored_etcd_lists_again(tmp_path: Path) -> None:
    """The watch resumes by itself across a dropped connection; when what answers then is
    etcd restored from a backup (a new cluster id, revisions behind those delivered), it
    must not wait for revisions it already saw (the writes made since the restore would
    be skipped): it raises `Compacted`, on which every mirror lists again."""
    import asyncio

    from node.cli import backup
    from node.dev.devcluster import EtcdProcess
    from node.dev.freeports import free_port_pair
    from node.store.base import Compacted
    from node.store.etcd import EtcdStore
    from tests.faultproxy import FaultProxy

    port = free_port_pair()
    etcd = EtcdProcess(tmp_path / "a", port, port + 1)
    etcd.start()
    proxy = FaultProxy(etcd.endpoint)
    await proxy.start()
    direct = EtcdStore([etcd.endpoint], timeout=5.0)
    watched = EtcdStore([proxy.endpoint], timeout=2.0)
    try:
        await direct.connect()
        await watched.connect()
        for i in range(3):
            await direct.put(f"/r/k{i}", b"before")
        file = tmp_path / "snap"

        async def chunks() -> list[bytes]:
            return [c async for c in direct.snapshot()]

        backup.write(await chunks(), file)
        _, start = await direct.range("/r/")
        last = 0
        for i in range(3, 20):  # after the backup: delivered to the watch, then lost
            last = await direct.put(f"/r/k{i}", b"after")

        batches = watched.watch("/r/", start)
        seen = 0
        while seen < last:
            seen = (await asyncio.wait_for(anext(batches), 10)).revision
        proxy.block()  # the watch resumes by itself (UNAVAILABLE), proxied to whatever answers
        await direct.close()
        etcd.stop()
        data = tmp_path / "b"
        backup.restore(
            backup.restore_args(file, data, "shoal-dev", f"http://127.0.0.1:{port + 1}", "", "restored"), data
        )
        restored = EtcdProcess(data, port, port + 1)
        restored.start()
        etcd = restored
        direct = EtcdStore([etcd.endpoint], timeout=5.0)
        await direct.connect()
        for i in range(3):  # writes on the restored etcd, at revisions the watch already saw
            assert await direct.put(f"/r/new{i}", b"x") < last
        proxy.unblock()
        with pytest.raises(Compacted):
            await asyncio.wait_for(anext(batches), 20)
    finally:
        await proxy.stop()
        await watched.close()
        await direct.close()
        etcd.stop()
