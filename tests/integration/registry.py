"""A real image registry on 127.0.0.1 for integration tests (Debian's `docker-registry`).

    def test_x(local_registry: LocalRegistry) -> None:
        image = local_registry.push_unique("slow", size=2_000_000)  # built, pushed, removed here
        relay = local_registry.relay(rate=16_000)  # bytes/s towards dockerd
        ref = local_registry.ref(image, via=relay)  # "127.0.0.1:<relay port>/slow:<tag>"
        ...; relay.set_rate(None)  # full speed

The registry runs from a temporary config and storage on a free port of 127.0.0.1 and
is stopped at teardown. Docker talks plain HTTP to registries on 127.0.0.0/8 without
any daemon setting. `push_unique` builds an image from `shoal-demo/web:1` plus a layer
of random bytes (so no engine on this host has it), pushes it and removes it from the
local engine again: a later pull must download that layer through whatever is in the
way. `relay` puts a `tests.relay.Relay` (throttled, or frozen on demand) in front of
the registry. Nothing here names any registry but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from tests.helpers import free_port, wait_until_sync
from tests.relay import Relay

BINARY = "docker-registry"  # Debian's package docker-registry (deploy/install.sh installs it)
BASE_IMAGE = "shoal-demo/web:1"
CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""
AUTH = """\
auth:
  htpasswd:
    realm: shoal-test
    path: {htpasswd}
"""


@dataclass
class LocalRegistry:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    relays: list[Relay] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)  # name:tag of every image pushed
    user: tuple[str, str] | None = None  # htpasswd (bcrypt, apache2-utils): Basic auth required

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            pytest.fail(f"{BINARY} is not installed: apt-get install docker-registry (deploy/install.sh)")
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        text = CONFIG.format(storage=storage, port=self.port)
        if self.user is not None:
            htpasswd = self.workdir / "htpasswd"
            made = subprocess.run(
                ["htpasswd", "-Bbn", *self.user], capture_output=True, check=True, timeout=30
            )  # apache2-utils (deploy/install.sh); the registry reads bcrypt only
            htpasswd.write_bytes(made.stdout)
            text += AUTH.format(htpasswd=htpasswd)
        config.write_text(text)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=log, start_new_session=True
        )
        wait_until_sync(self._answers, timeout, 0.1, f"the registry on {self.address} (log {self.log_path})")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{BINARY} exited ({self.proc.returncode}); see {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 401 and self.user is not None  # up, and asking for credentials

    def stop(self) -> None:
        for relay in self.relays:
            relay.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def relay(self, rate: float | None = None) -> Relay:
        """A relay on a free port of 127.0.0.1 in front of the registry (`rate` bytes/s)."""
        relay = Relay.tcp(free_port(), ("127.0.0.1", self.port), rate)
        self.relays.append(relay)
        return relay

    @staticmethod
    def ref(image: str, via: Relay) -> str:
        """`image` (name:tag) as pulled through the relay `via`."""
        return f"127.0.0.1:{via.port}/{image}"

    def push_unique(self, name: str, size: int = 2_000_000) -> str:
        """Build `name:<random tag>` (BASE_IMAGE plus `size` random bytes), push it here and
        remove it from the local engine; return "name:tag"."""
        return self.push(name, uuid.uuid4().hex[:12], size)

    def push(self, name: str, tag: str, size: int = 2_000_000) -> str:
        """Build `name:tag` (BASE_IMAGE plus `size` random bytes: new content at each call,
        so pushing a tag again moves it), push it here and remove it from the local
        engine; return "name:tag"."""
        auth = {"username": self.user[0], "password": self.user[1]} if self.user else None
        local = f"{self.address}/{name}:{tag}"
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            for path, data in (
                ("Dockerfile", f"FROM {BASE_IMAGE}\nCOPY blob /blob\n".encode()),
                ("blob", os.urandom(size)),
            ):
                info = tarfile.TarInfo(path)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        context.seek(0)
        client = docker.from_env()
        try:
            client.images.build(fileobj=context, custom_context=True, tag=local, rm=True)
            pushing = client.api.push(
                f"{self.address}/{name}", tag=tag, stream=True, decode=True, auth_config=auth
            )
            for event in pushing:
                if isinstance(event, dict) and event.get("error"):
                    raise RuntimeError(f"push of {local} failed: {event['error']}")
            client.images.remove(local, force=True)
        finally:
            client.close()
        self.pushed.append(f"{name}:{tag}")
        return f"{name}:{tag}"


def remove_pulled(images: list[str]) -> None:
    """Remove local copies of `images` (refs as pulled), e.g. at teardown."""
    client = docker.from_env()
    try:
        for image in images:
            with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
                client.images.remove(image, force=True)
    finally:
        client.close()


def images_from(address: str) -> list[str]:
    """Ids of the local images named after the registry at `address` (by tag or digest)."""
    client = docker.from_env()
    try:
        return [
            image.id
            for image in client.images.list()
            if any(r.startswith(f"{address}/") for r in [*image.tags, *image.attrs.get("RepoDigests", [])])
        ]
    finally:
        client.close()


_SERVED: list[str] = []  # the addresses (registries and relays) this test process pulled from


@pytest.fixture(scope="session", autouse=True)
def no_pulled_images_left() -> Iterator[None]:
    """Remove at the session's end what dockerd pulled from this process's registries.
    A test's own teardown (`_serve`) runs before its cluster's when the cluster fixture
    came first, and an image a container still uses cannot be removed: those images,
    named by digest only, were left behind (four per run). Each registry has a port of
    its own, so another xdist worker's images are not touched."""
    yield
    for address in _SERVED:
        remove_pulled(images_from(address))


@pytest.fixture
def local_registry(tmp_path: Path, demo_images: tuple[str, ...]) -> Iterator[LocalRegistry]:
    """A registry on 127.0.0.1:<free port>, its storage under tmp_path; stopped at teardown,
    with every relay made through it."""
    yield from _serve(LocalRegistry(free_port(), tmp_path / "registry"))


@pytest.fixture
def auth_registry(tmp_path: Path, demo_images: tuple[str, ...]) -> Iterator[LocalRegistry]:
    """As `local_registry`, but every request needs Basic auth as `registry.user`."""
    user = ("shoal", uuid.uuid4().hex)
    yield from _serve(LocalRegistry(free_port(), tmp_path / "auth-registry", user=user))


def _serve(registry: LocalRegistry) -> Iterator[LocalRegistry]:
    registry.workdir.mkdir(parents=True, exist_ok=True)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()
        remove_pulled(
            [LocalRegistry.ref(image, relay) for image in registry.pushed for relay in registry.relays]
        )
        served = [registry.address, *(f"127.0.0.1:{relay.port}" for relay in registry.relays)]
        for address in served:  # pulled by digest (no tag left), straight from it or through a relay
            remove_pulled(images_from(address))
        _SERVED.extend(served)  # in use by a cluster still up: removed at the session's end
