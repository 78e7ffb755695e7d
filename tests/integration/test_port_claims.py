"""Published-port ownership on a real cluster (issue 11, item 4): rollbacks, automatic and
manual, never take a port another service published meanwhile.

web v1 publishes P1; v2 (an image that never passes its check) moves to P2, which frees
P1, and `api` takes P1 at once. When v2 fails, the leader's automatic rollback to v1
would publish P1 again: it is refused, with an event naming `api`, and so is a manual
`rollback`. The refused rollback stays due and is tried again on every pass, so once
`api` is removed the leader's own rollback goes through, exactly once. (A manual
`rollback` here would race it: whichever lands second rolls the first one back, as
`docker service rollback` does after Swarm's automatic rollback.)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from node.dev.devcluster import DevCluster
from node.wire.client import FailedPrecondition
from tests.helpers import free_port_on_all, wait_until_sync

pytestmark = pytest.mark.integration

HOSTS = ["127.0.0.1", "127.0.0.2"]


def web(image: str, port: int) -> str:
    return f"""
name: web
image: {image}
replicas: 2
ports:
  - {{container: 8080, published: {port}, protocol: http}}
health: {{http: {{port: 8080, path: /health}}, interval: 0.5s, timeout: 0.5s, retries: 2}}
update: {{parallelism: 2, monitor: 1s, drain: 0s}}
stop_grace: 1s
"""


def api(port: int) -> str:
    return f"name: api\nimage: shoal-demo/web:1\nports: [{{container: 8080, published: {port}}}]\n"


def test_rollbacks_onto_a_port_taken_meanwhile_are_refused_naming_the_owner(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster(nodes=2)
    p1 = free_port_on_all(HOSTS)
    p2 = free_port_on_all(HOSTS)
    while p2 == p1:
        p2 = free_port_on_all(HOSTS)
    with cluster.client() as c:
        c.apply(web("shoal-demo/web:1", p1), "web.yaml")
        wait_until_sync(lambda: len(c.resolve("web")) == 2, 60, message="web v1 routable")
        bad = c.apply(web("shoal-demo/web:bad", p2), "web.yaml")
        c.apply(api(p1), "api.yaml")  # P1 was freed by v2's write

        def refused() -> list[str]:
            return [e.message for e in c.events(service="web") if e.kind == "rollout.rollback_refused"]

        [message] = wait_until_sync(refused, 90, interval=0.5, message="automatic rollback refused")
        assert f"port {p1} is already published by service 'api'" in message
        svc = c.get_service("web")
        assert (svc.version, svc.image) == (bad.version, "shoal-demo/web:bad"), "no rollback was written"

        with pytest.raises(FailedPrecondition, match=f"port {p1} is already published by service 'api'"):
            c.rollback("web")
        assert c.get_service("web").version == bad.version

        c.delete_service("api")

        def rolled_back() -> bool:
            svc = c.get_service("web")
            return svc.version > bad.version

        wait_until_sync(rolled_back, 60, interval=0.5, message="automatic rollback once P1 was free")
        svc = c.get_service("web")
        assert (svc.version, svc.image, svc.rollback_of) == (bad.version + 1, "shoal-demo/web:1", bad.version)
        wait_until_sync(lambda: len(c.resolve("web")) == 2, 60, message="web v1 routable again on P1")
        assert c.get_service("web").version == bad.version + 1, "the rollback was written once"
