"""A slow image pull holds up nothing else on its node; `ps` shows it `pulling`.

Real etcd, a real daemon, real Docker, a real registry (Debian's `docker-registry` on
127.0.0.1, `tests.integration.registry`) behind a relay throttled to 16 kB/s, so that
pulling a fresh 2 MB layer would take two minutes. While it is under way, a replica of
another service on the same node is `docker kill`ed: it must run again (a new
container) while the slow task still shows `pulling`. Then the relay runs at full
speed and the slow task runs. An image the registry does not have is refused at
`apply`, with the registry's reason. Every wait polls with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import docker
import pytest
import requests

from node.api.registry import resolve_digest
from node.dev.devcluster import DevCluster
from node.model.images import ImageRef
from node.wire.client import FailedPrecondition
from tests.helpers import wait_until_sync
from tests.integration.registry import LocalRegistry

pytestmark = pytest.mark.integration

WEB = """
name: web
image: shoal-demo/web:1
replicas: 1
ports:
  - {container: 8080, protocol: http}
"""
SLOW = """
name: slow
image: {image}
replicas: 1
"""
THROTTLE = 16_000  # bytes/s: the 2 MB layer would take ~2 minutes
RESTART_BOUND = 20.0  # s from the kill: running again (restart delay 0.5 s + a pass or two, loaded host)


def tasks(cluster: DevCluster, service: str) -> list[tuple[str, str, str]]:
    """[(state, message, container id)] of `service`'s tasks."""
    with cluster.client() as c:
        return [(t.state, t.message, t.container_id) for t in c.list_tasks(service)]


def test_a_slow_pull_shows_pulling_and_a_killed_replica_restarts_meanwhile(
    make_cluster: Callable[..., DevCluster], local_registry: LocalRegistry
) -> None:
    image = local_registry.push_unique("shoal-test-slow", size=2_000_000)
    relay = local_registry.relay(rate=THROTTLE)
    ref = local_registry.ref(image, via=relay)
    cluster = make_cluster(1)
    with cluster.client() as c:
        c.apply(WEB)
    [(_, _, first)] = wait_until_sync(
        lambda: [t for t in tasks(cluster, "web") if t[0] == "running"], 60, 0.2, "web running"
    )
    with cluster.client() as c:
        c.apply(SLOW.format(image=ref))

    def pulling() -> list[tuple[str, str, str]]:
        found = tasks(cluster, "slow")
        pinned = f"pulling {ref.rsplit(':', 1)[0]}@sha256:"  # the tag resolved at apply (issue 13)
        if not (found and found[0][0] == "pulling" and found[0][1].startswith(pinned)):
            raise AssertionError(f"slow: {found}")
        return found

    wait_until_sync(pulling, 30, 0.2, "the slow task shown pulling")

    engine = docker.from_env()
    try:
        engine.api.kill(first)
    finally:
        engine.close()
    killed = time.monotonic()

    def restarted() -> str:
        found = [t for t in tasks(cluster, "web") if t[0] == "running" and t[2] != first]
        return found[0][2] if found else ""

    wait_until_sync(restarted, RESTART_BOUND, 0.1, "the killed web replica running again")
    took = time.monotonic() - killed
    pulling()  # the pull is still under way: the restart did not wait for it
    print(f"\nkilled replica running again {took:.1f}s after the kill, the slow pull still under way")

    relay.set_rate(None)
    wait_until_sync(
        lambda: [t for t in tasks(cluster, "slow") if t[0] == "running"], 120, 0.5, "the slow task running"
    )

    # An image the registry does not have: the apply is refused at once with the
    # registry's reason (its tag is resolved before anything is written, issue 13).
    missing = local_registry.ref("shoal-test-missing:1", via=relay)
    with cluster.client() as c, pytest.raises(FailedPrecondition, match="manifest unknown"):
        c.apply(SLOW.replace("slow", "gone", 1).format(image=missing))


def test_a_pull_from_a_registry_gone_silent_fails_at_its_deadline_and_is_retried(
    make_cluster: Callable[..., DevCluster], local_registry: LocalRegistry
) -> None:
    """The registry stops answering mid-way (its relay frozen: connections accepted, no
    byte forwarded): the pull is abandoned at `--pull-timeout`, the task is `failed`
    with the reason, and the retry (back-off) succeeds once the registry answers again."""
    image = local_registry.push_unique("shoal-test-stall", size=500_000)
    relay = local_registry.relay()
    relay.freeze()
    # Pinned by hand (name@digest, asked of the registry itself): an apply resolves a tag at
    # the registry first and would be refused at once through the frozen relay (issue 13).
    name, tag = image.rsplit(":", 1)
    with requests.Session() as http:
        digest = resolve_digest(http, ImageRef(local_registry.address, name, tag, ""), None)  # type: ignore[arg-type]
    ref = f"127.0.0.1:{relay.port}/{name}@{digest}"
    cluster = make_cluster(1, extra_args=["--pull-timeout", "4"])
    with cluster.client() as c:
        c.apply(SLOW.replace("slow", "stall", 1).format(image=ref))

    def failed() -> bool:
        found = tasks(cluster, "stall")
        if not (found and found[0][0] == "failed" and "could not be pulled" in found[0][1]):
            raise AssertionError(f"stall: {found}")
        return True

    wait_until_sync(failed, 60, 0.2, "the stalled pull reported failed after pull_timeout")
    relay.restore()
    wait_until_sync(
        lambda: [t for t in tasks(cluster, "stall") if t[0] == "running"], 120, 0.5, "the retried pull ran"
    )
