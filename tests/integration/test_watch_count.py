"""An idle 3-node dev cluster holds at most 6 etcd watchers per daemon (issue 12).

etcd counts them itself: `etcd_debugging_mvcc_watcher_total` on its /metrics (the
name etcd 3.4 exposes; 3.5 still has it, `etcd_mvcc_*` does not count watchers).
Nothing but the cluster's three daemons watches this etcd. Every daemon's components
(leader, agent, proxy mesh, membership, credentials) read through its one `WatchHub`
(`node.store.mirrors`): one watch over the cluster prefix, plus the election's watch
of the leader key. Before the hub: 15 to 16 per daemon (`bench/README.md`).
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest

from node.dev.devcluster import DevCluster, free_port_on_all, remove_containers
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

GOAL = 6  # watchers per daemon
METRIC = re.compile(r"^etcd_debugging_mvcc_watcher_total (\S+)$", re.M)


def watchers(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        found = METRIC.search(resp.read().decode())
    assert found is not None, f"etcd at {metrics_url} has no etcd_debugging_mvcc_watcher_total"
    return int(float(found[1]))


def steady(metrics_url: str, readings: int = 15) -> int | None:
    """The watcher count once the same `readings` come in a row (3 s: start-up over), else None."""
    seen = []
    for _ in range(readings):
        seen.append(watchers(metrics_url))
        time.sleep(0.2)  # the pace of the readings, not a wait for something
    return seen[0] if len(set(seen)) == 1 else None


def test_an_idle_cluster_holds_at_most_six_watchers_per_daemon(tmp_path: Path) -> None:
    cluster = DevCluster.on_free_ports(tmp_path / "dev", nodes=3, name="watch-count-")
    port = free_port_on_all(["127.0.0.1"])
    cluster.etcd.extra_args += ["--listen-metrics-urls", f"http://127.0.0.1:{port}"]
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        cluster.start()
        with cluster.client() as client:
            wait_until_sync(
                lambda: any(n.leader for n in client.list_nodes().nodes), timeout=30, message="a leader"
            )
        total = wait_until_sync(lambda: steady(url), timeout=30, message="a steady watcher count")
        per_daemon = total / cluster.nodes
        print(f"etcd watchers: {total} for {cluster.nodes} daemons, {per_daemon:.1f} each (goal {GOAL})")
        assert total >= cluster.nodes, f"only {total} watchers: is every daemon watching?"
        assert per_daemon <= GOAL, f"{total} etcd watchers for {cluster.nodes} idle daemons"
    finally:
        cluster.stop()
        remove_containers(cluster.cluster)
