"""WebSocket through an `http` port of the mesh, on a real 3-node cluster: a real server
(Debian's python3-websockets in shoal-deb/python) and an RFC 6455 client
(tests/integration/wsclient.py) through every node's published port. A tunnel stays
open while another service rolls; draining its own replica ends it with the server's
close frame (1001), not a cut."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from docker.errors import ImageNotFound, NotFound

from node.dev.devcluster import DevCluster
from tests.helpers import free_port_on_all, wait_until_sync
from tests.integration.test_proxy import HOSTS, get, wait_routable, web_spec
from tests.integration.wsclient import Closed, WebSocket

pytestmark = pytest.mark.integration

BUILD_DEB = Path(__file__).resolve().parents[2] / "deploy" / "images" / "build-deb.sh"
PYTHON_IMAGE = "shoal-deb/python:1"

# A greeting naming the replica, then an echo; SIGTERM (the replica's stop) closes the
# server, which closes every connection with 1001 "going away".
SERVER = """
import asyncio, signal, socket, websockets
async def echo(ws, path=None):
    await ws.send("hello from " + socket.gethostname())
    async for message in ws:
        await ws.send(message)
async def main():
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with websockets.serve(echo, "0.0.0.0", 8765, ping_interval=None):
        await stop
asyncio.run(main())
"""


def ws_spec(published: int, replicas: int) -> str:
    return f"""
name: ws
image: {PYTHON_IMAGE}
command: ["python3", "-c", {json.dumps(SERVER)}]
replicas: {replicas}
ports:
  - {{container: 8765, published: {published}, protocol: http}}
"""


@pytest.fixture(scope="module")
def python_image() -> str:
    client = docker.DockerClient.from_env()
    try:
        client.api.inspect_image(PYTHON_IMAGE)
    except ImageNotFound:
        done = subprocess.run(["bash", str(BUILD_DEB)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"{BUILD_DEB} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    finally:
        client.close()
    return PYTHON_IMAGE


def running(cluster: DevCluster, name: str) -> dict[str, str]:
    """Container hostname (12 hex) -> image of the running replicas of `name`."""
    with cluster.client() as c:
        tasks = [t for t in c.list_tasks(name) if t.state == "running"]
    client = docker.from_env()
    out = {}
    try:
        for t in tasks:
            with contextlib.suppress(NotFound):  # stopped since the listing
                out[t.container_id[:12]] = client.containers.get(t.container_id).attrs["Config"]["Image"]
    finally:
        client.close()
    return out


def connect(host: str, port: int) -> tuple[WebSocket, str] | None:
    try:
        ws = WebSocket(host, port)
    except (OSError, ConnectionError, Closed):
        return None  # the server not listening yet: the proxy answers 502
    return ws, ws.recv().removeprefix("hello from ")


def echo(ws: WebSocket, text: str) -> None:
    ws.send(text)
    assert ws.recv() == text


def test_websocket_through_every_node_survives_a_roll_and_ends_cleanly_on_drain(
    make_cluster: Callable[..., DevCluster], python_image: str
) -> None:
    cluster = make_cluster(3)
    ws_port, web_port = free_port_on_all(HOSTS), free_port_on_all(HOSTS)
    while web_port == ws_port:
        web_port = free_port_on_all(HOSTS)
    with cluster.client() as c:
        c.apply(ws_spec(ws_port, 2), "ws.yaml")
        c.apply(web_spec("web", web_port, replicas=2), "web.yaml")
    replicas = wait_until_sync(
        lambda: r if len(r := running(cluster, "ws")) == 2 else None, 60, message="2 ws replicas running"
    )
    wait_until_sync(lambda: len(running(cluster, "web")) == 2, 60, message="2 web replicas running")

    # Through each node, tunnels until both replicas serve one (the server may still be
    # starting when its replica is first routable: the proxy then picks the other).
    wait_routable(cluster, "ws", 2)
    tunnels: list[tuple[WebSocket, str, str]] = []
    try:
        for host in HOSTS:

            def both_reached(h: str = host) -> bool:
                assert len(tunnels) < 30, "too many tunnels opened to reach both replicas"
                if opened := connect(h, ws_port):
                    tunnels.append((*opened, h))
                return {served for _, served, via in tunnels if via == h} == set(replicas)

            wait_until_sync(both_reached, 30, interval=0.2, message=f"both replicas through {host}")
        for i, (ws, _, host) in enumerate(tunnels):
            echo(ws, f"first {i} via {host}")

        # A rolling update of another service; every tunnel carries messages throughout.
        with cluster.client() as c:
            c.apply(web_spec("web", web_port, replicas=2).replace("web:1", "web:2"), "web.yaml")
        rounds = [0]

        def rolled_while_echoing() -> bool:
            for i, (ws, _, _) in enumerate(tunnels):
                echo(ws, f"during roll {rounds[0]}.{i}")
            rounds[0] += 1
            now = running(cluster, "web")
            return (
                len(now) == 2
                and set(now.values()) == {"shoal-demo/web:2"}
                and all("web v2" in get(h, web_port)[1] for h in HOSTS)
            )

        wait_until_sync(rolled_while_echoing, 90, interval=0.2, message="web rolled to v2, tunnels echoing")
        assert rounds[0] >= 2
        for i, (ws, _, _) in enumerate(tunnels):
            echo(ws, f"after roll {i}")
        assert set(running(cluster, "ws")) == set(replicas)  # no ws replica was touched

        # Scale ws to 1: the other replica is withdrawn, drained and stopped; its
        # tunnels get the server's close frame, the kept replica's carry on.
        with cluster.client() as c:
            c.apply(ws_spec(ws_port, 1), "ws.yaml")
        kept = wait_until_sync(
            lambda: set(r) if len(r := running(cluster, "ws")) == 1 else None, 60, message="ws down to 1"
        )
        gone = set(replicas) - kept
        started = time.monotonic()
        for ws, served, host in tunnels:
            if served in gone:
                ws.sock.settimeout(30)
                with pytest.raises(Closed) as closed:
                    ws.recv()
                assert closed.value.code == 1001, f"tunnel via {host} to {served}: {closed.value}"
                assert ws.wait_end() == b""  # then the connection ends, nothing after
            else:
                echo(ws, f"after drain via {host}")
        print(
            f"websocket: {len(tunnels)} tunnels through 3 nodes, {rounds[0]} echo rounds across the roll; "
            f"drained tunnels closed 1001 {time.monotonic() - started:.2f} s after the scale-down was seen"
        )
    finally:
        for ws, _, _ in tunnels:
            ws.close()
