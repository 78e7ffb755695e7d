"""Fixtures shared by the integration tests (real Docker; real etcd elsewhere)."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import ImageNotFound

from node.dev import vipranges
from node.dev.devcluster import DevCluster, remove_containers
from node.dev.leftovers import stop_proxy_workers
from node.model.config import NodeConfig
from tests.integration.registry import (  # noqa: F401  (fixtures for every test here)
    auth_registry,
    local_registry,
    no_pulled_images_left,
)

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "deploy" / "images" / "build.sh"
DEMO_IMAGES = (
    "shoal-demo/base:1",
    "shoal-demo/web:1",
    "shoal-demo/web:2",
    "shoal-demo/web:bad",
    "shoal-demo/web:hc",
    "shoal-demo/crash:1",
)


DEFAULT_VIP_RANGE = ipaddress.IPv4Network(NodeConfig.vip_range)


@pytest.fixture(scope="session", autouse=True)
def no_default_vip_route() -> Iterator[None]:
    """Every daemon a test starts on this host's own network stack gets a VIP range of its
    own (`node.dev.vipranges`): the default one left as a local route on `lo` captures
    the whole 10.213.0.0/16 and broke the network-namespace beds of later tests."""
    before = DEFAULT_VIP_RANGE in vipranges.local_routes()
    yield
    if not before and DEFAULT_VIP_RANGE in vipranges.local_routes():
        vipranges.release(str(DEFAULT_VIP_RANGE))
        pytest.fail(f"a test started a daemon with the default vip_range {DEFAULT_VIP_RANGE} on the host")


@pytest.fixture(scope="session", autouse=True)
def no_proxy_workers_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A daemon's graceful stop leaves its proxy workers serving (decisions 63 and 76), and
    `DevCluster.stop` stops its own; a test that runs shoald itself (lifecycle, joiners,
    etcd with TLS) would leave them, with `proxy_workers = auto`, two per daemon on this
    machine, for good. At the session's end every worker under its temporary directories
    is told to stop (killed after 5 s)."""
    yield
    base = tmp_path_factory.getbasetemp()
    for directory in sorted({p.parent for p in base.rglob("worker-*.sock")}):
        stop_proxy_workers(directory)


@pytest.fixture(scope="session")
def demo_images() -> tuple[str, ...]:
    """The local demo images, built by deploy/images/build.sh when any is missing (with the
    Debian-package images: minutes on a fresh machine, hence the long timeout)."""
    client = docker.DockerClient.from_env()
    try:
        missing = []
        for image in DEMO_IMAGES:
            try:
                client.api.inspect_image(image)
            except ImageNotFound:
                missing.append(image)
    finally:
        client.close()
    if missing:
        done = subprocess.run(["bash", str(BUILD_SH)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"{BUILD_SH} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return DEMO_IMAGES


@pytest.fixture
def make_cluster(tmp_path: Path, demo_images: tuple[str, ...]) -> Iterator[Callable[..., DevCluster]]:
    """Start real clusters (own etcd, N daemons on 127.0.0.1..N, free ports, a unique
    cluster name); every one is stopped and its containers removed at teardown."""
    started: list[DevCluster] = []

    def make(nodes: int = 3, **kwargs: Any) -> DevCluster:
        cluster = DevCluster.on_free_ports(tmp_path / f"cluster{len(started)}", nodes, **kwargs)
        started.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in started:
        cluster.stop()
        leftovers = remove_containers(cluster.cluster)
        assert leftovers == 0, f"{leftovers} container(s) of {cluster.cluster} outlived stop()"
