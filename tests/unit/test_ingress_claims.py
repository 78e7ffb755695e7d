"""Ingress-route claims (`node.store.ingress_claims`, decision 77): one key per normalized
(host, path), written in the service write's transaction, on the in-memory store.

Two applies racing for one route through two nodes' writers (both read before either
commits): exactly one is written, the other is FAILED_PRECONDITION naming the owner and
writes nothing. `rm` and a spec dropping the route free it; a rollback (manual or the
leader's) onto a route taken meanwhile is refused naming the owner; services written
before route claims existed are still respected, and claim on their next write.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from node.api.services import ServiceWriter
from node.api.stacks import StackWriter
from node.model.domain import PortClaim, RolloutRecord, ServiceRecord
from node.model.errors import FailedPrecondition, InvalidArgument
from node.model.keys import Keys
from node.model.spec import parse_spec
from node.store import Compare, StoreUnavailable
from node.store.base import Op, TxnResult
from node.store.ingress_claims import RouteTaken
from node.store.memory import MemoryStore
from tests.helpers import leader_with_events

KEYS = Keys("/c/")


def spec(name: str, *routes: tuple[str, str], image: str = "web:1", replicas: int = 1) -> str:
    rules = [{"host": host, "path": path, "port": 8080} for host, path in routes]
    body: dict[str, Any] = {
        "name": name,
        "image": image,
        "replicas": replicas,
        "ports": [{"container": 8080}],
    }
    if rules:
        body["ingress"] = rules
    return json.dumps(body)


class Meeting(MemoryStore):
    """The first `n` transactions wait for one another: every writer has done all its
    reads (the API's read check included) before any of them commits."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.barrier = asyncio.Barrier(n)
        self.waiting = n

    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], else_ops: Sequence[Op] = ()
    ) -> TxnResult:
        if self.waiting > 0:
            self.waiting -= 1
            await asyncio.wait_for(self.barrier.wait(), 5)
        return await super().txn(compares, ops, else_ops)


async def routes(store: MemoryStore) -> dict[str, str]:
    kvs, _ = await store.range(KEYS.ingress)
    return {KEYS.tail(kv.key, KEYS.ingress): PortClaim.from_json(kv.value).service for kv in kvs}


async def test_two_applies_racing_for_one_route_through_two_nodes_exactly_one_wins() -> None:
    store = Meeting(2)
    names = ["blue", "green"]
    said = await asyncio.gather(
        *(
            ServiceWriter(store, KEYS, f"n{i}").apply(
                spec(name, ("shop.example.test", "/api")), f"{name}.json"
            )
            for i, name in enumerate(names)
        ),
        return_exceptions=True,
    )
    won = [names[i] for i, r in enumerate(said) if not isinstance(r, BaseException)]
    assert len(won) == 1, said
    [lost] = [r for r in said if isinstance(r, BaseException)]
    assert isinstance(lost, FailedPrecondition), repr(lost)
    assert f"shop.example.test/api is already routed to service '{won[0]}'" in str(lost)
    kvs, _ = await store.range(KEYS.services)
    assert [kv.key for kv in kvs] == [KEYS.service(won[0])], "the loser wrote nothing"
    history, _ = await store.range(KEYS.prefix + "history/")
    assert [kv.key for kv in history] == [KEYS.history_version(won[0], 1)]
    assert await routes(store) == {"shop.example.test/%2Fapi": won[0]}


async def test_a_route_spelt_otherwise_is_the_same_claim() -> None:
    """Normalized as the entrance matches: trailing slash dropped, `/` by default."""
    assert KEYS.route("a.test", "/api/") == KEYS.route("a.test", "/api") == "/c/ingress/a.test/%2Fapi"
    assert KEYS.route("A.Test.", "") == KEYS.route("a.test", "/") == "/c/ingress/a.test/%2F"
    assert KEYS.route("a.test", "/a%2Fb") != KEYS.route("a.test", "/a/b"), "as sent, never decoded"
    assert KEYS.route("a.test", "/API") != KEYS.route("a.test", "/api"), "paths are case-sensitive"
    store = Meeting(2)
    said = await asyncio.gather(
        ServiceWriter(store, KEYS, "n1").apply(spec("one", ("a.test", "/")), "one.json"),
        ServiceWriter(store, KEYS, "n2").apply(json.dumps(_default_path("two")), "two.json"),
        return_exceptions=True,
    )
    assert sum(isinstance(r, FailedPrecondition) for r in said) == 1, said
    assert list((await routes(store)).keys()) == ["a.test/%2F"]


def _default_path(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": "web:1",
        "ports": [{"container": 8080}],
        "ingress": [{"host": "a.test", "port": 8080}],
    }


async def test_rm_and_a_spec_dropping_the_route_free_it() -> None:
    store = MemoryStore()
    api = ServiceWriter(store, KEYS, "n1")
    await api.apply(spec("web", ("a.test", "/x"), ("a.test", "/y")), "web.json")
    assert await routes(store) == {"a.test/%2Fx": "web", "a.test/%2Fy": "web"}
    await api.apply(spec("web", ("a.test", "/x")), "web.json")
    assert await routes(store) == {"a.test/%2Fx": "web"}
    await api.apply(spec("other", ("a.test", "/y")), "other.json")  # the freed route is anyone's
    await api.remove("web")
    assert await routes(store) == {"a.test/%2Fy": "other"}
    await api.apply(spec("third", ("a.test", "/x")), "third.json")
    assert await routes(store) == {"a.test/%2Fx": "third", "a.test/%2Fy": "other"}


async def test_a_manual_rollback_onto_a_route_taken_meanwhile_is_refused_naming_the_owner() -> None:
    store = MemoryStore()
    api = ServiceWriter(store, KEYS, "n1")
    await api.apply(spec("web", ("a.test", "/x")), "web.json")
    await api.apply(spec("web", ("a.test", "/y"), image="web:2"), "web.json")  # /x freed
    await api.apply(spec("other", ("a.test", "/x")), "other.json")  # and taken
    before = store.revision
    with pytest.raises(FailedPrecondition, match=r"a\.test/x is already routed to service 'other'"):
        await api.rollback("web")
    assert store.revision == before, "a refused rollback writes nothing"
    assert (await api.read("web"))[0].spec.image == "web:2"


async def test_the_leaders_rollback_onto_a_taken_route_is_refused_then_done_once_it_is_free() -> None:
    store = MemoryStore()
    api = ServiceWriter(store, KEYS, "n1")
    await api.apply(spec("web", ("a.test", "/x")), "web.json")
    bad, _ = await api.apply(spec("web", ("a.test", "/y"), image="web:bad"), "web.json")
    await api.apply(spec("other", ("a.test", "/x")), "other.json")
    leader, emitted = await leader_with_events(store, KEYS)
    failed = RolloutRecord("web", 1, bad.version, "t", state="failed", uid=bad.uid)
    before = store.revision
    await leader._roll_back([failed], {})
    assert store.revision == before, "a refused rollback writes nothing"
    [(kind, message)] = emitted
    assert kind == "rollout.rollback_refused"
    assert "a.test/x is already routed to service 'other'" in message, message
    await api.remove("other")
    await leader.services.relist()
    await leader._roll_back([failed], {})
    current, _ = await api.read("web")
    assert current.rollback_of == bad.version and current.spec.image == "web:1"
    assert await routes(store) == {"a.test/%2Fx": "web"}


async def test_a_service_written_before_route_claims_holds_its_routes_and_claims_on_its_next_write() -> None:
    """Decision 55: an older daemon wrote the record and no `ingress/` key."""
    store = MemoryStore()
    api = ServiceWriter(store, KEYS, "n1")
    record, _ = await api.apply(spec("old", ("a.test", "/x")), "old.json")
    await store.delete(KEYS.ingress, prefix=True)
    await store.put(KEYS.service("old"), replace(record, uid="").to_json())
    new = ServiceRecord("new", 1, parse_spec(spec("new", ("a.test", "/x")), "new.json"), 0.0, "n1", uid="u")
    with pytest.raises(RouteTaken, match="already routed to service 'old'"):  # the claim path alone
        await api.write_ops(new, 0, None)
    assert await routes(store) == {}
    await api.scale("old", 3)
    assert await routes(store) == {"a.test/%2Fx": "old"}


async def test_a_stale_claim_of_a_removed_service_is_taken_over() -> None:
    """An older daemon removed its owner and left the key."""
    store = MemoryStore()
    api = ServiceWriter(store, KEYS, "n1")
    await api.apply(spec("gone", ("a.test", "/x")), "gone.json")
    await store.delete(KEYS.service("gone"))
    await api.apply(spec("web", ("a.test", "/x")), "web.json")
    assert await routes(store) == {"a.test/%2Fx": "web"}


async def test_an_etcd_outage_at_the_write_leaves_no_claim() -> None:
    store = MemoryStore()
    api = ServiceWriter(store, KEYS, "n1")
    txn = store.txn

    async def down(*args: Any, **kwargs: Any) -> TxnResult:
        store.unavailable = True
        return await txn(*args, **kwargs)

    store.txn = down  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await api.apply(spec("web", ("a.test", "/x")), "web.json")
    store.unavailable = False
    assert await routes(store) == {} and await store.get(KEYS.service("web")) is None


async def test_two_services_of_one_stack_file_on_one_route_are_refused_before_any_write() -> None:
    store = MemoryStore()
    stacks = StackWriter(ServiceWriter(store, KEYS, "n1"))
    rule = "ingress: [{host: a.test, path: /x/, port: 80}]"
    text = (
        "name: shop\nservices:\n"
        f"  a:\n    image: i\n    ports: [{{container: 80}}]\n    {rule}\n"
        f"  b:\n    image: i\n    ports: [{{container: 80}}]\n    {rule.replace('/x/', '/x')}\n"
    )
    before = store.revision
    with pytest.raises(
        InvalidArgument,
        match=r"service 'shop_b': ingress\[0\]: a\.test/x is already routed to "
        r"service 'shop_a'",
    ):
        await stacks.deploy(text, "shop.yaml")
    assert store.revision == before
