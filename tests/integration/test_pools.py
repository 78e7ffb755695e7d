"""Node pools against a real cluster (issue 15): a service too big for every node makes the
leader ask the `local` provider (deploy/providers/local.py) for a node; the node joins
with the join token and the pool's labels, the replica runs there; once the service is
scaled to 0 the node is drained and given back after its idle timeout.

Deadlines bound correctness, not speed; nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from node.cli.main import cli
from node.dev.devcluster import DevCluster
from node.wire.client import ShoalClient
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "deploy" / "providers" / "local.py"
BIG = "name: big\nimage: shoal-demo/web:1\nreplicas: 1\nresources: {cpu: 1.5, memory: 1536Mi}\n"


def shoal(cluster: DevCluster, *args: str) -> Result:
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})
    result = runner.invoke(cli, ["--addr", cluster.addr, *args])
    assert result.exit_code == 0, f"shoal {' '.join(args)}: {result.output}"
    return result


def provider_command(state: Path) -> list[str]:
    return [sys.executable, str(LOCAL), "--state", str(state)]  # the rest comes from the leader


def pool_nodes(cluster: DevCluster) -> list[dict]:
    out = shoal(cluster, "pool", "ls", "-o", "json").output
    return list(json.loads(out)["nodes"])


def test_a_service_too_big_for_the_cluster_gets_a_pool_node_that_goes_back_when_idle(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=1, extra_args=["--cpu", "1", "--memory", "1Gi"])
    state = tmp_path / "pool"
    pools = {
        "pools": {
            "burst": {
                "provider": {"command": provider_command(state), "timeout": "60s"},
                "max": 2,
                "node": {"cpu": 2, "memory": "2Gi", "labels": {"tier": "burst"}},
                "idle_timeout": "3s",
                "join_timeout": "60s",
            }
        }
    }
    path = tmp_path / "pools.yaml"
    path.write_text(json.dumps(pools))  # JSON is YAML
    try:
        assert "pools: burst" in shoal(cluster, "pool", "apply", "-f", str(path)).output
        table = shoal(cluster, "pool", "ls").output
        assert "burst" in table and "2 cpu 2 GiB" in table, table
        with cluster.client() as c:
            gone: list[str] = []
            released_at = 0.0
            for round_ in (1, 2):  # twice: a node given back is never used again
                c.apply(BIG)

                def running_on_pool_node() -> str:
                    for t in c.list_tasks("big"):
                        if t.state == "running" and t.node.startswith("burst-"):
                            return t.node
                    return ""

                wait_until_sync(running_on_pool_node, 120, interval=0.5, message="big running on a pool node")
                node = running_on_pool_node()
                labels = {n.id: dict(n.labels) for n in c.list_nodes().nodes}[node]
                assert labels["shoal.pool"] == "burst" and labels["tier"] == "burst", labels
                asked = pool_nodes(cluster)
                assert [(n["node"], n["state"], n["registered"]) for n in asked] == [(node, "joined", True)]
                events = [e.message for e in c.events() if e.kind.startswith("pool.")]
                assert sum("asking its provider" in m for m in events) == round_, events  # once per need
                placed = [e.message for e in c.events() if e.kind == "task.placed" and e.time > released_at]
                assert not [m for m in placed for old in gone if f"placed on {old}" in m], placed

                c.scale("big", 0)

                def given_back() -> bool:
                    return not pool_nodes(cluster)

                wait_until_sync(given_back, 90, interval=0.5, message="the idle pool node given back")
                assert not (state / node).exists(), f"the provider still holds {node}"
                assert node not in {n.id for n in c.list_nodes().nodes if n.status == "ready"}
                events = [e.message for e in c.events() if e.kind.startswith("pool.")]
                assert any(f"giving node {node} back: empty for" in m for m in events), events
                assert any(f"node {node} given back" in m for m in events), events
                gone.append(node)
                released_at = time.time()  # nothing is placed on it from now on
    finally:
        subprocess.run(
            [sys.executable, str(LOCAL), "--state", str(state), "--stop-all"], timeout=60, check=False
        )


def test_bad_pools_are_refused_and_change_nothing(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=1)
    path = tmp_path / "pools.yaml"
    path.write_text(
        "pools:\n  burst:\n    provider: {command: [x]}\n    node: {cpu: 1, memory: 1Gi}\n    max: 0\n"
    )
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})
    result = runner.invoke(cli, ["--addr", cluster.addr, "pool", "apply", "-f", str(path)])
    assert result.exit_code == 1 and "pools.burst.max: must be at least 1" in result.output, result.output
    with ShoalClient(cluster.addr, tls=cluster.tls) as c:
        assert c.list_nodes().nodes  # the cluster answers
    assert json.loads(shoal(cluster, "pool", "ls", "-o", "json").output) == {"pools": [], "nodes": []}


def test_a_leader_killed_between_the_request_and_the_join_neither_loses_nor_doubles_the_node(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=2, extra_args=["--cpu", "1", "--memory", "1Gi"])
    state = tmp_path / "pool"
    slow = f"sleep 4; exec {sys.executable} {LOCAL} --state {state}"  # the call outlives the leader
    pools = {
        "pools": {
            "burst": {
                "provider": {"command": ["sh", "-c", slow], "timeout": "60s"},
                "max": 3,
                "node": {"cpu": 2, "memory": "2Gi"},
                "idle_timeout": "10m",
            }
        }
    }
    path = tmp_path / "pools.yaml"
    path.write_text(json.dumps(pools))
    try:
        shoal(cluster, "pool", "apply", "-f", str(path))
        with cluster.client() as c:
            c.apply(BIG)
            resp = c.list_nodes()
        leader = next(m for m in cluster.members if m.node_id == next(n.id for n in resp.nodes if n.leader))
        survivor = next(m for m in cluster.members if m is not leader)

        def requested() -> list[dict]:
            return [n for n in pool_nodes(cluster) if n["state"] == "requested"]

        wait_until_sync(lambda: bool(requested()), 30, interval=0.1, message="a node requested")
        (asked,) = requested()
        leader.kill()  # SIGKILL: between "asked" and "node joined"
        with ShoalClient(survivor.addr, tls=cluster.tls) as c:

            def running_on_pool_node() -> str:
                return next((t.node for t in c.list_tasks("big") if t.state == "running"), "")

            wait_until_sync(running_on_pool_node, 120, interval=0.5, message="big running after the failover")
            assert running_on_pool_node() == asked["node"]
            runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})
            out = runner.invoke(cli, ["--addr", survivor.addr, "pool", "ls", "-o", "json"]).output
            records = json.loads(out)["nodes"]
            assert [(r["node"], r["state"]) for r in records] == [(asked["node"], "joined")], records
            assert sorted(p.name for p in state.iterdir() if p.is_dir()) == [
                asked["node"]
            ]  # one shoald started
            again = [
                e.message
                for e in c.events()
                if e.kind == "pool.node_requested" and e.node == survivor.node_id
            ]
            assert again == [], again  # the new leader asked for no second node
    finally:
        subprocess.run(
            [sys.executable, str(LOCAL), "--state", str(state), "--stop-all"], timeout=60, check=False
        )
