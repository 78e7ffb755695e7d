"""SIGTERM ends a daemon within its `shutdown_grace`, whatever etcd does (issue 11, item 14a).

Real etcd, real Docker, real daemons (2 nodes, `local` preset). On the leader (the
worst case: it resigns and revokes the leader lease on its way out) run:
- `web`, a replica that must keep running across the stop (a stop leaves containers
  to be re-adopted by the next daemon: docs/operations.md), and
- `stubborn`, removed just before the signal: a container that ignores SIGTERM with a
  `stop_grace` longer than the daemon's, so the daemon's Docker call stopping it is in
  flight when the signal comes (before the fix the daemon waited for it).
Then etcd is left up, killed, or frozen (SIGSTOP: it accepts connections and never
answers), and the leader gets SIGTERM. It must have exited before `GRACE + MARGIN`
(polled; the margin covers a loaded machine), `web` still runs in the same container,
and the engine completes the stop of `stubborn` on its own: nothing it should have
stopped is left running.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import docker
import pytest

from node.dev.devcluster import DevCluster
from node.runtime.base import LABELS
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

GRACE = 10.0  # s: shoald's default shutdown_grace
MARGIN = 10.0  # s of slack on top, for a loaded machine
STUBBORN_GRACE = 30  # s: the stubborn replica's stop_grace, longer than GRACE + MARGIN

WEB = """
name: web
image: shoal-demo/web:1
replicas: 1
ports: [{container: 8080}]
placement: {constraints: ['node.id == NODE']}
"""
STUBBORN = f"""
name: stubborn
image: shoal-demo/base:1
replicas: 1
command: [sh, -c, 'trap "echo got-term" TERM; while true; do sleep 1; done']
stop_grace: {STUBBORN_GRACE}
placement: {{constraints: ['node.id == NODE']}}
"""


def container_of(cluster: DevCluster, service: str) -> docker.models.containers.Container | None:
    client = docker.from_env()
    try:
        found = client.containers.list(
            all=True,
            filters={"label": [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}={service}"]},
        )
        return found[0] if found else None
    finally:
        client.close()


def leader_of(cluster: DevCluster) -> str | None:
    with cluster.client() as c:
        return next((n.id for n in c.list_nodes().nodes if n.leader), None)


@pytest.mark.parametrize("etcd_state", ["up", "down", "frozen"])
def test_sigterm_ends_the_daemon_within_its_grace_whatever_etcd_does(
    make_cluster: Callable[..., DevCluster], etcd_state: str
) -> None:
    cluster = make_cluster(nodes=2)
    node = wait_until_sync(lambda: leader_of(cluster), 30, interval=0.2, message="a leader")
    member = next(m for m in cluster.members if m.node_id == node)
    with cluster.client() as c:
        c.apply(WEB.replace("NODE", node))
        c.apply(STUBBORN.replace("NODE", node))

        def both_running() -> bool:
            tasks = c.list_tasks("web") + c.list_tasks("stubborn")
            return len(tasks) == 2 and all(t.state == "running" and t.node == node for t in tasks)

        wait_until_sync(both_running, 60, interval=0.3, message=f"web and stubborn running on {node}")
        web = container_of(cluster, "web")
        stubborn = container_of(cluster, "stubborn")
        assert web is not None and stubborn is not None
        c.delete_service("stubborn")
    # the daemon has asked Docker to stop it (drain first): the stop is now in flight
    wait_until_sync(
        lambda: "got-term" in stubborn.logs().decode(), 30, interval=0.2, message="stubborn got SIGTERM"
    )
    etcd = cluster.etcd.proc
    assert etcd is not None
    if etcd_state == "down":
        etcd.kill()
        etcd.wait(10)
    elif etcd_state == "frozen":
        os.kill(etcd.pid, signal.SIGSTOP)
    try:
        assert member.proc is not None
        signalled = time.monotonic()
        member.proc.send_signal(signal.SIGTERM)
        wait_until_sync(
            lambda: member.proc is not None and member.proc.poll() is not None,
            GRACE + MARGIN,
            interval=0.1,
            message=f"shoald {node} exited after SIGTERM (etcd {etcd_state}); see {member.log_path}",
        )
        took = time.monotonic() - signalled
        print(f"etcd {etcd_state}: {node} exited {took:.1f}s after SIGTERM, status {member.proc.returncode}")
        log = member.log_path.read_text()
        assert member.proc.returncode == 0, log[-3000:]
        assert "shutting down" in log and "Traceback" not in log, log[-3000:]
        web.reload()
        assert web.status == "running", "a stop leaves the containers running, to be re-adopted"
        # nothing it should have stopped is left running: the engine completes the stop
        stubborn.reload()

        def stubborn_stopped() -> bool:
            stubborn.reload()
            return stubborn.status != "running"

        wait_until_sync(stubborn_stopped, STUBBORN_GRACE + 15, interval=0.5, message="stubborn stopped")
    finally:
        if etcd_state == "frozen":
            os.kill(etcd.pid, signal.SIGCONT)
