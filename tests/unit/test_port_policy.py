"""Published ports: shoal's own are reserved, and below 1024 only an admin publishes
(issue 11, items 12 and 15d: a deployer published 22, 80 and etcd's port on every node)."""

from __future__ import annotations

import pytest

from node.api.port_policy import PortPolicy
from node.api.services import ServiceWriter
from node.model.domain import NodeInfo
from node.model.errors import InvalidArgument, PermissionDenied
from node.model.keys import Keys
from node.security import auth
from node.security.ca import Identity, Kind
from node.security.tokens import Role
from node.store.memory import MemoryStore

KEYS = Keys("/p/")


def spec(name: str, *ports: int) -> str:
    lines = [f"name: {name}", "image: web:1", "replicas: 1"]
    if ports:
        lines.append("ports:")
        lines += [f"  - {{container: {8080 + i}, published: {p}}}" for i, p in enumerate(ports)]
    return "\n".join(lines) + "\n"


def as_role(role: Role) -> None:
    """Act as a caller of `role` (the interceptor's context variable; each test runs in a
    task of its own, so it does not leak to other tests)."""
    auth._caller.set(auth.Caller(Identity("unit", Kind.CLIENT, "someone"), f"tok{role}", role))


async def _writer() -> tuple[MemoryStore, ServiceWriter]:
    store = MemoryStore()
    await store.put(KEYS.node("n2"), NodeInfo("n2", "10.0.0.2", 7170).to_json())
    writer = ServiceWriter(store, KEYS, "n1")
    writer.ports = PortPolicy.of(7070, 7071, ["10.0.0.9:2379"], [9100])
    return store, writer


@pytest.mark.parametrize(
    ("port", "why"),
    [
        (7070, "shoal's own"),
        (7071, "shoal's own"),
        (2379, "shoal's own"),
        (2380, "shoal's own"),
        (9100, "shoal's own"),
        (7170, "node n2's gRPC port"),
    ],
)
async def test_shoals_own_ports_are_reserved_for_every_role(port: int, why: str) -> None:
    store, writer = await _writer()
    as_role(Role.ADMIN)
    with pytest.raises(InvalidArgument, match=rf"ports\[1\].published: port {port} is reserved \({why}"):
        await writer.apply(spec("web", 31000, port), "web.yaml")
    assert await store.get(KEYS.service("web")) is None  # nothing written


async def test_a_port_below_1024_needs_the_admin_role() -> None:
    store, writer = await _writer()
    for role in (Role.DEPLOYER, Role.VIEWER):
        as_role(role)
        with pytest.raises(PermissionDenied, match=r"port 80 is below 1024: .* needs the admin role") as err:
            await writer.apply(spec("web", 80), "web.yaml")
        assert f"role {role}" in str(err.value)
    assert await store.get(KEYS.service("web")) is None
    as_role(Role.DEPLOYER)
    assert (await writer.apply(spec("web", 31000), "web.yaml"))[1]  # a high port is fine
    as_role(Role.ADMIN)
    assert (await writer.apply(spec("edge", 80), "edge.yaml"))[1]
    # A deployer may still change a service an admin published on 80 (the port is not added).
    as_role(Role.DEPLOYER)
    record, changed = await writer.apply(spec("edge", 80).replace("web:1", "web:2"), "edge.yaml")
    assert changed and record.version == 2
    with pytest.raises(PermissionDenied):  # but not add another low one
        await writer.apply(spec("edge", 80, 443), "edge.yaml")


async def test_a_rollback_cannot_bring_back_a_port_that_is_now_reserved() -> None:
    store, writer = await _writer()
    await writer.apply(spec("web", 7300), "web.yaml")  # no caller: an in-process call
    await writer.apply(spec("web", 31000), "web.yaml")
    await store.put(KEYS.node("n3"), NodeInfo("n3", "10.0.0.3", 7300).to_json())  # a node on 7300 now
    with pytest.raises(InvalidArgument, match="port 7300 is reserved"):
        await writer.rollback("web")
