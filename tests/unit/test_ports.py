"""Published-port ownership (`node.store.ports`, issue 11 item 4).

The pure decision (`plan`), then the API's writes (apply, scale, rollback, rm) and the
leader's automatic rollback, each on a MemoryStore and on the session's real etcd
(`writer`): ten concurrent applies of different services on one port, exactly one
wins; a rollback onto a port taken meanwhile is refused naming the owner; services
written before claims existed claim lazily on their next write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from node.api.services import ServiceWriter
from node.model.domain import PortClaim, RolloutRecord, ServiceRecord
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.model.spec import ServiceSpec, spec_from_stored
from node.store import Compare, Delete, Put, Store
from node.store.claims import Owner, Seen, plan
from node.store.etcd import EtcdStore
from node.store.memory import MemoryStore
from node.store.ports import PORTS, PortTaken
from tests.helpers import leader_with_events

KEYS = Keys()
PORT = 18431


def spec(*ports: int) -> ServiceSpec:
    published = [{"container": 8080 + i, "published": p} for i, p in enumerate(ports)]
    return spec_from_stored({"name": "web", "image": "i", "ports": published})


def claim(service: str, uid: str = "u1") -> PortClaim:
    return PortClaim(service, uid)


# -- the pure decision --------------------------------------------------------------------


def test_a_free_port_is_claimed_compared_absent() -> None:
    out = plan(KEYS, PORTS, "web", "u1", None, spec(PORT), {}, {}, {}, now=5.0)
    assert out.compares == [Compare(KEYS.port(PORT), "create", "==", 0)]
    assert out.ops == [Put(KEYS.port(PORT), PortClaim("web", "u1", 5.0).to_json())]


def test_a_port_held_already_needs_no_write_and_a_dropped_one_is_freed() -> None:
    seen = {KEYS.port(PORT): Seen(claim("web"), 7), KEYS.port(PORT + 1): Seen(claim("web"), 8)}
    out = plan(KEYS, PORTS, "web", "u1", spec(PORT, PORT + 1), spec(PORT), seen, {}, {})
    assert out.compares == [] and out.ops == [Delete(KEYS.port(PORT + 1))]


def test_a_port_of_another_live_service_is_refused_naming_it() -> None:
    seen = {KEYS.port(PORT): Seen(claim("api", "a1"), 7)}
    with pytest.raises(PortTaken, match=f"ports\\[0\\].published: port {PORT} .* service 'api'") as err:
        plan(KEYS, PORTS, "web", "u1", None, spec(PORT), seen, {"api": Owner("a1", 3)}, {})
    assert isinstance(err.value, FailedPrecondition) and err.value.owner == "api"


def test_a_stale_claim_is_taken_over_compared_on_the_claim_and_its_old_owner() -> None:
    """Its owner was removed (or re-created) by a daemon that knew nothing of claims."""
    for owner in (Owner(), Owner("another-uid", 9)):
        out = plan(
            KEYS,
            PORTS,
            "web",
            "u1",
            None,
            spec(PORT),
            {KEYS.port(PORT): Seen(claim("api", "a1"), 7)},
            {"api": owner},
            {},
        )
        assert out.compares == [
            Compare(KEYS.port(PORT), "mod", "==", 7),
            Compare(KEYS.service("api"), "mod", "==", owner.mod),
        ]
        assert [type(op) for op in out.ops] == [Put]


def test_a_claim_of_an_earlier_incarnation_of_the_same_name_is_taken_over() -> None:
    out = plan(
        KEYS,
        PORTS,
        "web",
        "u2",
        None,
        spec(PORT),
        {KEYS.port(PORT): Seen(claim("web", "u1"), 7)},
        {"web": Owner()},
        {},
    )
    assert out.compares == [Compare(KEYS.port(PORT), "mod", "==", 7)]


def test_a_port_published_by_a_service_without_claims_is_refused() -> None:
    """Written before claims existed: no `ports/` key, but its record publishes the port."""
    with pytest.raises(PortTaken, match="service 'old'"):
        plan(KEYS, PORTS, "web", "u1", None, spec(PORT), {}, {}, {KEYS.port(PORT): "old"})


def test_removing_frees_only_what_this_incarnation_holds() -> None:
    seen = {
        KEYS.port(PORT): Seen(claim("web"), 7),
        KEYS.port(PORT + 1): Seen(claim("api"), 8),
        KEYS.port(PORT + 2): Seen(),
    }
    out = plan(KEYS, PORTS, "web", "u1", spec(PORT, PORT + 1, PORT + 2), None, seen, {}, {})
    assert out.ops == [Delete(KEYS.port(PORT))]


# -- the writes, on a MemoryStore and on a real etcd --------------------------------------


@dataclass
class Writer:
    store: Store
    keys: Keys

    def api(self, node: str = "n1") -> ServiceWriter:
        return ServiceWriter(self.store, self.keys, node)

    async def claims(self) -> dict[int, PortClaim]:
        kvs, _ = await self.store.range(self.keys.ports)
        return {int(self.keys.tail(kv.key, self.keys.ports)): PortClaim.from_json(kv.value) for kv in kvs}

    async def keys_under(self, *prefixes: str) -> list[str]:
        out = []
        for prefix in prefixes:
            kvs, _ = await self.store.range(prefix)
            out += [kv.key for kv in kvs]
        return sorted(out)

    async def revision(self) -> int:
        return (await self.store.range(self.keys.prefix))[1]


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.integration)])
async def writer(request: pytest.FixtureRequest) -> AsyncIterator[Writer]:
    if request.param == "memory":
        yield Writer(MemoryStore(), KEYS)
        return
    store = EtcdStore([request.getfixturevalue("etcd_endpoint")], timeout=5.0)
    await store.connect()
    try:
        yield Writer(store, Keys(request.getfixturevalue("etcd_prefix")))
    finally:
        await store.close()


def yaml(name: str, *ports: int, image: str = "shoal-demo/web:1", replicas: int = 1) -> str:
    lines = [f"name: {name}", f"image: {image}", f"replicas: {replicas}", "ports:"]
    lines += [f"  - {{container: {8080 + i}, published: {p}}}" for i, p in enumerate(ports)]
    return "\n".join(lines) + "\n" if ports else "\n".join(lines[:3]) + "\n"


async def test_ten_concurrent_applies_on_one_port_exactly_one_wins(writer: Writer) -> None:
    """Each apply on its own node's writer, all at once: one service gets the port, the
    nine others get FAILED_PRECONDITION naming it, and write nothing."""
    names = [f"svc{i}" for i in range(10)]
    results = await asyncio.gather(
        *(writer.api(f"n{i}").apply(yaml(name, PORT), f"{name}.yaml") for i, name in enumerate(names)),
        return_exceptions=True,
    )
    won = [names[i] for i, r in enumerate(results) if not isinstance(r, BaseException)]
    assert len(won) == 1, results
    winner = won[0]
    for r in results:
        if isinstance(r, BaseException):
            assert isinstance(r, FailedPrecondition), repr(r)
            assert f"port {PORT} is already published by service '{winner}'" in str(r)
    services = await writer.keys_under(writer.keys.services, writer.keys.prefix + "history/")
    assert services == [writer.keys.history_version(winner, 1), writer.keys.service(winner)]
    [uid] = [
        ServiceRecord.from_json(kv.value).uid for kv in (await writer.store.range(writer.keys.services))[0]
    ]
    assert await writer.claims() == {PORT: PortClaim(winner, uid, (await writer.claims())[PORT].since)}


async def test_rm_frees_the_port_and_a_dropped_port_is_freed(writer: Writer) -> None:
    api = writer.api()
    await api.apply(yaml("web", PORT, PORT + 1), "web.yaml")
    assert set(await writer.claims()) == {PORT, PORT + 1}
    await api.apply(yaml("web", PORT), "web.yaml")
    assert set(await writer.claims()) == {PORT}
    await api.apply(yaml("api", PORT + 1), "api.yaml")  # the freed port is anyone's
    await api.remove("web")
    assert {p: c.service for p, c in (await writer.claims()).items()} == {PORT + 1: "api"}
    await api.apply(yaml("other", PORT), "other.yaml")


async def test_a_rollback_onto_a_port_taken_meanwhile_is_refused_naming_the_owner(writer: Writer) -> None:
    api = writer.api()
    await api.apply(yaml("web", PORT), "web.yaml")
    await api.apply(yaml("web", PORT + 1, image="shoal-demo/web:2"), "web.yaml")  # PORT freed
    await api.apply(yaml("api", PORT), "api.yaml")  # and taken
    before = await writer.revision()
    with pytest.raises(FailedPrecondition, match=f"port {PORT} is already published by service 'api'"):
        await api.rollback("web")
    assert await writer.revision() == before, "a refused rollback writes nothing"
    current, _ = await api.read("web")
    assert current.version == 2 and current.spec.image == "shoal-demo/web:2"


async def test_scale_claims_lazily_for_a_service_written_before_claims(writer: Writer) -> None:
    api = writer.api()
    record, _ = await api.apply(yaml("web", PORT), "web.yaml")
    await writer.store.delete(writer.keys.port(PORT))  # as today's code left it: no claim
    legacy = replace(record, uid="")
    await writer.store.put(writer.keys.service("web"), legacy.to_json())
    with pytest.raises(PortTaken, match="service 'web'"):  # the record alone still holds the port
        await api.apply(yaml("api", PORT), "api.yaml")
    await api.scale("web", 3)
    assert {p: (c.service, c.uid) for p, c in (await writer.claims()).items()} == {PORT: ("web", "")}
    current, _ = await api.read("web")
    assert current.uid == "" and current.replicas == 3, "a legacy service keeps uid '' until rm"


async def test_the_leaders_automatic_rollback_onto_a_taken_port_is_refused(writer: Writer) -> None:
    """The leader writes the rollback spec through the same claims: refused, with an event
    naming the owner, and nothing written."""
    api, keys = writer.api(), writer.keys
    await api.apply(yaml("web", PORT), "web.yaml")
    bad, _ = await api.apply(yaml("web", PORT + 1, image="shoal-demo/web:bad"), "web.yaml")
    await api.apply(yaml("api", PORT), "api.yaml")
    leader, emitted = await leader_with_events(writer.store, keys)
    failed = RolloutRecord("web", 1, bad.version, "t", state="failed", uid=bad.uid)
    before = await writer.revision()
    await leader._roll_back([failed], {})
    current, _ = await api.read("web")
    assert current.version == bad.version, "no rollback written"
    [(kind, message)] = emitted
    assert (
        kind == "rollout.rollback_refused" and f"port {PORT} is already published by service 'api'" in message
    )
    assert await writer.revision() == before, "a refused rollback writes nothing"
    await api.remove("api")
    await leader.services.relist()
    await leader._roll_back([failed], {})  # the port is free again: the rollback goes through
    current, _ = await api.read("web")
    assert current.rollback_of == bad.version and current.spec.ports[0].published == PORT
    assert (await writer.claims())[PORT].service == "web"
