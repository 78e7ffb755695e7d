"""The rolling-upgrade rule for stored specs (node.model.spec_compat): a spec is written
only when every live node's build can read it back."""

from __future__ import annotations

import pytest

from node.api.services import ServiceWriter
from node.model.domain import NodeInfo
from node.model.errors import FailedPrecondition, InvalidArgument
from node.model.keys import Keys
from node.model.spec import ServiceSpec, parse_spec
from node.model.spec_compat import known_paths, unknown_to, used_paths
from node.store.memory import MemoryStore

RICH = """
name: api
image: shoal-demo/web:1
command: [/bin/start-web]
env: {SOME_KEY: v, OTHER: w}
replicas: 2
mode: replicated
ports: [{container: 8080, published: 18080, protocol: http}]
resources: {cpu: 0.5, memory: 64Mi, limits: {cpu: 1, memory: 128Mi}}
placement: {constraints: ["node.labels.zone == a"], strategy: binpack, max_per_node: 2}
health: {http: {path: /health, port: 8080, scheme: http}, interval: 1s}
restart: {condition: on-failure, max_attempts: 3}
update: {order: start-first, failure_action: pause, parallelism: 1}
stop_grace: 5s
logging: {driver: json-file, options: {max-size: 1m}}
depends_on: {db: healthy}
"""


def _spec(text: str = RICH) -> ServiceSpec:
    return parse_spec(text, "api.yaml")


def test_every_field_of_the_spec_is_a_known_path() -> None:
    known = known_paths()
    assert set(ServiceSpec.model_fields) <= known
    assert {"health.http.path", "ports.protocol=http", "depends_on.*=healthy", "mode=global"} <= known


def test_what_a_spec_uses_is_known_to_its_own_build_and_user_data_is_no_path() -> None:
    used = used_paths(_spec())
    assert used <= known_paths(), used - known_paths()
    assert {"depends_on.*=healthy", "update.order=start-first", "ports.protocol=http"} <= used
    assert not any("SOME_KEY" in p or "max-size" in p for p in used)  # env and options are data
    assert "secrets" not in used  # None is left out of the stored form, so old builds read it


def test_a_node_whose_build_lacks_a_field_or_a_value_is_named() -> None:
    old = known_paths() - {"depends_on", "depends_on.*", "depends_on.*=healthy", "depends_on.*=started"}
    older = known_paths() - {"update.order=start-first"}
    builds = [("n1", known_paths()), ("n2", old), ("n3", older), ("n4", [])]
    got = unknown_to(_spec(), builds)
    assert got["depends_on"] == ["n2"]
    assert got["update.order=start-first"] == ["n3"]
    assert not any("n1" in nodes or "n4" in nodes for nodes in got.values())  # n4: publishes nothing
    assert unknown_to(_spec("name: web\nimage: shoal-demo/web:1\n"), builds) == {}


async def test_apply_of_a_spec_an_older_node_cannot_read_is_refused_and_writes_nothing() -> None:
    store, keys = MemoryStore(), Keys()
    writer = ServiceWriter(store, keys, "n1")
    old = sorted(known_paths() - {p for p in known_paths() if p.startswith("depends_on")})
    for node, paths, version in (("n1", sorted(known_paths()), "0.1.0"), ("n2", old, "0.0.9")):
        info = NodeInfo(node, "127.0.0.1", 7070, version=version, spec_paths=paths)
        await store.put(keys.node(node), info.to_json())
    with pytest.raises(FailedPrecondition) as err:
        await writer.apply(RICH, "api.yaml")
    text = str(err.value)
    assert "field depends_on" in text and "n2 (shoal 0.0.9)" in text and "upgrade" in text
    assert await store.get(keys.service("api")) is None
    record, written = await writer.apply(RICH.replace("depends_on: {db: healthy}\n", ""), "api.yaml")
    assert written and record.version == 1  # what every node reads goes through
    new = NodeInfo("n2", "127.0.0.1", 7070, version="0.1.0", spec_paths=sorted(known_paths()))
    await store.put(keys.node("n2"), new.to_json())  # n2 upgraded
    record, written = await writer.apply(RICH, "api.yaml")
    assert written and record.version == 2


def test_grpc_ports_and_checks_are_refused_where_a_build_predates_them() -> None:
    spec = _spec(
        "name: api\nimage: shoal-deb/python:1\n"
        "ports: [{container: 50051, published: 15051, protocol: grpc}]\n"
        "health: {grpc: {port: 50051, service: shop.Cart}}\n"
    )
    used = used_paths(spec)
    assert {"ports.protocol=grpc", "health.grpc", "health.grpc.port", "health.grpc.service"} <= used
    assert "ports.protocol=http2" in known_paths()
    before = known_paths() - {p for p in known_paths() if "grpc" in p or p.endswith("=http2")}
    got = unknown_to(spec, [("new", known_paths()), ("old", before)])
    assert got == {
        p: ["old"] for p in ("health.grpc", "health.grpc.port", "health.grpc.service", "ports.protocol=grpc")
    }
    assert used_paths(_spec()) <= before  # a spec without them is unchanged for old builds


@pytest.mark.parametrize(
    "bad",
    [b"not json", b'{"id": "n3", "address": "x", "grpc_port": 7070, "spec_paths": 5}'],
    ids=["not-json", "spec-paths"],
)
async def test_a_node_record_that_cannot_be_read_does_not_refuse_every_apply(bad: bytes) -> None:
    """One node record written around the API made every `service apply` fail (INTERNAL):
    now it is not judged (the leader holds that node), and the readable nodes still are."""
    store, keys = MemoryStore(), Keys()
    writer = ServiceWriter(store, keys, "n1")
    old = sorted(known_paths() - {p for p in known_paths() if p.startswith("depends_on")})
    for node, paths in (("n1", sorted(known_paths())), ("n2", old)):
        await store.put(keys.node(node), NodeInfo(node, "127.0.0.1", 7070, spec_paths=paths).to_json())
    await store.put(keys.node("n3"), bad)
    rich = RICH.replace("ports: [{container: 8080, published: 18080, protocol: http}]\n", "")
    with pytest.raises(FailedPrecondition, match="n2"):
        await writer.apply(rich, "api.yaml")
    record, written = await writer.apply(rich.replace("depends_on: {db: healthy}\n", ""), "api.yaml")
    assert written and record.version == 1


@pytest.mark.parametrize("bad", [b"not json", b'{"id": "n3", "address": "x", "grpc_port": "7070"}'])
async def test_a_node_record_that_cannot_be_read_does_not_refuse_a_published_port(bad: bytes) -> None:
    """The port policy reads every node record (their gRPC ports are reserved): one written
    around the API failed every apply that publishes a port (INTERNAL)."""
    store, keys = MemoryStore(), Keys()
    writer = ServiceWriter(store, keys, "n1")
    await store.put(
        keys.node("n1"), NodeInfo("n1", "127.0.0.1", 7070, spec_paths=sorted(known_paths())).to_json()
    )
    await store.put(keys.node("n3"), bad)
    spec = "name: web\nimage: x:1\nports: [{container: 80, published: 18080}]\n"
    record, written = await writer.apply(spec, "web.yaml")
    assert written and record.version == 1
    with pytest.raises(InvalidArgument, match="node n1's gRPC port"):
        await writer.apply(spec.replace("18080", "7070"), "web.yaml")
