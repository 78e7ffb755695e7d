"""Secrets and configs on a real cluster (issue 13, item 6): a secret created, mounted at
/run/secrets/NAME (0400, tmpfs) in the service's container, a config mounted read-only;
the clear text in no etcd value, no `docker inspect`, no API answer, event or log line;
a missing reference refused with nothing written; `rm` of a used secret refused naming
the service; an update rolls the service to the new value."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from node.dev.devcluster import DevCluster
from node.model.keys import Keys
from node.wire.client import FailedPrecondition
from tests.helpers import on_store, settled_revision, wait_until_sync, writes_since

SECRET = b"s3cret-db-password-7f3a9c"
SECRET_2 = b"rotated-password-b81d44"
ENV_SECRET = "env-only-secret-c0ffee42"
CONFIG = b"listen 8080\nworkers 2\n"
SPEC = (
    "name: app\nimage: shoal-demo/base:1\ncommand: [sleep, '3600']\nreplicas: 1\n"
    "secret_env: {API_KEY: " + ENV_SECRET + "}\n"
    "secrets: [{source: db_pw}]\n"
    "configs: [{source: app_conf, target: /etc/app/app.conf}]\n"
    "update: {order: stop-first}\nstop_grace: 1\n"
)


def forms(value: bytes) -> list[bytes]:
    """The value and its base64 forms (at each of the three alignments)."""
    out = [value]
    for skip in range(3):
        out.append(base64.b64encode(value[skip:])[4:-4])
    return out


def etcd_values(cluster: DevCluster) -> list[bytes]:
    keys = Keys(cluster.prefix)

    async def read(store: object) -> list[bytes]:
        kvs, _ = await store.range(keys.prefix)  # type: ignore[attr-defined]
        return [kv.key.encode() + b"=" + kv.value for kv in kvs]

    return on_store(cluster.etcd.endpoint, read)


def revision(cluster: DevCluster) -> int:
    return settled_revision(cluster.etcd.endpoint, cluster.prefix)


def wrote_nothing(cluster: DevCluster, before: int) -> bool:
    """No key written since `before` but what the cluster writes by itself (events, usage)."""
    return writes_since(cluster.etcd.endpoint, before, cluster.prefix) == []


def docker_exec(cid: str, *cmd: str) -> str:
    done = subprocess.run(["docker", "exec", cid, *cmd], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


@pytest.fixture
def cluster(make_cluster: Callable[..., DevCluster]) -> DevCluster:
    return make_cluster(nodes=1)


def running(cluster: DevCluster, version: int = 0) -> Callable[[], str]:
    def find() -> str:
        with cluster.client() as c:
            for t in c.list_tasks("app"):
                if t.state == "running" and t.container_id and t.version >= version:
                    return t.container_id
        return ""

    return find


def test_secret_and_config_mounted_never_in_clear_and_an_update_rolls(cluster: DevCluster) -> None:
    with cluster.client() as c:
        before = revision(cluster)
        with pytest.raises(
            FailedPrecondition, match=r"secret 'db_pw' does not exist.*shoal secret create db_pw"
        ):
            c.apply(SPEC)
        assert wrote_nothing(cluster, before), "a refused apply writes nothing"

        assert c.put_object("secret", "db_pw", SECRET).changed
        c.put_object("config", "app_conf", CONFIG)
        c.apply(SPEC)
        cid = wait_until_sync(running(cluster), 90, 0.3, "app running")

        assert docker_exec(cid, "cat", "/run/secrets/db_pw").encode() == SECRET
        assert docker_exec(cid, "stat", "-c", "%a %u", "/run/secrets/db_pw").split() == ["400", "0"]
        assert docker_exec(cid, "cat", "/etc/app/app.conf").encode() == CONFIG
        assert docker_exec(cid, "sh", "-c", "echo -n $API_KEY") == ENV_SECRET
        assert "ro" in docker_exec(cid, "sh", "-c", "grep ' /run/secrets/db_pw ' /proc/mounts")
        write = subprocess.run(["docker", "exec", cid, "sh", "-c", "echo x > /etc/app/app.conf"], timeout=30)
        assert write.returncode != 0, "a config is read-only in the container"

        client = docker.from_env()
        try:
            inspected = client.api.inspect_container(cid)
        finally:
            client.close()
        shm = [m["Source"] for m in inspected["Mounts"] if m["Destination"] == "/run/secrets/db_pw"]
        assert shm and shm[0].startswith("/dev/shm/shoal/"), inspected["Mounts"]
        assert Path(shm[0]).stat().st_mode & 0o777 == 0o400
        assert not any(f in json.dumps(inspected).encode() for f in forms(SECRET)), "secret in docker inspect"

        # Nowhere in etcd, answers, events, history or the daemons' logs.
        everything = b"\n".join(etcd_values(cluster))
        for value in (SECRET, ENV_SECRET.encode()):
            assert not any(f in everything for f in forms(value)), "clear text in an etcd value"
        shown = c.get_service("app").spec_json
        history = str(c.history("app"))
        events = "\n".join(f"{e.kind} {e.message}" for e in c.events())
        listed = str(c.list_objects("secret"))
        logs = "\n".join(m.log_path.read_text(errors="replace") for m in cluster.members)
        for text in (shown, history, events, listed, logs):
            assert SECRET.decode() not in text and ENV_SECRET not in text
        assert json.loads(shown)["secret_env"] == {"API_KEY": "***"}
        assert json.loads(shown)["secrets"][0]["source"] == "db_pw"
        assert [o.services for o in c.list_objects("secret")] == [["app"]]

        # In use: refused, naming the service; nothing written.
        before = revision(cluster)
        with pytest.raises(FailedPrecondition, match=r"secret 'db_pw' is used by service\(s\) app"):
            c.remove_object("secret", "db_pw")
        assert wrote_nothing(cluster, before)

        # The same apply again: unchanged (the sealed secret_env is reused), no roll.
        assert not c.apply(SPEC).changed

        # An update rolls the service to the new value.
        old_version = c.get_service("app").version
        started = time.monotonic()
        answer = c.put_object("secret", "db_pw", SECRET_2, update=True)
        assert list(answer.rolled) == ["app"] and answer.changed
        assert c.get_service("app").version == old_version + 1
        new_cid = wait_until_sync(running(cluster, old_version + 1), 90, 0.3, "app rolled")
        assert new_cid != cid
        assert docker_exec(new_cid, "cat", "/run/secrets/db_pw").encode() == SECRET_2
        print(f"figure: secret update -> new value in a running replica: {time.monotonic() - started:.2f}s")
        wait_until_sync(lambda: not Path(shm[0]).exists(), 30, 0.3, "the old task's files swept")
        everything = b"\n".join(etcd_values(cluster))
        assert not any(f in everything for f in forms(SECRET_2))

        # An unchanged value writes nothing and rolls nothing.
        assert not c.put_object("secret", "db_pw", SECRET_2, update=True).changed

        c.delete_service("app")
        c.remove_object("secret", "db_pw")
        c.remove_object("config", "app_conf")
        assert c.list_objects("secret") == [] and c.list_objects("config") == []


def test_cli_secret_from_stdin_ls_rm(cluster: DevCluster) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(repo)}
    shoal = [sys.executable, "-m", "node.cli.main"]

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*shoal, *args], input=stdin, capture_output=True, timeout=60, env=env, cwd=repo
        )

    made = run("secret", "create", "token", "-f", "-", stdin=b"from-stdin-9d1e")
    assert made.returncode == 0 and b"secret token created" in made.stdout, made.stderr
    again = run("secret", "create", "token", "-f", "-", stdin=b"x")
    assert again.returncode == 1 and b"secret update token" in again.stderr
    listed = run("secret", "ls", "-o", "json")
    assert json.loads(listed.stdout)[0]["name"] == "token" and b"from-stdin" not in listed.stdout
    gone = run("secret", "rm", "token")
    assert gone.returncode == 0, gone.stderr


def test_a_process_of_another_user_reads_the_secret_and_config_it_owns(cluster: DevCluster) -> None:
    """`uid`/`gid` of a secret and of a config (Swarm's long syntax, decision 90) on the
    real engine: a container running as user 1000 reads both files at mode 0400, which
    it could not while they were root's."""
    spec = (
        "name: app\nimage: shoal-demo/base:1\ncommand: [sleep, '3600']\nreplicas: 1\nuser: '1000'\n"
        "secrets: [{source: db_pw, uid: '1000', mode: '0400'}]\n"
        "configs: [{source: app_conf, target: /etc/app/app.conf, uid: 1000, gid: 1000, mode: '0400'}]\n"
        "stop_grace: 1\n"
    )
    with cluster.client() as c:
        c.put_object("secret", "db_pw", SECRET)
        c.put_object("config", "app_conf", CONFIG)
        c.apply(spec)
        cid = wait_until_sync(running(cluster), 90, 0.3, "app running")
        assert docker_exec(cid, "id", "-u").strip() == "1000"
        assert docker_exec(cid, "cat", "/run/secrets/db_pw").encode() == SECRET
        assert docker_exec(cid, "cat", "/etc/app/app.conf").encode() == CONFIG
        assert docker_exec(cid, "stat", "-c", "%a %u %g", "/run/secrets/db_pw").split() == [
            "400",
            "1000",
            "0",
        ]
        assert docker_exec(cid, "stat", "-c", "%a %u %g", "/etc/app/app.conf").split() == [
            "400",
            "1000",
            "1000",
        ]
        c.delete_service("app")
