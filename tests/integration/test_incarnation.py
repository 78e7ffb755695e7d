"""A service removed and applied again is another service, on a real cluster (issue 11, item 1).

`rm web` then `apply` of a new `web` (another image, another env, the same name and
published port; it starts at version 1 again) while every node has run, and cached,
the old web's version 1: every replica must answer from the new image, and Docker must
show only the new env on every container.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import docker
import pytest

from node.dev.devcluster import DevCluster
from node.runtime.base import LABELS
from tests.helpers import free_port_on_all, wait_until_sync

pytestmark = pytest.mark.integration

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def web(image: str, env: str, port: int) -> str:
    return f"""
name: web
image: {image}
replicas: 3
env: {env}
ports:
  - {{container: 8080, published: {port}, protocol: http}}
update: {{drain: 0s}}
stop_grace: 1s
"""


def containers(cluster: DevCluster) -> list[dict[str, object]]:
    """`docker inspect` of this cluster's containers (running or not)."""
    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABELS.CLUSTER}={cluster.cluster}"})
        return [c.attrs for c in found]
    finally:
        client.close()


def get(address: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}/", timeout=5) as resp:
        return resp.read().decode().strip()


def answers(cluster: DevCluster, port: int) -> set[str]:
    """What each routable replica says (hostname left out), and what the mesh says."""
    with cluster.client() as c:
        endpoints = c.resolve("web")
    said = {get(e.address, e.port).rsplit(" on ", 1)[0] for e in endpoints}
    said |= {get(host, port).rsplit(" on ", 1)[0] for host in HOSTS}
    return said if len(endpoints) == 3 else set()


def test_rm_and_apply_again_runs_only_the_new_image_and_env(make_cluster: Callable[..., DevCluster]) -> None:
    cluster = make_cluster()
    port = free_port_on_all(HOSTS)
    with cluster.client() as c:
        old = c.apply(web("shoal-demo/web:1", "{GREETING: alpha, ONLY_OLD: 'yes'}", port), "web.yaml")
    wait_until_sync(lambda: answers(cluster, port) == {"alpha from web v1"}, 60, message="old web on 3 nodes")
    with cluster.client() as c:
        nodes = {t.node for t in c.list_tasks("web")}
    assert len(nodes) == 3, "every node ran (and cached) the old web's version 1"

    with cluster.client() as c:
        c.delete_service("web")
        new = c.apply(web("shoal-demo/web:2", "{GREETING: beta}", port), "web.yaml")
    assert (old.version, new.version) == (1, 1), "the same name and version: only the uid tells them apart"

    def only_new() -> bool:
        boxes = containers(cluster)
        if len(boxes) != 3 or answers(cluster, port) != {"beta from web v2"}:
            return False
        for box in boxes:
            config = box["Config"]
            assert isinstance(config, dict)
            env = {e.split("=", 1)[0]: e.split("=", 1)[1] for e in config["Env"]}
            if config["Image"] != "shoal-demo/web:2" or env.get("GREETING") != "beta" or "ONLY_OLD" in env:
                return False
        return True

    wait_until_sync(only_new, 90, interval=0.5, message="3 replicas of the new web, new image and env only")
    with cluster.client() as c:
        tasks = c.list_tasks("web")
    assert len(tasks) == 3 and all(t.state == "running" for t in tasks)
    uids = {box["Config"]["Labels"].get(LABELS.UID) for box in containers(cluster)}  # type: ignore[index]
    assert len(uids) == 1 and None not in uids, uids
