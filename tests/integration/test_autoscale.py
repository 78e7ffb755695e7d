"""Autoscaling on a real 2-node cluster (issue 15, item 1): a step of HTTP load through
both nodes' proxies (loopback, bounded in count and time) scales a service with a
`requests_per_replica` target up to its max in one step, holds it there while the load
is steady, and brings it back to min once the load stops. Short cooldowns keep it quick;
the deadlines bound correctness (cooldown + the nodes' 6 s rate window + slack), not speed.
No request may fail, neither under the step load while replicas start nor under a light
load while they are stopped.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from node.dev.devcluster import DevCluster
from tests.helpers import free_port_on_all, wait_until_sync
from tests.integration.load import Load

pytestmark = pytest.mark.integration

HOSTS = ["127.0.0.1", "127.0.0.2"]


def spec(port: int) -> str:
    return f"""
name: auto
image: shoal-demo/web:1
replicas: 1
ports:
  - {{container: 8080, published: {port}, protocol: http}}
autoscale:
  min: 1
  max: 3
  target: {{requests_per_replica: 8}}
  scale_up_cooldown: 3s
  scale_down_cooldown: 6s
"""


def running(cluster: DevCluster, n: int) -> Callable[[], bool | None]:
    def check() -> bool | None:
        with cluster.client() as c:
            svc = c.get_service("auto")
        return (svc.replicas == n and svc.running == n) or None

    return check


def shoal(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["SHOAL_CONTEXT_FILE"] = str(cluster.context_file)
    return subprocess.run(
        [sys.executable, "-m", "node.cli.main", "--addr", cluster.addr, *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_a_step_load_scales_up_to_max_holds_then_scales_back_down(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster(nodes=2)
    port = free_port_on_all(HOSTS)
    with cluster.client() as c:
        c.apply(spec(port), "auto.yaml")
    wait_until_sync(running(cluster, 1), 40, message="the first replica running")
    shown = shoal(cluster, "service", "autoscale", "auto")
    assert shown.returncode == 0, shown.stderr

    # 2 x 20/s = 40/s against 8 per replica: 5 asked, 3 (max) set
    loads = [Load(f"http://{h}:{port}/", rate=20, max_seconds=60, max_requests=1200) for h in HOSTS]
    step = time.monotonic()
    for load in loads:
        load.__enter__()
    try:
        wait_until_sync(running(cluster, 3), 30, interval=0.5, message="scaled up to max under the load")
        reaction = time.monotonic() - step
        with cluster.client() as c:
            version = c.get_service("auto").version
        steady_until = time.monotonic() + 8  # over 2 up-cooldowns and 4 decisions
        while time.monotonic() < steady_until:
            with cluster.client() as c:
                svc = c.get_service("auto")
            assert svc.version == version and svc.replicas == 3, "the count moved under a steady load"
            time.sleep(0.5)
        status = json.loads(svc.autoscale_json)
        assert status["metric"] == "requests_per_replica" and status["value"] > 8
        assert status["desired"] == 3 and status["replicas"] == 3  # never beyond max
        served = {r.body for load in loads for r in load.results if r.ok}
        assert len(served) == 3, f"not every replica served: {served}"
    finally:
        results = [r for load in loads for r in load.stop()]
    stopped = time.monotonic()
    lost_up = [r for r in results if not r.ok]
    assert len(results) >= 400 and not lost_up, f"{len(lost_up)} failed, e.g. {lost_up[:3]}"

    # a light load (3/s, under one replica's target) goes on while the count comes down
    with Load(f"http://{HOSTS[1]}:{port}/", rate=3, max_seconds=60, max_requests=200) as light:
        wait_until_sync(
            running(cluster, 1), 40, interval=0.5, message="scaled back down once the load stopped"
        )
        quiet = time.monotonic() - stopped
    lost_down = light.failed()
    assert len(light.results) >= 20 and not lost_down, f"{len(lost_down)} failed, e.g. {lost_down[:3]}"
    with cluster.client() as c:
        events = list(c.events(service="auto", kind="service.autoscaled"))
    steps = [tuple(int(n) for n in e.message.split(": ", 2)[1].split()[0:3:2]) for e in events]
    # up (in one step, or two when the first decision saw the step only partly in the nodes'
    # 6 s rate window), then only down, to min: no flapping
    ups = list(itertools.takewhile(lambda s: s[0] < s[1], steps))
    assert ups and ups[0][0] == 1 and ups[-1][1] == 3 and len(ups) <= 2, steps
    assert all(a > b for a, b in steps[len(ups) :]) and steps[-1][1] == 1, steps
    assert "requests_per_replica" in events[0].message and "against target 8/s" in events[0].message
    text = shoal(cluster, "service", "autoscale", "auto").stdout
    assert "requests_per_replica" in text and "last" in text and "-> 1 replica(s)" in text
    inspect = shoal(cluster, "service", "inspect", "auto", "-o", "json")
    assert json.loads(inspect.stdout)["autoscale"]["target"] == "8/s"
    print(
        f"\nscale-up reaction {reaction:.1f}s (cooldown 3s); back to min {quiet:.1f}s after: {steps};"
        f" requests {len(results)} + {len(light.results)}, failed 0"
    )


def zero_spec(name: str, port: int, image: str = "shoal-demo/web:1", timeout: str = "20s") -> str:
    return f"""
name: {name}
image: {image}
pull: never
replicas: 1
ports:
  - {{container: 8080, published: {port}, protocol: http}}
autoscale:
  min: 0
  max: 2
  target: {{requests_per_replica: 8}}
  scale_down_cooldown: 3s
  cold_start_timeout: {timeout}
"""


ECHO = """
name: echo
image: shoal-demo/base:1
command: [sh, -c, "exec nc -ll -p 9000 -e /bin/cat"]
replicas: 1
ports: [{{container: 9000, published: {port}, protocol: tcp}}]
health: {{tcp: {{port: 9000}}, interval: 200ms}}
autoscale: {{min: 0, max: 1, target: {{requests_per_replica: 8}}, scale_down_cooldown: 3s}}
"""


def get(host: str, port: int, timeout: float) -> tuple[int, str, float]:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as resp:
            return resp.status, resp.read().decode(), time.monotonic() - start
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), time.monotonic() - start


def at_zero(cluster: DevCluster, name: str) -> Callable[[], bool | None]:
    def check() -> bool | None:
        with cluster.client() as c:
            svc = c.get_service(name)
            tasks = c.tasks(name).tasks
        return (svc.replicas == 0 and not [t for t in tasks if t.state == "running"]) or None

    return check


def test_scaled_to_zero_the_first_request_on_every_node_is_held_and_served(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster(nodes=2)
    port, never = free_port_on_all(HOSTS), free_port_on_all(HOSTS)
    with cluster.client() as c:
        c.apply(zero_spec("idle", port), "idle.yaml")
        c.apply(zero_spec("never", never, "shoal-demo/absent:1", "2s"), "never.yaml")
    colds = []
    for host in HOSTS:
        wait_until_sync(at_zero(cluster, "idle"), 40, interval=0.5, message="scaled to zero after idling")
        assert "scaled to zero" in shoal(cluster, "service", "ps", "idle").stdout
        status, body, took = get(host, port, timeout=25)
        assert status == 200 and body.startswith("web v1 on "), (status, body)
        colds.append(took)
    # TCP: the first connection is held until the replica is healthy (it listens), then spliced
    tcp = free_port_on_all(HOSTS)
    with cluster.client() as c:
        c.apply(ECHO.format(port=tcp), "echo.yaml")
    wait_until_sync(at_zero(cluster, "echo"), 40, interval=0.5, message="the TCP service scaled to zero")
    start = time.monotonic()
    with socket.create_connection((HOSTS[1], tcp), timeout=25) as s:
        s.sendall(b"ping\n")
        s.settimeout(25)
        assert s.makefile("rb").readline() == b"ping\n"
    colds.append(time.monotonic() - start)
    # a replica that never comes: the request is answered 503 after the cold start timeout
    status, body, took = get(HOSTS[1], never, timeout=25)
    assert status == 503 and 1.8 <= took < 10, (status, body, took)
    with cluster.client() as c:
        events = [e.message for e in c.events(service="idle", kind="service.autoscaled")]
    assert any("0 -> 1 replica(s)" in m for m in events) and any("1 -> 0 replica(s)" in m for m in events)
    shown = ", ".join(f"{t:.2f}s" for t in colds)
    print(f"\ncold start from zero, first request held and served (http n1, http n2, tcp n2): {shown}")
