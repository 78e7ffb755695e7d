"""`node.proxy.routes`: what the mesh listens on and where each listener sends traffic."""

from __future__ import annotations

import json

from node.model.domain import EndpointRecord
from node.proxy import routes
from node.proxy.balancer import Backend
from tests.factories import make_service


def _endpoint(task: str, node: str, ports: dict[str, int], service: str = "web") -> EndpointRecord:
    first = next(iter(ports.items()))
    return EndpointRecord(task, service, node, "127.0.0.9", first[1], int(first[0]), ports)


def test_routes_one_listener_per_published_port_first_name_wins_a_clash() -> None:
    web = make_service(
        "web",
        ports=[
            {"container": 80, "published": 8080, "protocol": "http"},
            {"container": 9000, "published": 9000, "protocol": "tcp"},
            {"container": 7000},
        ],
    )
    other = make_service("zzz", ports=[{"container": 1, "published": 8080, "protocol": "tcp"}])
    got = routes.listeners([other, web])
    assert got == {
        8080: routes.Route("web", 8080, 80, "http"),
        9000: routes.Route("web", 9000, 9000, "tcp"),
    }


def test_routes_backends_use_the_host_port_of_the_routes_container_port() -> None:
    route = routes.Route("web", 9000, 9000, "tcp")
    eps = [
        _endpoint("t1", "n1", {"80": 31001, "9000": 32001}),
        _endpoint("t2", "n2", {"80": 31002}),  # does not publish 9000
        _endpoint("t3", "n3", {"9000": 32003}, service="api"),
    ]
    assert routes.backends(route, eps) == [Backend("t1", "127.0.0.9", 32001, "n1")]
    old = EndpointRecord("t4", "web", "n4", "127.0.0.9", 32004, 9000)  # written before `ports` existed
    assert routes.backends(route, [old]) == [Backend("t4", "127.0.0.9", 32004, "n4")]


def test_routable_needs_the_assignment_and_a_live_node() -> None:
    eps = [
        _endpoint("t2", "n2", {"80": 2}),
        _endpoint("t1", "n1", {"80": 1}),
        _endpoint("t3", "n3", {"80": 3}),
    ]
    assigned = {("t1", "n1"), ("t2", "n9"), ("t3", "n3")}  # t2 moved to n9: n2's endpoint is stale
    assert [e.task_id for e in routes.routable(eps, assigned, gone=set())] == ["t1", "t3"]
    assert [e.task_id for e in routes.routable(eps, assigned, gone={"n3"})] == ["t1"]


def test_an_old_task_handing_off_its_slot_stays_routable() -> None:
    from node.model.domain import Assignment

    old = Assignment("t-old", "web", 1, "n1", 1, 1, "a")
    new = Assignment("t-new", "web", 1, "n2", 2, 1, "b", handoff=json.loads(old.to_json()))
    assert routes.assignments([new]) == {("t-new", "n2"), ("t-old", "n1")}
    assert new.handed_off() == old
    assert Assignment.from_json(new.to_json()) == new
