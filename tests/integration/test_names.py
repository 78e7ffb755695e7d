"""Reaching a service by name on a real 2-node `shoal dev` cluster (real etcd, Docker,
the agent's containers): a client container of stack `app` reaches `db` (and `app.db`,
`app_db`) on its container port, answered by replicas on both nodes through the VIP;
a container of another stack reaches `app.db` but not the bare `db`; after `stack rm`
the names stop answering and the VIP stops listening; a re-deployed stack gets a fresh
VIP. Waits poll with a deadline."""

from __future__ import annotations

import subprocess
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

APP = """\
name: app
services:
  db:
    image: shoal-demo/web:1
    expose: ["8080"]
    deploy:
      replicas: 2  # spread: one on each node
  client:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
"""

OTHER = """\
name: other
services:
  client:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
"""


def containers(cluster: DevCluster, service: str) -> list[docker.models.containers.Container]:
    client = docker.from_env()
    try:
        labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}={service}"]
        return list(client.containers.list(filters={"label": labels}))
    finally:
        client.close()


def sh(container: docker.models.containers.Container, script: str) -> tuple[int, str]:
    # busybox wget's own -T crashes this static build: `timeout` bounds every request instead
    code, out = container.exec_run(["sh", "-c", script])
    return code, out.decode(errors="replace")


def test_a_service_is_reached_by_name_from_containers_on_every_node(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(2)
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})

    def shoal(*args: str) -> str:
        result = runner.invoke(cli, ["--addr", cluster.addr, *args])
        assert result.exit_code == 0, result.output + (result.stderr or "")
        return result.output

    for name, text in (("app", APP), ("other", OTHER)):
        (tmp_path / f"{name}.yaml").write_text(text)
        shoal("stack", "deploy", "-c", str(tmp_path / f"{name}.yaml"), name)
    dbs = wait_until_sync(lambda: c if len(c := containers(cluster, "app_db")) == 2 else None, 60)
    by_host = {c.attrs["Config"]["Hostname"]: c.labels[LABELS.NODE] for c in dbs}
    assert sorted(by_host.values()) == ["n1", "n2"]  # one replica on each node
    client = wait_until_sync(lambda: (c := containers(cluster, "app_client")) and c[0], 60)
    other = wait_until_sync(lambda: (c := containers(cluster, "other_client")) and c[0], 60)
    resolv = sh(client, "cat /etc/resolv.conf")[1]
    dns = cluster.vip_range.rsplit(".", 1)[0] + ".1"
    assert f"nameserver {dns}" in resolv and "search app.shoal" in resolv

    def answered_by(container: docker.models.containers.Container, name: str, n: int) -> set[str]:
        script = f"for i in $(seq {n}); do timeout 5 wget -qO- http://{name}:8080/ || echo FAILED; done"
        return {line.rsplit(" ", 1)[-1] for line in sh(container, script)[1].splitlines() if line.strip()}

    # the replicas become routable once running: poll until both answer, then every form
    wait_until_sync(lambda: answered_by(client, "db", 6) == set(by_host) or None, 60, 0.5, "db by name")
    for name in ("app.db", "app_db", "db.app.shoal"):
        assert answered_by(client, name, 6) == set(by_host), name
    assert answered_by(other, "app.db", 6) == set(by_host)  # across stacks
    code, out = sh(other, "timeout 5 wget -qO- http://db:8080/")
    assert code != 0, out  # `db` alone is stack app's name only
    code, out = sh(client, "nslookup app_db")
    vip = out.rsplit("Address:", 1)[-1].split()[0]
    assert code == 0 and vip.startswith(cluster.vip_range.rsplit(".", 1)[0] + "."), out
    code, out = sh(client, "nslookup -type=SRV db.app.shoal")
    assert code == 0 and "8080 db.app.shoal" in out, out

    shoal("stack", "rm", "app")

    def name_gone() -> bool:
        code, out = sh(other, "nslookup app.db")
        return code != 0 and "NXDOMAIN" in out

    wait_until_sync(name_gone, 30, 0.5, "app.db gone after stack rm")
    code, out = sh(other, f"timeout 5 nc {vip} 8080 </dev/null")
    assert code != 0, out  # nothing listens on the old VIP
    assert subprocess.run(["ip", "route", "show", "table", "local", cluster.vip_range], capture_output=True,
                          text=True, check=True).stdout.strip() != ""  # fmt: skip

    shoal("stack", "deploy", "-c", str(tmp_path / "app.yaml"), "app")
    client = wait_until_sync(lambda: (c := containers(cluster, "app_client")) and c[0], 60)

    def fresh_vip() -> str | None:
        code, out = sh(other, "nslookup app.db")
        address = out.rsplit("Address:", 1)[-1].split()[0] if code == 0 else ""
        return address if address and address != vip else None

    wait_until_sync(fresh_vip, 30, 0.5, "a fresh VIP for the re-deployed app_db")
    wait_until_sync(lambda: len(answered_by(other, "app.db", 6) - {"FAILED"}) == 2 or None, 60, 0.5)
