"""Health checks and restart policies in a real 3-node cluster: real etcd, real Docker,
traffic through the routing mesh on 127.0.0.x.

- http, tcp and exec checks each turn a replica unhealthy (it leaves every node's
  rotation within interval x retries + 1 s, measured with `Resolve` on every node and
  with traffic through the published port) and healthy again (back in rotation, the
  same container: it was not replaced).
- an image's own Docker HEALTHCHECK is honoured when the spec has no check.
- a replica that never passes its check is never routable and is replaced again and again.
- a crash loop restarts with a growing delay, the count and exit code in `ps`;
  `restart: never` does not restart.

Waits poll with a deadline; deadlines bound correctness, not speed.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import docker
import pytest

from node.dev.devcluster import DevCluster
from node.pb import api_pb2
from node.runtime.base import LABELS
from tests.helpers import free_port_on_all, wait_until_sync
from tests.integration.load import Load

pytestmark = pytest.mark.integration

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
INTERVAL, RETRIES = 1.0, 3


def web(
    name: str, port: int, health: str, replicas: int = 3, image: str = "shoal-demo/web:1", extra: str = ""
) -> str:
    return f"""
name: {name}
image: {image}
replicas: {replicas}
ports:
  - {{container: 8080, published: {port}, protocol: http}}
{health}
{extra}
"""


def routable(cluster: DevCluster, name: str) -> list[set[str]]:
    """The task ids each node's Resolve answers with."""
    out = []
    for i in range(1, len(cluster.members) + 1):
        with cluster.client(i) as c:
            out.append({e.task for e in c.resolve(name)})
    return out


def tasks(cluster: DevCluster, name: str) -> dict[str, api_pb2.Task]:
    with cluster.client() as c:
        return {t.task_id: t for t in c.list_tasks(name)}


def wait_routable(cluster: DevCluster, name: str, replicas: int, timeout: float = 40.0) -> set[str]:
    def ready() -> set[str] | None:
        seen = routable(cluster, name)
        return seen[0] if all(len(s) == replicas and s == seen[0] for s in seen) else None

    return wait_until_sync(ready, timeout, message=f"{replicas} replicas of {name} routable from every node")


def container_of(task_id: str) -> Any:
    client = docker.from_env()
    try:
        [c] = client.containers.list(all=True, filters={"label": f"{LABELS.TASK}={task_id}"})
        return c
    finally:
        client.close()


def sh(container: Any, script: str, detach: bool = False) -> None:
    """Run `script` in the container, as an operator would with `docker exec`."""
    args = ["docker", "exec", *(["-d"] if detach else []), container.id, "sh", "-c", script]
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def replica(body: str) -> str:
    return body.rsplit(" ", 1)[-1]


CHECKS = {
    "http": (
        f"health: {{http: {{port: 8080, path: /health}}, interval: {INTERVAL}s, timeout: 500ms, "
        f"retries: {RETRIES}}}",
        "",
        "rm /www/health",
        "echo ok > /www/health",
        "HTTP 404 from GET /health (expected 2xx or 3xx)",
    ),
    "tcp": (
        f"health: {{tcp: {{port: 9000}}, interval: {INTERVAL}s, timeout: 500ms, retries: {RETRIES}}}",
        'command: ["sh", "-c", "nc -ll -p 9000 -e true & exec /bin/start-web"]',
        "killall nc",
        "nc -ll -p 9000 -e true </dev/null >/dev/null 2>&1 &",
        "tcp :9000: Connection refused",
    ),
    "exec": (
        f"health: {{exec: [test, -f, /tmp/healthy], interval: {INTERVAL}s, timeout: 3s, retries: {RETRIES}}}",
        'command: ["sh", "-c", "touch /tmp/healthy; exec /bin/start-web"]',
        "rm /tmp/healthy",
        "touch /tmp/healthy",
        "exit 1",
    ),
}


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_a_check_turns_a_replica_unhealthy_and_healthy_again(
    make_cluster: Callable[..., DevCluster], kind: str
) -> None:
    health, extra, breaks, fixes, message = CHECKS[kind]
    cluster = make_cluster()
    port = free_port_on_all(HOSTS)
    name = f"hc-{kind}"
    with cluster.client() as c:
        c.apply(web(name, port, health, extra=extra), f"{name}.yaml")
    ids = wait_routable(cluster, name, 3)
    victim = sorted(ids)[0]
    box = container_of(victim)
    victim_host = box.id[:12]
    bound = INTERVAL * RETRIES + 1.0

    with Load(f"http://{HOSTS[0]}:{port}/", rate=40, max_seconds=60) as load:
        wait_until_sync(lambda: len(load.results) >= 20, 10, message="load running")
        sh(box, breaks)
        broken = time.monotonic()
        wait_until_sync(
            lambda: all(victim not in s for s in routable(cluster, name)),
            bound + 5,
            interval=0.02,
            message=f"{kind}: unhealthy replica out of every node's rotation",
        )
        left = time.monotonic() - broken
        status = tasks(cluster, name)[victim]
        assert (status.state, status.health) == ("running", "unhealthy"), status
        assert status.health_failures >= RETRIES and message in status.health_message, status
        out_at = time.monotonic()
        wait_until_sync(
            lambda: load.results and load.results[-1].start > out_at + 1.0, 10, message="load went on"
        )

        sh(box, fixes, detach=kind == "tcp")
        fixed = time.monotonic()
        assert wait_routable(cluster, name, 3, timeout=INTERVAL * RETRIES + 5) == ids
        back = time.monotonic() - fixed
        results = load.stop()
    status = tasks(cluster, name)[victim]
    assert (status.health, status.restarts, status.container_id) == ("healthy", 0, box.id), "not replaced"
    during = [r for r in results if out_at <= r.start <= fixed]
    assert during and all(replica(r.body) != victim_host for r in during if r.ok), (
        "no traffic while unhealthy"
    )
    assert load.failed() == [], load.failed()[:5]
    print(
        f"{kind} check: out of every rotation {left:.2f} s after breaking (bound {bound:.1f} s); "
        f"back {back:.2f} s"
    )
    assert left <= bound, (
        f"{kind}: the unhealthy replica stayed in rotation {left:.2f} s (bound {bound:.1f} s)"
    )


def test_an_images_docker_healthcheck_is_honoured(make_cluster: Callable[..., DevCluster]) -> None:
    cluster = make_cluster()
    port = free_port_on_all(HOSTS)
    with cluster.client() as c:
        c.apply(web("dockerhc", port, "", replicas=2, image="shoal-demo/web:hc"), "dockerhc.yaml")
    ids = wait_routable(cluster, "dockerhc", 2)
    assert {t.health for t in tasks(cluster, "dockerhc").values()} == {"healthy"}
    victim = sorted(ids)[0]
    box = container_of(victim)
    sh(box, "rm /www/health")
    wait_until_sync(
        lambda: all(victim not in s for s in routable(cluster, "dockerhc")),
        15,
        message="withdrawn on Docker's word",
    )
    assert tasks(cluster, "dockerhc")[victim].health == "unhealthy"
    sh(box, "echo ok > /www/health")
    assert wait_routable(cluster, "dockerhc", 2, timeout=15) == ids
    assert tasks(cluster, "dockerhc")[victim].container_id == box.id


def test_a_replica_that_never_passes_is_never_routable_and_is_replaced(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster()
    port = free_port_on_all(HOSTS)
    health = "health: {http: {port: 8080, path: /health}, interval: 500ms, timeout: 500ms, retries: 2}"
    with cluster.client() as c:
        c.apply(web("bad", port, health, replicas=1, image="shoal-demo/web:bad"), "bad.yaml")

    def replaced_twice() -> api_pb2.Task | None:
        [t] = tasks(cluster, "bad").values()
        assert not any(routable(cluster, "bad")), "a replica that never passed is never routable"
        return t if t.restarts >= 2 else None

    task = wait_until_sync(
        replaced_twice, 40, interval=0.1, message="the never-healthy replica replaced twice"
    )
    assert task.exit_code == -1 or task.health in ("starting", "unhealthy"), task
    with cluster.client() as c:
        kinds = [e.kind for e in c.events(service="bad")]
    assert kinds.count("task.unhealthy") >= 2, kinds


def test_a_crash_loop_backs_off_and_never_is_not_restarted(make_cluster: Callable[..., DevCluster]) -> None:
    cluster = make_cluster()
    loop = """
name: crashy
image: shoal-demo/crash:1
env: {CRASH_AFTER: "1"}
restart: {condition: on-failure, delay: 500ms}
"""
    once = """
name: once
image: shoal-demo/crash:1
env: {CRASH_AFTER: "1", EXIT_CODE: "3"}
restart: {condition: never}
"""
    with cluster.client() as c:
        c.apply(loop, "crashy.yaml")
        c.apply(once, "once.yaml")

    def restarted(n: int) -> api_pb2.Task | None:
        [t] = tasks(cluster, "crashy").values()
        return t if t.restarts >= n and t.state == "running" else None

    task = wait_until_sync(lambda: restarted(4), 60, interval=0.1, message="crashy restarted 4 times")
    assert task.exit_code == 1, "the last exit code shows"

    with cluster.client() as c:
        events = [e for e in c.events(service="crashy") if e.kind in ("task.exited", "task.started")]
    exits = [
        (e.time, float(m[1])) for e in events if (m := re.search(r"restart \d+ in ([\d.]+)s", e.message))
    ]
    delays = [d for _, d in exits]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0], [e.message for e in events]
    starts = [e.time for e in events if e.kind == "task.started"]
    for (exited_at, delay), started_at in zip(exits[:3], starts[1:4], strict=True):
        assert started_at - exited_at >= delay - 0.05, "a restart waits its delay"
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[3] > gaps[0] + 1.0, f"the restarts slow down: {gaps}"
    print(
        "crash loop: restart delays "
        + ", ".join(f"{d:g}s" for d in delays)
        + "; gaps "
        + ", ".join(f"{g:.1f}s" for g in gaps)
    )

    def final() -> api_pb2.Task | None:
        [t] = tasks(cluster, "once").values()
        return t if t.terminal else None

    task = wait_until_sync(final, 30, message="once: given up after its exit")
    assert (task.state, task.exit_code, task.restarts) == ("failed", 3, 0), task
    assert "restart condition is never" in task.message
    observed_until = time.monotonic() + 3 * 1.0  # three agent resyncs: a restart would have shown
    while time.monotonic() < observed_until:
        [t] = tasks(cluster, "once").values()
        assert (t.restarts, t.state) == (0, "failed"), t
        time.sleep(0.2)
    boxes = docker.from_env().containers.list(all=True, filters={"label": f"{LABELS.TASK}={task.task_id}"})
    assert [b.status for b in boxes] == ["exited"], "not restarted; the exited container kept for its logs"
    with cluster.client() as c:
        assert any(e.kind == "task.no-restart" for e in c.events(service="once"))
