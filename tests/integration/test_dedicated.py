"""`launch: dedicated` against a real cluster (issue 15 item 3, decision 68): a dedicated
service of 2 replicas gets 2 new nodes from the `local` provider, each sized from the
table (0.3 cpu 600Mi -> 0.5 vCPU 1 GiB), each running exactly one of its replicas and
nothing else, even a service that asks for those nodes by label; scaled to 1, one node
is given back at once (the pool's idle_timeout is 10 minutes); removed, none is left.

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

from node.dev.devcluster import DevCluster
from tests.helpers import wait_until_sync
from tests.integration.test_pools import LOCAL, pool_nodes, provider_command, shoal

pytestmark = pytest.mark.integration

GI = 2**30
SOLO = (
    "name: solo\nimage: shoal-demo/web:1\nreplicas: 2\nlaunch: dedicated\n"
    "resources: {cpu: 0.3, memory: 600Mi}\n"
)
# an ordinary service that asks for the dedicated nodes by label: refused there all the same
INTRUDER = (
    "name: intruder\nimage: shoal-demo/web:1\nreplicas: 2\nresources: {cpu: 0.05, memory: 32Mi}\n"
    "placement: {constraints: [node.labels.shoal.dedicated == solo]}\n"
)
FILLER = "name: filler\nimage: shoal-demo/web:1\nreplicas: 3\nresources: {cpu: 0.05, memory: 32Mi}\n"


def test_a_dedicated_service_gets_a_node_per_replica_sized_from_the_table_and_gives_them_back(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=1, extra_args=["--cpu", "1", "--memory", "1Gi"])
    state = tmp_path / "pool"
    pools = {
        "pools": {
            "burst": {
                "provider": {"command": provider_command(state), "timeout": "60s"},
                "max": 4,
                "node": {"cpu": 2, "memory": "2Gi"},
                "idle_timeout": "10m",  # a dedicated node does not wait for it
                "join_timeout": "90s",
            }
        }
    }
    path = tmp_path / "pools.yaml"
    path.write_text(json.dumps(pools))
    try:
        shoal(cluster, "pool", "apply", "-f", str(path))
        with cluster.client() as c:
            started = time.monotonic()
            c.apply(SOLO)

            def running() -> dict[str, str]:  # task -> node, running on a pool node
                return {
                    t.task_id: t.node
                    for t in c.list_tasks("solo")
                    if t.state == "running" and t.node.startswith("burst-")
                }

            wait_until_sync(
                lambda: len(running()) == 2, 150, interval=0.5, message="2 replicas on pool nodes"
            )
            to_running = time.monotonic() - started
            nodes = sorted(running().values())
            assert len(set(nodes)) == 2, nodes  # one replica per node
            infos = {n.id: n for n in c.list_nodes().nodes}
            for n in nodes:
                assert (infos[n].cpu, infos[n].memory) == (0.5, GI), (n, infos[n].cpu, infos[n].memory)
                labels = dict(infos[n].labels)
                assert labels["shoal.dedicated"] == "solo" and labels["shoal.pool"] == "burst", labels
            asked = [m for m in (e.message for e in c.events()) if "asking its provider" in m]
            assert len(asked) == 2 and all(
                "(0.5 cpu, 1 GiB) dedicated to one replica of solo" in m for m in asked
            )
            records = pool_nodes(cluster)
            assert sorted(n["node"] for n in records) == nodes  # no other node asked for
            assert {(n["dedicated"], n["cpu"], n["memory"]) for n in records} == {("solo", 0.5, GI)}
            assert "solo (0.5 cpu 1 GiB)" in shoal(cluster, "pool", "ls").output

            c.apply(FILLER)
            c.apply(INTRUDER)

            def settled() -> bool:
                tasks = c.list_tasks("filler")
                return len(tasks) == 3 and all(t.state == "running" for t in tasks)

            wait_until_sync(settled, 90, interval=0.5, message="filler running")
            wait_until_sync(
                lambda: "excluded by launch: dedicated" in c.tasks("intruder").pending_reason,
                30, interval=0.5, message="intruder pending, refused by the dedicated nodes",
            )  # fmt: skip
            every = [(t.service, t.node) for s in ("filler", "intruder", "solo") for t in c.list_tasks(s)]
            assert sorted(x for x in every if x[1] in nodes) == sorted(("solo", n) for n in nodes)
            assert not [t for t in c.list_tasks("intruder") if t.state == "running"]
            assert sorted(n["node"] for n in pool_nodes(cluster)) == nodes  # the intruder asks no node

            started = time.monotonic()
            c.scale("solo", 1)

            def given_back() -> list[str]:
                return [n["node"] for n in pool_nodes(cluster) if n["state"] in ("deleting", "released")] + [
                    n for n in nodes if n not in {p["node"] for p in pool_nodes(cluster)}
                ]

            wait_until_sync(lambda: given_back(), 60, interval=0.2, message="one node given back")
            to_given_back = time.monotonic() - started
            assert to_given_back < 30, to_given_back  # at once, not after idle_timeout (10 min)
            [gone] = given_back()
            [kept] = [n for n in nodes if n != gone]
            assert [t.node for t in c.list_tasks("solo") if t.state == "running"] == [kept]
            events = [e.message for e in c.events() if e.kind.startswith("pool.")]
            assert any(f"giving node {gone} back: its task is gone" in m for m in events), events

            started = time.monotonic()
            c.delete_service("solo")
            wait_until_sync(lambda: not pool_nodes(cluster), 90, interval=0.5, message="no pool node left")
            to_none = time.monotonic() - started
            assert not any((state / n).exists() for n in nodes), "the provider still holds a node"
            print(f"\ndedicated: apply -> 2 running {to_running:.1f}s; scale 1 -> given back "
                  f"{to_given_back:.1f}s; remove -> no record {to_none:.1f}s")  # fmt: skip
    finally:
        subprocess.run(
            [sys.executable, str(LOCAL), "--state", str(state), "--stop-all"], timeout=60, check=False
        )
