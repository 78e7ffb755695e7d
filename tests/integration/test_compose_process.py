"""Decision 70 on a real dev cluster: a Compose file written the way projects write them
(secrets from files next to it, an entrypoint, a user, a working directory, a read-only
root, log rotation) deployed with `shoal stack deploy -c`; checked inside the container
with `docker exec`, and the secret's clear text in no etcd value, API answer or CLI output.
A bad file anywhere writes nothing; a changed secret file rolls the service to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from node.dev.devcluster import DevCluster
from tests.helpers import wait_until_sync
from tests.integration.test_secrets import etcd_values, forms

REPO = Path(__file__).resolve().parents[2]
DB_PW = b"compose-db-pw-5e1f0a77\n"
DB_PW_2 = b"compose-db-pw-rotated-93bd\n"
API_KEY = "compose-api-key-2c4d81"

COMPOSE = """\
# the shop's API, as its repository has it
name: shop
services:
  api:
    image: shoal-demo/base:1
    entrypoint: ["/bin/sh", "-c"]
    command: ["exec sleep 3600"]
    user: "1000:1000"
    working_dir: /srv/app
    read_only: true
    environment:
      DB_PASSWORD_FILE: /run/secrets/db_pw
    secrets:
      - db_pw
      - source: api_key
        target: api_key
        mode: 0444
    configs:
      - source: app_conf
        target: /etc/app/app.conf
    logging:
      driver: json-file
      options:
        max-size: 1m
        max-file: "2"
    stop_grace_period: 1s
    deploy:
      update_config:
        order: stop-first

secrets:
  db_pw:
    file: ./secrets/db_pw.txt
  api_key:
    environment: SHOP_API_KEY
configs:
  app_conf:
    file: ./app.conf
"""


@pytest.fixture
def cluster(make_cluster: Callable[..., DevCluster]) -> DevCluster:
    return make_cluster(nodes=1)


def docker_exec(cid: str, *cmd: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ["docker", "exec", *(["-u", user] if user else []), cid, *cmd]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def test_a_compose_stack_with_secrets_from_files_and_its_process(cluster: DevCluster, tmp_path: Path) -> None:
    project = tmp_path / "shop"
    (project / "secrets").mkdir(parents=True)
    (project / "secrets" / "db_pw.txt").write_bytes(DB_PW)
    (project / "app.conf").write_text("listen 8080\n")
    (project / "compose.yaml").write_text(COMPOSE)
    env = {
        **os.environ,
        "SHOAL_CONTEXT_FILE": str(cluster.context_file),
        "PYTHONPATH": str(REPO),
        "SHOP_API_KEY": API_KEY,
    }

    def shoal(*args: str) -> subprocess.CompletedProcess[str]:  # from elsewhere: paths are the file's
        cmd = [sys.executable, "-m", "node.cli.main", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)

    # A bad file anywhere (the config's path here): refused at its line, nothing written.
    (project / "bad.yaml").write_text(COMPOSE.replace("file: ./app.conf", "file: ./missing.conf"))
    bad = shoal("stack", "deploy", "-c", str(project / "bad.yaml"))
    assert bad.returncode == 1 and "bad.yaml:38:5: configs.app_conf.file: cannot read" in bad.stderr, (
        bad.stderr
    )
    with cluster.client() as c:  # (etcd's revision moves on its own here: the daemons' leases)
        written = [*c.list_objects("secret"), *c.list_objects("config"), *c.list_stacks()]
    assert written == [], "a refused deploy writes nothing, not even the good secrets"

    done = shoal("stack", "deploy", "-c", str(project / "compose.yaml"))
    assert done.returncode == 0, done.stderr
    assert "secret shop_db_pw: created" in done.stdout and "config shop_app_conf: created" in done.stdout
    for text in (done.stdout, done.stderr):
        assert DB_PW.decode().strip() not in text and API_KEY not in text

    def running(version: int = 0) -> Callable[[], str]:
        def find() -> str:
            with cluster.client() as c:
                for t in c.list_tasks("shop_api"):
                    if t.state == "running" and t.container_id and t.version >= version:
                        return t.container_id
            return ""

        return find

    cid = wait_until_sync(running(), 90, 0.3, "shop_api running")

    # The secrets: content and mode, as Swarm mounts them.
    assert docker_exec(cid, "cat", "/run/secrets/db_pw", user="0").stdout.encode() == DB_PW
    mode = docker_exec(cid, "stat", "-c", "%a %u", "/run/secrets/db_pw", user="0").stdout
    assert mode.split() == ["400", "0"], mode
    assert docker_exec(cid, "cat", "/run/secrets/db_pw").returncode != 0, "0400: not for user 1000"
    assert docker_exec(cid, "stat", "-c", "%a", "/run/secrets/api_key", user="0").stdout.split() == ["444"]
    assert docker_exec(cid, "cat", "/run/secrets/api_key").stdout == API_KEY  # read by the app's user
    assert docker_exec(cid, "cat", "/etc/app/app.conf").stdout == "listen 8080\n"

    # The process: its user, its directory, its entrypoint, a read-only root.
    status = docker_exec(cid, "cat", "/proc/1/status").stdout
    uid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    gid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Gid:"))
    assert uid == ["1000"] * 4 and gid == ["1000"] * 4, status
    assert (
        docker_exec(cid, "readlink", "/proc/1/cwd").stdout.strip() == "/srv/app"
    )  # as its user: root may not
    assert docker_exec(cid, "cat", "/proc/1/cmdline").stdout.split("\0")[:2] == ["sleep", "3600"]
    write = docker_exec(cid, "touch", "/srv/app/x", user="0")
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write
    root = docker_exec(cid, "sh", "-c", "awk '$2 == \"/\" {print $4}' /proc/mounts").stdout
    assert root.split(",")[0] == "ro", root
    client = docker.from_env()
    try:
        inspected = client.api.inspect_container(cid)
    finally:
        client.close()
    assert inspected["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1m", "max-file": "2"},
    }
    assert not any(f in json.dumps(inspected).encode() for f in forms(DB_PW)), "secret in docker inspect"

    # The clear text in no etcd value and no API answer.
    with cluster.client() as c:
        shown = c.get_service("shop_api").spec_json
        answers = [shown, str(c.list_objects("secret")), str(c.list_stacks()), str(c.history("shop_api"))]
        answers.append("\n".join(f"{e.kind} {e.message}" for e in c.events()))
        version = c.get_service("shop_api").version
    spec = json.loads(shown)
    assert (spec["user"], spec["working_dir"], spec["read_only"]) == ("1000:1000", "/srv/app", True)
    assert [s["source"] for s in spec["secrets"]] == ["shop_db_pw", "shop_api_key"]
    everything = b"\n".join(etcd_values(cluster))
    for value in (DB_PW, API_KEY.encode()):
        assert not any(f in everything for f in forms(value)), "clear text in an etcd value"
        assert not any(value.decode().strip() in a for a in answers), "clear text in an API answer"

    # The same deploy again: nothing changes, nothing rolls.
    again = shoal("stack", "deploy", "-c", str(project / "compose.yaml"))
    assert again.returncode == 0 and "secret shop_db_pw: unchanged" in again.stdout, again.stderr
    with cluster.client() as c:
        assert c.get_service("shop_api").version == version

    # A changed secret file rolls the service to the new value.
    (project / "secrets" / "db_pw.txt").write_bytes(DB_PW_2)
    rolled = shoal("stack", "deploy", "-c", str(project / "compose.yaml"))
    assert rolled.returncode == 0 and "secret shop_db_pw: updated" in rolled.stdout, rolled.stderr
    new_cid = wait_until_sync(running(version + 1), 90, 0.3, "shop_api rolled")
    assert new_cid != cid
    assert docker_exec(new_cid, "cat", "/run/secrets/db_pw", user="0").stdout.encode() == DB_PW_2
    assert not any(f in b"\n".join(etcd_values(cluster)) for f in forms(DB_PW_2))

    assert shoal("stack", "rm", "shop").returncode == 0
