"""A rolling upgrade of shoald: two builds in one cluster, hosts upgraded one by one.

Build B is this tree copied, with what a next release typically adds: a proto field
that B sets on the wire (`Node.upgrade_probe` in the client API, `MemberUpdate.
upgrade_probe` in gossip: A ignores it as an unknown field), a spec field A does not
know (`upgrade_note`), and another version string. A 3-node cluster starts on build A
(this tree); each node in turn is stopped (SIGTERM) and started again on build B.
Asserted, the compatibility rule of docs/operations.md ("Upgrading"):

- while a node restarts, requests through another node's mesh all succeed;
- no replica restarts: the same containers run before, during and after;
- A's CLI reads B's answers and B's gossip reaches A (the cluster stays whole, a leader);
- while any node runs A, a spec using B's new field is refused, and nothing is written:
  through a B node naming the A nodes to upgrade first, through an A node as a field it
  does not know; once every node runs B it is accepted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from node.dev.devcluster import DevCluster, NodeProcess
from node.dev.freeports import free_port_on_all
from node.runtime.base import LABELS
from node.wire.client import ShoalError
from tests.helpers import wait_until_sync
from tests.integration.load import Load

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
B_VERSION = "9.9.9-upgrade"
WEB = """
name: web
image: shoal-demo/web:1
replicas: 3
ports:
  - {container: 8080, published: %d, protocol: http}
"""
NOTE = "upgrade_note: shown only to builds that know it\n"


def _patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"build B: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def build_b(where: Path) -> Path:
    """This tree with a proto field, a spec field and a version more: the next build."""
    for package in ("node", "leader", "proto"):
        shutil.copytree(ROOT / package, where / package, ignore=shutil.ignore_patterns("__pycache__"))
    _patch(where / "node/__init__.py", '__version__ = "', f'__version__ = "{B_VERSION}"  # was "')
    api, peer = where / "proto/shoal/v1/api.proto", where / "proto/shoal/v1/peer.proto"
    _patch(api, "message Node {\n", "message Node {\n  string upgrade_probe = 999;\n")
    _patch(peer, "message MemberUpdate {\n", "message MemberUpdate {\n  string upgrade_probe = 999;\n")
    _patch(where / "node/api/convert.py", "api_pb2.Node(\n", 'api_pb2.Node(\n        upgrade_probe="b",\n')
    _patch(where / "node/api/gossip_transport.py", "peer_pb2.MemberUpdate(\n",
           'peer_pb2.MemberUpdate(\n            upgrade_probe="b",\n')  # fmt: skip
    spec = where / "node/model/spec.py"
    text = spec.read_text()
    text, n = re.subn(
        r"(\n    depends_on: DependsOn \| None = None[^\n]*\n)",
        r"\1    upgrade_note: str | None = None  # build B only\n",
        text,
    )
    assert n == 1, "build B: ServiceSpec's last field moved; update this test"
    spec.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(where)}
    done = subprocess.run([sys.executable, "-m", "node.pb.generate"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    check = subprocess.run([sys.executable, "-c", "import node; print(node.__version__)"], cwd=where,
                           env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.stdout.strip() == B_VERSION, check.stderr
    return where


def start_on(member: NodeProcess, build: Path) -> None:
    """Start `member`'s daemon from `build` (its own `node` package first on the path)."""
    log = member.log_path.open("ab")
    env = {**os.environ, "PYTHONPATH": str(build)}
    cmd = [sys.executable, "-m", "node.daemon", *member.args]
    member.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=build, env=env, start_new_session=True)


def web_containers(cluster: DevCluster) -> set[str]:
    client = docker.from_env()
    try:
        found = client.containers.list(filters={"label": f"{LABELS.CLUSTER}={cluster.cluster}"})
        return {c.id for c in found if c.labels.get(LABELS.SERVICE) == "web"}
    finally:
        client.close()


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status == 200


def versions(cluster: DevCluster, through: int) -> dict[str, str]:
    with cluster.client(through) as c:
        resp = c.list_nodes()
    return {n.id: n.version for n in resp.nodes if n.status == "ready"} if resp.epoch > 0 else {}


def test_hosts_upgraded_one_by_one_keep_serving_and_gate_new_spec_fields(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    b = build_b(tmp_path / "build-b")
    cluster = make_cluster()
    hosts = [m.address for m in cluster.members]
    port = free_port_on_all(hosts)
    with cluster.client() as c:
        c.apply(WEB % port, "web.yaml")
    before = wait_until_sync(lambda: len(web_containers(cluster)) == 3 and web_containers(cluster), 60, 0.2,
                             "3 replicas of web")  # fmt: skip
    ids = {m.node_id for m in cluster.members}
    served = 0
    for i, member in enumerate(cluster.members, start=1):
        other = cluster.members[i % len(cluster.members)]  # the next node serves while i restarts
        url = f"http://{other.address}:{port}/"
        wait_until_sync(lambda u=url: answers(u), 30, 0.2, f"the mesh answering through {other.node_id}")
        with Load(url, rate=50, max_seconds=120, max_requests=6000) as load:
            member.stop()  # SIGTERM: resign, drain, keep the containers and the lease
            start_on(member, b)
            want = {m.node_id: B_VERSION for m in cluster.members[:i]}

            def upgraded(want: dict[str, str] = want, through: int = other.index) -> bool:
                seen = versions(cluster, through)
                return set(seen) == ids and {n: v for n, v in seen.items() if v == B_VERSION} == want

            wait_until_sync(upgraded, 60, 0.2, f"{member.node_id} back on build B, all ready, a leader")
            results = load.stop()
        failed = [r for r in results if not r.ok]
        assert not failed, (
            f"{len(failed)} of {len(results)} requests through {other.node_id} failed: {failed[:3]}"
        )
        served += len(results)
        assert web_containers(cluster) == before, "a replica was restarted by the upgrade"
        if i < len(cluster.members):  # mixed: B's new field is refused, through an A and a B node
            with cluster.client(member.index) as c, pytest.raises(ShoalError) as err:
                c.apply(WEB % port + NOTE, "web.yaml")  # through B: an A node could not read it
            assert "upgrade_note" in str(err.value) and "upgrade every node first" in str(err.value)
            assert cluster.members[-1].node_id in str(err.value)  # an A node, named
            with cluster.client(other.index) as c, pytest.raises(ShoalError) as err:
                c.apply(WEB % port + NOTE, "web.yaml")  # through A: a field it does not know
            assert "unknown field 'upgrade_note'" in str(err.value)
            with cluster.client(other.index) as c:
                assert c.apply(WEB % port, "web.yaml").changed is False  # nothing was written
    with cluster.client(2) as c:  # every node on B: the new field goes through
        assert c.apply(WEB % port + NOTE, "web.yaml").changed is True
    print(f"\nrolling upgrade of 3 nodes: {served} requests, 0 failed, 0 replicas restarted")
