"""Stacks on a real 2-node cluster (real etcd, real Docker), deployed from a Compose file
with the busybox demo image: depends_on holds web back until db is healthy (`stack ps`
says so), a redeploy updates only what changed, `stack rm` removes every service and
container. Waits poll with a deadline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner

from node.cli.main import cli
from node.dev.devcluster import DevCluster
from node.runtime.base import LABELS
from tests.helpers import free_port_on_all, wait_until_sync

pytestmark = pytest.mark.integration

COMPOSE = """\
name: shop
services:
  db:
    image: shoal-demo/web:1
    healthcheck:
      test: ["CMD-SHELL", "test -f /tmp/ready"]
      interval: 500ms
      timeout: 1s
      retries: 1
    labels: {team: data}
    hostname: db1
  web:
    image: shoal-demo/web:1
    environment:
      GREETING: "${GREETING:-hello}"
    ports:
      - "PORT:8080"
    depends_on:
      db:
        condition: service_healthy
    deploy:
      replicas: REPLICAS
"""


def _containers(cluster: DevCluster, service: str) -> list[docker.models.containers.Container]:
    client = docker.from_env()
    try:
        labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}={service}"]
        return list(client.containers.list(filters={"label": labels}))
    finally:
        client.close()


def test_stack_from_compose(make_cluster: Callable[..., DevCluster], tmp_path: Path) -> None:
    cluster = make_cluster(2)
    port = free_port_on_all(["127.0.0.1", "127.0.0.2"])
    compose = tmp_path / "compose.yaml"
    compose.write_text(COMPOSE.replace("PORT", str(port)).replace("REPLICAS", "2"))
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})

    def shoal(*args: str) -> str:
        result = runner.invoke(cli, ["--addr", cluster.addr, *args])
        assert result.exit_code == 0, result.output + (result.stderr or "")
        return result.output + result.stderr

    def ps_saying(text: str) -> str | None:
        out = shoal("stack", "ps", "shop")
        return out if text in out else None

    out = shoal("stack", "deploy", "-c", str(compose), "shop")
    assert "service shop_db: created (version 1)" in out and "service shop_web: created (version 1)" in out
    assert "services.db.hostname: ignored" in out  # the warning, with its line
    assert "labels" not in out  # honoured (decision 73): on the containers, below
    with cluster.client() as c:
        # db runs but is not healthy: web waits, with the reason in `stack ps`, and has no task
        wait_until_sync(lambda: [t for t in c.tasks("shop_db").tasks if t.state == "running"], 60)
        ps = wait_until_sync(lambda: ps_saying("waiting for db (healthy)"), 30)
        assert "shop_web" in ps
        assert list(c.tasks("shop_web").tasks) == []
        # db turns healthy: web is placed and runs
        (container,) = _containers(cluster, "shop_db")
        assert container.labels["team"] == "data" and container.labels[LABELS.SERVICE] == "shop_db"
        assert container.exec_run(["touch", "/tmp/ready"]).exit_code == 0
        wait_until_sync(
            lambda: len([t for t in c.tasks("shop_web").tasks if t.state == "running"]) == 2 or None, 60
        )
        web = {s.name: s for s in c.list_stacks("shop")[0].services}["shop_web"]
        assert '"GREETING": "hello"' in web.spec_json and web.pending_reason == ""
        assert "shop" in shoal("stack", "ls")

    # redeploy: only web changes (3 replicas, a new version); db is unchanged
    compose.write_text(COMPOSE.replace("PORT", str(port)).replace("REPLICAS", "3"))
    out = shoal("stack", "deploy", "-c", str(compose), "shop")
    assert "service shop_db: unchanged (version 1)" in out and "service shop_web: updated (version 2)" in out
    with cluster.client() as c:
        wait_until_sync(
            lambda: len([t for t in c.tasks("shop_web").tasks if t.state == "running"]) == 3 or None, 60
        )
        # db turns unhealthy later: web is not stopped, `stack ps` shows it
        (container,) = _containers(cluster, "shop_db")
        container.exec_run(["rm", "-f", "/tmp/ready"])
        wait_until_sync(lambda: ps_saying("dependency not met now: db (healthy)"), 30)
        assert len([t for t in c.tasks("shop_web").tasks if t.state == "running"]) == 3

    out = shoal("stack", "rm", "shop")
    assert "service shop_db: removed" in out and "service shop_web: removed" in out
    with cluster.client() as c:
        assert [s.name for s in c.list_services()] == []
    wait_until_sync(
        lambda: (not _containers(cluster, "shop_web") and not _containers(cluster, "shop_db")) or None, 60
    )


def test_compose_with_build_is_refused_and_writes_nothing(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(1)
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  app:\n    build: .\n    image: shoal-demo/web:1\n")
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})
    result = runner.invoke(cli, ["--addr", cluster.addr, "stack", "deploy", "-c", str(compose), "shop"])
    assert result.exit_code == 1
    assert "compose.yaml:3:5: services.app.build: refused" in result.stderr
    with cluster.client() as c:
        assert list(c.list_services()) == []
