"""The `netns` node-pool provider (deploy/providers/netns.py, issue 15) against a real
cluster whose nodes each have a network namespace: a service too big for the cluster
makes the leader ask for a node; the provider makes a namespace on the cluster's bridge
and starts shoald in it; the node joins at its own address, the replica runs there;
scaled to 0, the node is given back after its idle timeout and its namespace and link
are gone. Also: a create repeated for the same node id (a leader that died mid-call)
answers the same node, and a delete of a node half made removes what was made.

Runs as root (namespaces, links). Deadlines bound correctness, not speed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_until_sync
from tests.integration.netns import netns_cluster
from tests.integration.test_pools import BIG, pool_nodes, shoal

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NETNS = REPO / "deploy" / "providers" / "netns.py"
# the leader runs in a network namespace of its own: its provider works in the machine's
# (this process's), where the bridge is (and, --mount, where /run/netns is the machine's)
MACHINE = ["nsenter", f"--net=/proc/{os.getpid()}/ns/net", f"--mount=/proc/{os.getpid()}/ns/mnt"]


def netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout


def call(command: list[str], request: dict) -> dict:
    done = subprocess.run(command, input=json.dumps(request), capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_pool_node_is_a_namespace_host_on_the_bridge_given_back_when_idle(tmp_path: Path) -> None:
    state = tmp_path / "pool"
    with netns_cluster(tmp_path / "c", nodes=1, extra_args=("--cpu", "1", "--memory", "1Gi")) as cluster:
        command = [sys.executable, str(NETNS), "--state", str(state), "--bridge", cluster.net.bridge]
        pools = {
            "pools": {
                "burst": {
                    "provider": {"command": [*MACHINE, *command], "timeout": "60s"},
                    "max": 1,
                    "node": {"cpu": 2, "memory": "2Gi"},
                    "idle_timeout": "3s",
                    "join_timeout": "90s",
                }
            }
        }
        path = tmp_path / "pools.yaml"
        path.write_text(json.dumps(pools))
        try:
            shoal(cluster, "pool", "apply", "-f", str(path))
            with cluster.client() as c:
                c.apply(BIG)

                def running_on_pool_node() -> str:
                    for t in c.list_tasks("big"):
                        if t.state == "running" and t.node.startswith("burst-"):
                            return t.node
                    return ""

                try:
                    wait_until_sync(running_on_pool_node, 150, interval=0.5, message="big on a pool node")
                except TimeoutError as exc:  # what the provider said, and the node's own log
                    logs = [p.read_text()[-1500:] for p in state.glob("*/shoald.log")]
                    events = [e.message for e in c.events() if e.kind.startswith("pool.")]
                    raise AssertionError(f"{exc}: {pool_nodes(cluster)} {events} {logs}") from None
                node = running_on_pool_node()
                info = {n.id: n for n in c.list_nodes().nodes}[node]
                assert ipaddress.IPv4Address(info.address) in cluster.net.subnet, (
                    info.address
                )  # its own stack
                assert f"sp-{node}" in netns_list()
                record = json.loads((state / node / "node.json").read_text())
                # the daemon runs inside the namespace, not in the machine's
                own = os.stat(f"/proc/{record['pid']}/ns/net").st_ino
                assert own != os.stat("/proc/self/ns/net").st_ino
                assert own == os.stat(f"/run/netns/sp-{node}").st_ino, (own, os.stat(f"/run/netns/sp-{node}"))

                # a create repeated for the same id (its leader died mid-call): the same node
                again = {"action": "create", "pool": "burst", "node": {"id": node, "cpu": 2, "memory": 2**31}}
                again["cluster"] = {"name": cluster.cluster, "etcd": [], "etcd_prefix": "", "join_token": "x"}
                assert call(command, again)["id"] == str(record["pid"])

                c.scale("big", 0)
                wait_until_sync(lambda: not pool_nodes(cluster), 90, interval=0.5, message="node given back")
                assert f"sp-{node}" not in netns_list() and not (state / node).exists()
                link = record["veth"]
                assert subprocess.run(
                    ["ip", "link", "show", link], capture_output=True, timeout=30
                ).returncode
        finally:
            subprocess.run([*command, "--stop-all"], timeout=90, check=False)
    assert "sp-burst-" not in netns_list()


def test_a_node_half_made_is_removed_by_delete_and_made_afresh_by_create(tmp_path: Path) -> None:
    state = tmp_path / "pool"
    with netns_cluster(tmp_path / "c", nodes=1) as cluster:
        command = [sys.executable, str(NETNS), "--state", str(state), "--bridge", cluster.net.bridge]
        node = "burst-0badc0de"
        try:
            # a provider killed after its record and namespace, before the link and shoald
            home = state / node
            home.mkdir(parents=True)
            record = {
                "pid": 0,
                "address": "x",
                "port": 7070,
                "node": node,
                "netns": f"sp-{node}",
                "veth": "spvhalf",
            }
            (home / "node.json").write_text(json.dumps(record))
            subprocess.run(["ip", "netns", "add", f"sp-{node}"], check=True, timeout=30)
            assert call(command, {"action": "delete", "pool": "burst", "node": {"id": node}}) == {}
            assert f"sp-{node}" not in netns_list() and not home.exists()
            assert call(command, {"action": "delete", "pool": "burst", "node": {"id": node}}) == {}  # gone
        finally:
            subprocess.run([*command, "--stop-all"], timeout=90, check=False)
