"""Rolling updates and rollback in a real 3-node cluster, under steady load through the proxy.

Deadlines bound correctness, not speed (bench/rollout.py measures the time).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from leader import crashpoint
from node.dev.devcluster import DevCluster
from tests.helpers import free_port_on_all, wait_until_sync
from tests.integration.load import Load

pytestmark = pytest.mark.integration

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def spec(port: int, image: str, order: str = "start-first", replicas: int = 6, health: bool = True) -> str:
    check = (
        "health: {http: {port: 8080, path: /health}, interval: 0.5s, timeout: 0.5s, retries: 2}"
        if health
        else ""
    )
    return f"""
name: web
image: {image}
replicas: {replicas}
ports:
  - {{container: 8080, published: {port}, protocol: http}}
{check}
update: {{parallelism: 2, order: {order}, monitor: 1s, drain: 1s, delay: 0s}}
stop_grace: 2s
"""


def rollout_state(cluster: DevCluster, version: int, node: int = 1) -> str:
    with cluster.client(node) as c:
        svc = c.get_service("web")
    r = svc.rollout
    return r.state if r.state and r.to_version == version else ""


def versions_answering(port: int, n: int = 30, host: str = HOSTS[0]) -> Counter[str]:
    """The version word of n answers through `host`'s proxy ("web v1 on ...")."""
    import urllib.request

    out: Counter[str] = Counter()
    for _ in range(n):
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as resp:
            out[resp.read().decode().split()[1]] += 1
    return out


def start_v1(cluster: DevCluster, port: int, order: str) -> None:
    with cluster.client() as c:
        c.apply(spec(port, "shoal-demo/web:1", order), "web.yaml")

        def running() -> bool:
            return sum(t.state == "running" for t in c.list_tasks("web")) == 6 and len(c.resolve("web")) == 6

        wait_until_sync(running, 60, message="6 replicas of v1 routable")


@pytest.mark.parametrize("order", ["start-first", "stop-first"])
def test_rolling_update_under_load_fails_no_request(
    make_cluster: Callable[..., DevCluster], order: str
) -> None:
    cluster = make_cluster()
    port = free_port_on_all(HOSTS)
    start_v1(cluster, port, order)
    with Load(f"http://{HOSTS[0]}:{port}/", rate=50, max_seconds=120) as load:
        wait_until_sync(lambda: len(load.results) >= 25, 10, message="load running")
        started = time.monotonic()
        with cluster.client() as c:
            v2 = c.apply(spec(port, "shoal-demo/web:2", order), "web.yaml").version
        wait_until_sync(lambda: rollout_state(cluster, v2) == "completed", 90, message="rollout completed")
        took = time.monotonic() - started
        results = load.stop()
    failed = load.failed()
    print(f"{order}: rollout of 6 took {took:.1f} s; {len(failed)}/{len(results)} requests failed")
    assert failed == [], f"{len(failed)} of {len(results)} failed: {failed[:5]}"
    assert versions_answering(port) == Counter({"v2": 30})
    with cluster.client() as c:
        tasks = c.list_tasks("web")
        history = c.history("web").versions
    assert len(tasks) == 6 and all(t.version == v2 and t.state == "running" for t in tasks)
    assert [(v.version, v.outcome) for v in history][-1] == (v2, "completed")


def test_an_update_that_never_turns_healthy_rolls_back_by_itself(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster()
    port = free_port_on_all(HOSTS)
    start_v1(cluster, port, "start-first")
    with cluster.client() as c:
        v1_tasks = {t.task_id for t in c.list_tasks("web")}
    with Load(f"http://{HOSTS[0]}:{port}/", rate=50, max_seconds=120) as load:
        wait_until_sync(lambda: len(load.results) >= 25, 10, message="load running")
        with cluster.client() as c:
            bad = c.apply(spec(port, "shoal-demo/web:bad"), "web.yaml").version
        wait_until_sync(lambda: rollout_state(cluster, bad + 1) == "rolled_back", 120, message="rolled back")
        results = load.stop()
    failed = load.failed()
    print(f"rollback: {len(failed)}/{len(results)} requests failed")
    assert failed == [], f"{len(failed)} of {len(results)} failed: {failed[:5]}"
    assert versions_answering(port) == Counter({"v1": 30})
    with cluster.client() as c:
        svc = c.get_service("web")
        tasks = c.list_tasks("web")
        outcomes = {v.version: v.outcome for v in c.history("web").versions}
    assert svc.image == "shoal-demo/web:1" and svc.rollback_of == bad
    assert {t.task_id for t in tasks} == v1_tasks, "the v1 replicas were kept through the attempt"
    assert outcomes[bad] == "failed" and outcomes[bad + 1] == "rolled_back"


def test_a_new_leader_continues_a_rollout(make_cluster: Callable[..., DevCluster]) -> None:
    cluster = make_cluster()
    port = free_port_on_all(HOSTS)
    start_v1(cluster, port, "start-first")
    slow = (
        spec(port, "shoal-demo/web:2")
        .replace("parallelism: 2", "parallelism: 1")
        .replace("monitor: 1s", "monitor: 2s")
    )
    with cluster.client() as c:
        v2 = c.apply(slow, "web.yaml").version

        def halfway() -> bool:
            r = c.get_service("web").rollout
            return r.to_version == v2 and 1 <= r.updated <= 3

        wait_until_sync(halfway, 60, message="rollout under way")
        leader = next(n.id for n in c.list_nodes().nodes if n.leader)
    member = next(m for m in cluster.members if m.node_id == leader)
    member.kill()  # SIGKILL: no resignation, the leader key expires
    others = [i for i, m in enumerate(cluster.members, 1) if m.node_id != leader]
    with cluster.client(others[0]) as c:

        def done() -> bool:
            r = c.get_service("web").rollout
            return r.to_version == v2 and r.state == "completed"

        wait_until_sync(done, 120, message="the new leader finished the rollout")
        tasks = c.list_tasks("web")
    assert len(tasks) == 6 and all(t.version == v2 for t in tasks), "no replica lost, all on v2"


@pytest.mark.parametrize("point", [crashpoint.ROLLBACK_DUE, crashpoint.ROLLBACK_WRITTEN])
def test_a_leader_killed_at_a_step_of_an_automatic_rollback_still_rolls_back_once(
    make_cluster: Callable[..., DevCluster], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, point: str
) -> None:
    """kill -9 of the leader at an exact step of the failure path: the daemons run with a
    crash point (`leader.crashpoint`), and the first one to reach it, the leader that finds
    the rollout failed, SIGKILLs itself there (once: the marker file). The next leader must
    complete the decision: the service ends on the previous version, rolled back once."""
    marker = tmp_path / "crashed"
    monkeypatch.setenv(crashpoint.ENV, f"{point}:{marker}")
    cluster = make_cluster()
    port = free_port_on_all(HOSTS)
    start_v1(cluster, port, "start-first")
    with cluster.client() as c:
        bad = c.apply(spec(port, "shoal-demo/web:bad"), "web.yaml").version
    wait_until_sync(marker.exists, 120, message=f"the leader reached {point}")
    dead = wait_until_sync(
        lambda: next((m for m in cluster.members if not m.alive()), None), 10, message="the leader killed"
    )
    node = next(i for i, m in enumerate(cluster.members, 1) if m is not dead)
    wait_until_sync(
        lambda: rollout_state(cluster, bad + 1, node) == "rolled_back",
        180,
        message="rolled back by the next leader",
    )
    with cluster.client(node) as c:
        svc = c.get_service("web")
        history = c.history("web").versions
    assert (svc.image, svc.version, svc.rollback_of) == ("shoal-demo/web:1", bad + 1, bad), "rolled back once"
    outcomes = {v.version: v.outcome for v in history}
    assert sorted(outcomes) == [1, bad, bad + 1], "one new version, no second rollback"
    assert (outcomes[bad], outcomes[bad + 1]) == ("failed", "rolled_back")
    assert versions_answering(port, host=HOSTS[node - 1]) == Counter({"v1": 30})
