"""Decision 72 on a real dev cluster (real etcd, real Docker): a Compose stack's own secret
goes in the stack's one transaction. A stack the server refuses (its published port is
another service's: only the server knows) leaves the secret unwritten; the good deploy
writes it, owned by the stack; `stack rm` removes it and leaves a `shoal secret create`d
one the stack used as `external:`. The value is in no output, answer, event, etcd value or
daemon log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from node.dev.devcluster import DevCluster
from tests.helpers import wait_until_sync
from tests.integration.test_secrets import etcd_values, forms

REPO = Path(__file__).resolve().parents[2]
DB_PW = b"stack-own-db-pw-7a3c19e2"
SHARED = b"created-by-hand-4be0d6"

COMPOSE = """\
name: shop
services:
  api:
    image: shoal-demo/base:1
    command: ["sleep", "3600"]
    ports: ["{port}:8080"]
    stop_grace_period: 1s
    secrets: [db_pw, shared]
secrets:
  db_pw:
    file: ./db_pw.txt
  shared:
    external: true
    name: shared_key
"""


@pytest.fixture
def cluster(make_cluster: Callable[..., DevCluster]) -> DevCluster:
    return make_cluster(nodes=1)


def test_a_refused_stack_writes_no_secret_and_rm_takes_only_its_own(
    cluster: DevCluster, tmp_path: Path
) -> None:
    project = tmp_path / "shop"
    project.mkdir()
    (project / "db_pw.txt").write_bytes(DB_PW)
    env = {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(REPO)}

    def shoal(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "node.cli.main", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert DB_PW.decode() not in done.stdout + done.stderr, "the value in the CLI's output"
        return done

    with cluster.client() as c:
        c.put_object("secret", "shared_key", SHARED)  # `shoal secret create shared_key`
        c.apply("name: other\nimage: shoal-demo/base:1\ncommand: [sleep, '3600']\n"
                "ports: [{container: 80, published: 18090}]\n", "other.yaml")  # fmt: skip

    # Refused by the server only: the client's own checks pass, the port is other's.
    (project / "compose.yaml").write_text(COMPOSE.format(port=18090))
    refused = shoal("stack", "deploy", "-c", str(project / "compose.yaml"))
    assert refused.returncode == 1 and "already published by service 'other'" in refused.stderr, refused
    with cluster.client() as c:
        assert [o.name for o in c.list_objects("secret")] == ["shared_key"], "the refused stack wrote"
        assert c.list_stacks() == []

    (project / "compose.yaml").write_text(COMPOSE.format(port=18091))
    done = shoal("stack", "deploy", "-c", str(project / "compose.yaml"))
    assert done.returncode == 0, done.stderr
    assert f"secret shop_db_pw: created ({len(DB_PW)} bytes" in done.stdout, done.stdout
    with cluster.client() as c:
        owners = {o.name: o.stack for o in c.list_objects("secret")}
        assert owners == {"shop_db_pw": "shop", "shared_key": ""}
        version = c.get_service("shop_api").version

    def running() -> bool:
        with cluster.client() as c:
            return any(t.state == "running" for t in c.list_tasks("shop_api"))

    wait_until_sync(running, 90, 0.3, "shop_api running with both secrets")

    again = shoal("stack", "deploy", "-c", str(project / "compose.yaml"))
    assert again.returncode == 0 and "secret shop_db_pw: unchanged" in again.stdout, again.stderr
    with cluster.client() as c:
        assert c.get_service("shop_api").version == version, "an unchanged redeploy rolled"

    removed = shoal("stack", "rm", "shop")
    assert removed.returncode == 0, removed.stderr
    assert "secret shop_db_pw: removed" in removed.stdout and "shared_key" not in removed.stdout
    with cluster.client() as c:
        assert [o.name for o in c.list_objects("secret")] == ["shared_key"]
        events = "\n".join(f"{e.kind} {e.message}" for e in c.events())
    assert "shop_db_pw created" in events
    logs = "\n".join(m.log_path.read_text(errors="replace") for m in cluster.members)
    everything = b"\n".join(etcd_values(cluster))
    for value in (DB_PW, SHARED):
        assert value.decode() not in events and value.decode() not in logs
        assert not any(f in everything for f in forms(value)), "clear text in an etcd value"
