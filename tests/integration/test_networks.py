"""Networks scope names and VIPs (decision 64) on a real 2-node `shoal dev` cluster: in a
Compose stack, `api` (frontnet + backnet) resolves and reaches `db` (backnet); `front`
(frontnet only) can neither resolve `db` nor connect to its VIP, and neither can a
service on the cluster network (`plain`, no networks), which still reaches `pub` (also
on the cluster network) that `front` cannot; the host itself reaches every VIP. Waits
poll with a deadline."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner

from node.cli.main import cli
from node.dev.devcluster import DevCluster
from node.runtime.base import LABELS
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

SHOP = """\
name: shop
services:
  db:
    image: shoal-demo/web:1
    expose: ["8080"]
    networks: [backnet]
    deploy: {replicas: 2}
  pub:
    image: shoal-demo/web:1
    expose: ["8080"]
  api:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
    networks: [frontnet, backnet]
  front:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
    networks: [frontnet]
  plain:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
networks:
  frontnet: {}
  backnet: {}
"""


def one(cluster: DevCluster, service: str) -> docker.models.containers.Container | None:
    client = docker.from_env()
    try:
        labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}={service}"]
        found = [c for c in client.containers.list(filters={"label": labels}) if c.status == "running"]
        return found[0] if found else None
    finally:
        client.close()


def sh(container: docker.models.containers.Container, script: str) -> tuple[int, str]:
    code, out = container.exec_run(["sh", "-c", script])
    return code, out.decode(errors="replace")


def test_a_service_on_another_network_cannot_resolve_or_reach_db(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(2)
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})
    (tmp_path / "shop.yaml").write_text(SHOP)
    result = runner.invoke(
        cli, ["--addr", cluster.addr, "stack", "deploy", "-c", str(tmp_path / "shop.yaml"), "shop"]
    )
    assert result.exit_code == 0, result.output
    assert "networks" not in result.output  # translated, not ignored
    api, front, plain = (
        wait_until_sync(lambda s=s: one(cluster, s), 60) for s in ("shop_api", "shop_front", "shop_plain")
    )

    def get(container: docker.models.containers.Container, target: str) -> str:
        return sh(container, f"timeout 5 wget -qO- http://{target}:8080/ 2>&1 || echo FAILED")[1].strip()

    wait_until_sync(lambda: get(api, "db").startswith("web v1") or None, 60, 0.5, "api reaches db by name")
    code, out = sh(api, "nslookup db")
    vip = out.rsplit("Address:", 1)[-1].split()[0]
    assert code == 0 and vip.startswith(cluster.vip_range.rsplit(".", 1)[0] + "."), out
    wait_until_sync(lambda: get(plain, "pub").startswith("web v1") or None, 60, 0.5, "plain reaches pub")

    # front (frontnet only) and plain (the cluster network): db neither resolves nor answers
    for container in (front, plain):
        for name in ("db", "shop.db", "shop_db", "db.shop.shoal"):
            code, out = sh(container, f"nslookup {name}")
            assert code != 0 and vip not in out, (container.name, name, out)
        refused = get(container, vip)
        assert refused.endswith("FAILED") and "reset by peer" in refused, (container.name, refused)
        code, out = sh(container, f"timeout 5 nc {vip} 8080 </dev/null; echo rc=$?")
        assert "web v1" not in out, out
    # front is not on the cluster network: pub is hidden from it too
    code, out = sh(front, "nslookup pub")
    assert code != 0, out
    pub_vip = sh(plain, "nslookup pub")[1].rsplit("Address:", 1)[-1].split()[0]
    refused = get(front, pub_vip)
    assert refused.endswith("FAILED") and "reset by peer" in refused, refused
    # api still reaches db (the refusals are per source), and the host reaches every VIP
    assert get(api, "db").startswith("web v1")
    with socket.create_connection((vip, 8080), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answer = b""
        for _ in range(64):  # to the end of the answer: the body may come in a later segment
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        assert b"web v1" in answer, answer
