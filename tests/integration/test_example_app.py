"""The example application (deploy/examples/app: nginx -> web x3 -> redis with a volume and
a secret password) on a real 2-node `shoal dev` cluster, deployed by the very script
`make demo` runs (deploy.sh, through the CLI): it answers through the mesh's front door
with a count kept in redis; every web replica, on redis's node and on the other, reaches
redis by name; redis killed -> the count goes on after its restart (the volume); a
rolling update of the web tier under a bounded load through the front door fails no
request; the secret's value is in no etcd value, daemon or container log, event or API
answer; `stack rm` removes every container, volume claim and name. Waits poll with a
deadline."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from node.dev.devcluster import DevCluster
from node.dev.freeports import free_port_on_all
from node.model.keys import Keys
from node.proxy import dnswire
from node.runtime.base import LABELS
from tests.helpers import on_store, wait_until_sync
from tests.integration.load import Load

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "deploy" / "examples" / "app"
BUILD_SH = REPO / "deploy" / "images" / "build.sh"
DEB_IMAGES = ("shoal-deb/redis:1", "shoal-deb/python:1", "shoal-deb/nginx:1")
VISIT = re.compile(r"^(\w+) (\d+), served by (\S+)$")


def containers(cluster: DevCluster, service: str) -> list[docker.models.containers.Container]:
    client = docker.from_env()
    try:
        labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}={service}"]
        return [c for c in client.containers.list(filters={"label": labels}) if c.status == "running"]
    finally:
        client.close()


def all_containers(cluster: DevCluster) -> list[docker.models.containers.Container]:
    client = docker.from_env()
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"{LABELS.CLUSTER}={cluster.cluster}"})
        )
    finally:
        client.close()


def get(url: str) -> str:
    """One GET (a new connection); the body of a 200, else an OSError."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode().strip())


def forms(value: bytes) -> list[bytes]:
    """The value and its base64 forms (at each of the three alignments)."""
    return [value] + [base64.b64encode(value[skip:])[4:-4] for skip in range(3)]


def etcd_text(cluster: DevCluster) -> bytes:
    keys = Keys(cluster.prefix)

    async def read(store: object) -> list[bytes]:
        kvs, _ = await store.range(keys.prefix)  # type: ignore[attr-defined]
        return [kv.key.encode() + b"=" + kv.value for kv in kvs]

    return b"\n".join(on_store(cluster.etcd.endpoint, read))


def ask_dns(cluster: DevCluster, name: str) -> int:
    """The name server's rcode for an A query of `name`, asked from the host."""
    server = (cluster.vip_range.rsplit(".", 1)[0] + ".1", 53)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(dnswire.build_query(name, dnswire.A), server)
        return dnswire.parse_answer(s.recv(4096)).rcode


@pytest.fixture
def cluster(make_cluster: Callable[..., DevCluster]) -> DevCluster:
    client = docker.from_env()
    try:
        missing = [i for i in DEB_IMAGES if not client.images.list(name=i)]
    finally:
        client.close()
    if missing:  # built by deploy/images/build.sh (build-deb.sh: minutes on a fresh machine)
        done = subprocess.run(["bash", str(BUILD_SH)], capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{BUILD_SH} failed for {missing}:\n{done.stdout}{done.stderr}"
    return make_cluster(2)


def test_example_app_end_to_end(cluster: DevCluster, tmp_path: Path) -> None:
    # The app's files, with the front door on a port free on both node addresses.
    app = tmp_path / "app"
    shutil.copytree(APP, app)
    front = free_port_on_all(["127.0.0.1", "127.0.0.2"])
    stack = app / "stack.yaml"
    stack.write_text(stack.read_text().replace("published: 18081", f"published: {front}"))
    env = {
        **os.environ,
        "SHOAL_ADDR": cluster.addr,
        "SHOAL_CONTEXT_FILE": str(cluster.context_file),
        "PYTHONPATH": str(REPO),
        "SHOAL": f"{sys.executable} -m node.cli.main",
        "PY": sys.executable,
        "APP_TIMEOUT": "180",
    }

    def shoal(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "node.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    deployed = subprocess.run(
        ["bash", str(app / "deploy.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    shown = [m for line in deployed.stdout.splitlines() if (m := VISIT.search(line.split("-> ")[-1]))]
    assert len(shown) == 6, deployed.stdout  # 3 requests through each node's front door

    # Through the front door: the count grows by one per request, from several replicas.
    url = f"http://127.0.0.2:{front}/"
    bodies = [get(url) for _ in range(12)]
    answered = [VISIT.match(b) for b in bodies]
    assert all(answered), bodies
    counts = [int(m.group(2)) for m in answered if m]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    assert len({m.group(3) for m in answered if m}) == 3, bodies  # every web replica answered
    webs = wait_until_sync(lambda: c if len(c := containers(cluster, "app_web")) == 3 else None, 60)

    # Every web replica reaches redis by name (AUTH with the secret, PING), on redis's
    # node and on the other one.
    redis = wait_until_sync(lambda: (c := containers(cluster, "app_redis")) and c[0], 60)
    redis_node = redis.labels[LABELS.NODE]
    ping = "import sys; sys.path.insert(0, '/app'); import web; print(web.command('PING'))"
    for web in webs:
        code, out = web.exec_run(["python3", "-c", ping])
        assert code == 0 and out.decode().strip() == "PONG", (web.name, out)
    web_nodes = {w.labels[LABELS.NODE] for w in webs}
    assert web_nodes == {"n1", "n2"} and redis_node in web_nodes, (web_nodes, redis_node)

    # Networks: nginx (frontnet) resolves web but not redis (backnet), and its connection
    # to redis's VIP is reset; a web replica (both) resolves redis.
    code, out = webs[0].exec_run(["getent", "hosts", "redis"])
    assert code == 0, out
    redis_vip = out.decode().split()[0]
    nginx = wait_until_sync(lambda: (c := containers(cluster, "app_nginx")) and c[0], 60)
    assert nginx.exec_run(["getent", "hosts", "web"]).exit_code == 0
    code, out = nginx.exec_run(["getent", "hosts", "redis"])
    assert code != 0 and redis_vip.encode() not in out, out
    probe = f"exec 3<>/dev/tcp/{redis_vip}/6379 && printf 'PING\\r\\n' >&3 && timeout 3 head -c 20 <&3"
    code, out = nginx.exec_run(["bash", "-c", probe])
    assert code != 0 and b"PONG" not in out and b"NOAUTH" not in out, out

    # Redis killed: the agent starts it again on its volume, and the count goes on.
    before = max(counts)
    redis.kill()

    def count_after_restart() -> int | None:
        again = containers(cluster, "app_redis")
        if not again or again[0].id == redis.id:
            return None
        try:
            m = VISIT.match(get(url))
        except OSError:
            return None
        return int(m.group(2)) if m else None

    assert wait_until_sync(count_after_restart, 90, 0.5, "redis back") == before + 1

    # A rolling update of the web tier under load through the front door: no request fails.
    # (The load is bounded: 25/s for at most 300 s, longer than the waits below together.)
    command = "    command: [python3, /app/web.py]\n"
    stack.write_text(stack.read_text().replace(command, command + "    env: {GREETING: hello}\n"))
    with Load(url, rate=25, max_seconds=300, max_requests=7500) as load:
        shoal("stack", "deploy", "-f", str(stack), "app")

        def updated() -> bool:
            with cluster.client() as c:
                version = c.get_service("app_web").version
                tasks = [t for t in c.list_tasks("app_web") if t.state == "running"]
            return len(tasks) == 3 and all(t.version == version for t in tasks)

        wait_until_sync(updated, 180, 0.5, "web tier updated")

        # the last old replica serves until its successor is ready, then drains: until then
        # answers mix; then only the new version answers
        def only_new() -> bool:
            last = load.results[-10:]
            return len(last) == 10 and all(r.body.startswith("hello") for r in last)

        wait_until_sync(only_new, 60, 0.3, "only the new version answers")
    results = load.stop()
    print(
        f"figure: rolling update of app_web under load: {len(results)} requests, {len(load.failed())} failed"
    )
    assert len(results) > 50 and load.failed() == [], load.failed()[:5]
    assert any(r.body.startswith("visit") for r in results) and results[-1].body.startswith("hello")

    # deploy.sh again (make demo twice): the same secret, configs and services; nothing rolls.
    again = subprocess.run(
        ["bash", str(app / "deploy.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    for service in ("app_redis", "app_web", "app_nginx"):
        assert f"service {service}: unchanged" in again.stdout, again.stdout
    assert "hello" in again.stdout

    # The secret's value: in no etcd value, no daemon or container log, event or answer.
    code, out = redis.client.containers.get(containers(cluster, "app_redis")[0].id).exec_run(
        ["cat", "/run/secrets/redis_pw"]
    )
    secret = out.strip()
    assert code == 0 and len(secret) >= 16
    texts = {
        "etcd": etcd_text(cluster),
        "deploy.sh": (deployed.stdout + deployed.stderr + again.stdout).encode(),
    }
    for m in cluster.members:
        texts[f"log {m.node_id}"] = m.log_path.read_bytes()
    for c in all_containers(cluster):
        try:  # a replaced container can go between the list and its logs: nothing to scan
            texts[f"docker logs {c.name}"] = c.logs()
        except (docker.errors.NotFound, docker.errors.APIError) as e:
            if getattr(e, "status_code", None) not in (404, 409):
                raise
        texts[f"docker inspect {c.name}"] = str(c.attrs).encode()
    with cluster.client() as c:
        texts["events"] = "\n".join(f"{e.kind} {e.message}" for e in c.events()).encode()
        for service in ("app_redis", "app_web", "app_nginx"):
            texts[f"inspect {service}"] = str(c.get_service(service)).encode()
            texts[f"history {service}"] = str(c.history(service)).encode()
    for args in (("stack", "ps", "app"), ("secret", "ls", "-o", "json"), ("service", "inspect", "app_redis")):
        texts[" ".join(args)] = shoal(*args).encode()
    leaks = [where for where, text in texts.items() if any(f in text for f in forms(secret))]
    assert leaks == []

    # stack rm: every container, volume claim and name goes.
    with cluster.client() as c:
        assert [v.service for v in c.list_volumes("app_redis")] == ["app_redis"]
    assert ask_dns(cluster, "app.redis") == 0
    shoal("stack", "rm", "app")
    wait_until_sync(lambda: all_containers(cluster) == [], 60, 0.5, "containers removed")
    with cluster.client() as c:
        wait_until_sync(lambda: c.list_volumes() == [], 60, 0.5, "volume claims removed")
    for name in ("app.redis", "app_web", "app.nginx"):
        wait_until_sync(lambda n=name: ask_dns(cluster, n) == 3, 30, 0.5, f"{name} NXDOMAIN")  # type: ignore[misc]
    vips = Keys(cluster.prefix).vips.encode()
    assert [line for line in etcd_text(cluster).splitlines() if line.startswith(vips)] == []
    # The data stays (docs/volumes.md: `stack rm` keeps Docker volumes); the test removes it.
    client = docker.from_env()
    try:
        kept = client.volumes.list(filters={"label": f"{LABELS.CLUSTER}={cluster.cluster}"})
        assert [v.attrs["Labels"][LABELS.SERVICE] for v in kept] == ["app_redis"]
        for volume in kept:
            volume.remove()
    finally:
        client.close()
