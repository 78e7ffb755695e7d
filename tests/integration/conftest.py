"""Fixtures shared by the integration tests (real Docker; real etcd elsewhere)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest
from docker.errors import ImageNotFound

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "deploy" / "images" / "build.sh"
DEMO_IMAGES = ("shoal-demo/base:1", "shoal-demo/web:1", "shoal-demo/web:2")


@pytest.fixture(scope="session")
def demo_images() -> tuple[str, ...]:
    """The local demo images, built by deploy/images/build.sh when any is missing."""
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
        done = subprocess.run(["bash", str(BUILD_SH)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"{BUILD_SH} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return DEMO_IMAGES
