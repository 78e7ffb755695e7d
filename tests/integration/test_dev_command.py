"""`shoal dev` itself: detached and foreground, it leaves no process and no container."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from node.dev.devcluster import free_port_on_all, free_port_pair
from node.runtime.base import LABELS
from node.wire.client import ShoalClient
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

SPEC = "name: web\nimage: shoal-demo/web:1\nreplicas: 2\nports: [{container: 8080}]\n"


def _dev(tmp_path: Path, cluster: str, *extra: str) -> list[str]:
    port = free_port_on_all(["127.0.0.1", "127.0.0.2"])
    return [
        sys.executable, "-m", "node.cli.main", "dev", "--nodes", "2", "--data-dir", str(tmp_path / "dev"),
        "--grpc-port", str(port), "--etcd-port", str(free_port_pair()), "--cluster", cluster, *extra,
    ]  # fmt: skip


def _port(args: list[str]) -> int:
    return int(args[args.index("--grpc-port") + 1])


def _containers(cluster: str) -> int:
    client = docker.from_env()
    try:
        return len(client.containers.list(all=True, filters={"label": f"{LABELS.CLUSTER}={cluster}"}))
    finally:
        client.close()


def _daemons(tmp_path: Path) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if "node.daemon" in line and str(tmp_path) in line]


def _run_two_replicas(port: int, context_file: Path) -> None:
    with ShoalClient(f"127.0.0.1:{port}", context_file=context_file) as c:
        c.apply(SPEC)
        wait_until_sync(
            lambda: sum(t.state == "running" for t in c.list_tasks("web")) == 2, 30, message="2 replicas"
        )


def test_detached_dev_cluster_runs_and_stops_leaving_nothing(
    tmp_path: Path, demo_images: tuple[str, ...]
) -> None:
    cluster = f"d{uuid.uuid4().hex[:8]}"
    args = _dev(tmp_path, cluster)
    up = subprocess.run([*args, "--detach"], capture_output=True, text=True, timeout=90)
    assert up.returncode == 0, up.stderr
    assert "2 node(s) up" in up.stdout and "shoal dev --stop" in up.stdout
    context_file = tmp_path / "dev" / "context.json"
    assert f"SHOAL_CONTEXT_FILE={context_file}" in up.stdout
    assert "shoal_" not in up.stdout + up.stderr  # the token's location is shown, never the token
    try:
        _run_two_replicas(_port(args), context_file)
        assert _containers(cluster) == 2
    finally:
        down = subprocess.run([*args, "--stop"], capture_output=True, text=True, timeout=90)
    assert down.returncode == 0, down.stderr
    assert _containers(cluster) == 0
    assert _daemons(tmp_path) == []
    again = subprocess.run([*args, "--stop"], capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "no dev cluster runs" in again.stderr


def test_foreground_dev_cluster_stops_on_sigterm(tmp_path: Path, demo_images: tuple[str, ...]) -> None:
    cluster = f"d{uuid.uuid4().hex[:8]}"
    args = _dev(tmp_path, cluster)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "dev" / "dev.pid"
    try:
        wait_until_sync(lambda: pid_file.exists(), 60, message="the dev cluster up")
        _run_two_replicas(_port(args), tmp_path / "dev" / "context.json")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "shoal dev: stopped" in out
    assert _containers(cluster) == 0 and _daemons(tmp_path) == []
    assert not pid_file.exists()
