"""Images from registries on a real cluster (issue 13, item 7): real etcd, real daemons,
real Docker and a real registry (Debian's `docker-registry` on 127.0.0.1), with and
without authentication (htpasswd, Basic).

- `apply` resolves the tag to a digest and stores it with the version; every replica
  runs `<registry>/<repository>@<digest>`, also one started after the tag was pushed
  again (a scale); applying the same file again then moves the service to the new digest.
- A tag the registry does not have, a registry that wants credentials, wrong credentials:
  `apply` fails at once with the registry's reason, and nothing is written (no key of
  services/, history/, ports/, objuse/ changes).
- A registry gone silent: `apply` fails at the request's deadline, nothing written.
- `pull: never` with an image no engine has: the task fails saying so.
- Credentials as a secret (`image_pull_secret`), or kept by `shoal registry login HOST`:
  the registry answers, the engine pulls; after `logout` the registry refuses again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from node.api.registry import TIMEOUT
from node.dev.devcluster import DevCluster
from node.wire.client import FailedPrecondition, NotFound
from tests.helpers import on_store, wait_until_sync
from tests.integration.registry import LocalRegistry

pytestmark = pytest.mark.integration

AT_ONCE = 5.0  # s: a refused apply answers within this (it used to wait out --wait, 600 s)
SPEC = "name: {name}\nimage: {image}\nreplicas: {replicas}\nupdate: {{parallelism: 2}}\nstop_grace: 1\n"


WRITTEN = ("services/", "history/", "ports/", "objuse/")  # what an apply writes


def written(cluster: DevCluster) -> list[tuple[str, int]]:
    """(key, mod revision) of every key an apply writes (agents keep writing status and
    events meanwhile, so the cluster's revision moves on its own)."""

    async def read(store: object) -> list[tuple[str, int]]:
        out = []
        for part in WRITTEN:
            kvs, _ = await store.range(cluster.prefix + part)  # type: ignore[attr-defined]
            out += [(kv.key, kv.mod_revision) for kv in kvs]
        return out

    return on_store(cluster.etcd.endpoint, read)


def images_run(cluster: DevCluster, name: str, count: int, version: int = 0) -> Callable[[], list[str]]:
    """The `Config.Image` of each running replica of `name` once `count` run (at `version`
    or later), else []."""

    def find() -> list[str]:
        with cluster.client() as c:
            ids = [
                t.container_id
                for t in c.list_tasks(name)
                if t.state == "running" and t.container_id and t.version >= version
            ]
        if len(ids) != count:
            return []
        engine = docker.from_env()
        try:
            return [engine.api.inspect_container(i)["Config"]["Image"] for i in ids]
        finally:
            engine.close()

    return find


def refused(cluster: DevCluster, spec: str, reason: str, bound: float = AT_ONCE) -> None:
    """`apply` of `spec` fails within `bound` seconds with `reason`, and writes nothing."""
    before = written(cluster)
    start = time.monotonic()
    with cluster.client() as c, pytest.raises(FailedPrecondition, match=reason):
        c.apply(spec)
    took = time.monotonic() - start
    assert took < bound, f"the refusal took {took:.1f}s"
    assert written(cluster) == before, "a refused apply writes nothing"
    print(f"\nrefused in {took * 1000:.0f} ms: {reason}")


def test_apply_pins_the_digest_every_replica_runs_it_and_a_bad_image_fails_at_once(
    make_cluster: Callable[..., DevCluster], local_registry: LocalRegistry
) -> None:
    cluster = make_cluster(2)
    reg = local_registry.address
    image = f"{reg}/{local_registry.push('shoal-test-pin', '1', size=100_000)}"
    with cluster.client() as c:
        start = time.monotonic()
        c.apply(SPEC.format(name="pin", image=image, replicas=2))
        took = time.monotonic() - start
        first = json.loads(c.get_service("pin").spec_json)["image_digest"]
    print(f"\napply with the tag resolved at the registry: {took * 1000:.0f} ms")
    pinned = f"{reg}/shoal-test-pin@{first}"
    assert wait_until_sync(images_run(cluster, "pin", 2), 90, 0.3, "2 replicas") == [pinned] * 2

    local_registry.push("shoal-test-pin", "1", size=100_000)  # the tag moves
    with cluster.client() as c:
        c.scale("pin", 3)
    runs = wait_until_sync(images_run(cluster, "pin", 3), 90, 0.3, "3 replicas after the tag moved")
    assert runs == [pinned] * 3, "a replica started after the push runs the version's digest"

    with cluster.client() as c:
        moved = c.apply(SPEC.format(name="pin", image=image, replicas=3))
        second = json.loads(c.get_service("pin").spec_json)["image_digest"]
    assert moved.changed and second != first
    rolled = wait_until_sync(
        images_run(cluster, "pin", 3, moved.version), 120, 0.3, "rolled to the new digest"
    )
    assert rolled == [f"{reg}/shoal-test-pin@{second}"] * 3

    refused(
        cluster, SPEC.format(name="gone", image=f"{reg}/shoal-test-pin:nope", replicas=1), "manifest unknown"
    )
    refused(cluster, SPEC.format(name="pin", image=f"{reg}/shoal-test-absent:1", replicas=3), "HTTP 404")
    with cluster.client() as c, pytest.raises(NotFound):
        c.get_service("gone")

    # A registry gone silent (its relay accepts and forwards nothing): refused at the
    # request's deadline (node.api.registry.TIMEOUT), nothing written.
    relay = local_registry.relay()
    relay.freeze()
    silent = f"127.0.0.1:{relay.port}/shoal-test-pin:1"
    spec = SPEC.format(name="pin", image=silent, replicas=3)
    refused(cluster, spec, "cannot be reached", bound=TIMEOUT + 5)
    relay.restore()

    # pull: never runs what the engine holds; an image it lacks fails the task, saying so.
    never = f"{reg}/shoal-test-never:1"
    with cluster.client() as c:
        c.apply(SPEC.format(name="never", image=never, replicas=1) + "pull: never\n")

    def failed() -> str:
        with cluster.client() as c:
            found = [(t.state, t.message) for t in c.list_tasks("never")]
        if not (found and found[0][0] == "failed" and "pull: never" in found[0][1]):
            raise AssertionError(f"never: {found}")
        return found[0][1]

    print(wait_until_sync(failed, 60, 0.3, "the pull: never task failed with the reason"))


def test_credentials_from_a_pull_secret_wrong_or_missing_ones_fail_at_once(
    make_cluster: Callable[..., DevCluster], auth_registry: LocalRegistry
) -> None:
    assert auth_registry.user is not None
    user, password = auth_registry.user
    cluster = make_cluster(1)
    reg = auth_registry.address
    image = f"{reg}/{auth_registry.push('shoal-test-private', '1', size=100_000)}"
    spec = SPEC.format(name="private", image=image, replicas=2) + "image_pull_secret: regcred\n"

    refused(cluster, SPEC.format(name="private", image=image, replicas=2), "needs credentials")
    refused(cluster, spec, "secret 'regcred' does not exist")
    with cluster.client() as c:
        c.put_object("secret", "regcred", f"{user}:wrong".encode())
    refused(cluster, spec, r"refused the credentials \(HTTP 401\)")

    config = {
        "auths": {
            "127.0.0.2:1": {"username": "x", "password": "y"},
            reg: {"username": user, "password": password},
        }
    }
    with cluster.client() as c:
        c.put_object("secret", "regcred", json.dumps(config).encode(), update=True)
        c.apply(spec)
        digest = json.loads(c.get_service("private").spec_json)["image_digest"]
    runs = wait_until_sync(images_run(cluster, "private", 2), 90, 0.3, "2 replicas pulled with credentials")
    assert runs == [f"{reg}/shoal-test-private@{digest}"] * 2

    # `shoal registry login HOST` (the CLI, password on stdin): used for HOST's images
    # whose service names no image_pull_secret; `logout` forgets it.
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(repo)}

    def shoal(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        cmd = [sys.executable, "-m", "node.cli.main", *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, env=env, cwd=repo)

    plain = SPEC.format(name="plain", image=image, replicas=1)
    refused(cluster, plain, "needs credentials")
    done = shoal("registry", "login", reg, "-u", user, "--password-stdin", stdin=password.encode() + b"\n")
    assert done.returncode == 0, done.stderr
    assert password.encode() not in done.stdout + done.stderr
    with cluster.client() as c:
        c.apply(plain)
    wait_until_sync(images_run(cluster, "plain", 1), 90, 0.3, "a replica pulled with the login's credentials")
    done = shoal("registry", "logout", reg)
    assert done.returncode == 0, done.stderr
    refused(cluster, plain.replace("replicas: 1", "replicas: 2"), "needs credentials")

    logs = "\n".join(m.log_path.read_text(errors="replace") for m in cluster.members)
    assert password not in logs
