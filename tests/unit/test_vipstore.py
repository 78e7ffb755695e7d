"""Virtual addresses in etcd (node.proxy.vipstore) over a MemoryStore: one address per
service incarnation whatever the concurrency, nothing half-written when the writer dies
or its answer is lost, a fresh address for a re-created service, releases and sweeps."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import replace
from typing import Any

import pytest

from node.model.domain import ServiceRecord, new_service_uid
from node.model.errors import Conflict
from node.model.keys import Keys
from node.proxy.names import NameTable, VipRecord
from node.proxy.vipstore import VipRangeFull, VipStore
from node.store.base import StoreUnavailable
from node.store.memory import MemoryStore
from tests.factories import make_service

KEYS = Keys()
NET = ipaddress.IPv4Network("10.213.0.0/24")


async def put_service(store: MemoryStore, name: str) -> ServiceRecord:
    record = replace(make_service(name, ports=[{"container": 80}]), uid=new_service_uid())
    await store.put(KEYS.service(name), record.to_json())
    return record


async def records(store: MemoryStore) -> dict[str, VipRecord]:
    kvs, _ = await store.range(KEYS.vips)
    return {r.service: r for kv in kvs if (r := VipRecord.from_json(kv.value)) is not None}


async def claims(store: MemoryStore) -> dict[str, dict[str, str]]:
    kvs, _ = await store.range(KEYS.vipaddrs)
    return {KEYS.tail(kv.key, KEYS.vipaddrs): json.loads(kv.value) for kv in kvs}


async def consistent(store: MemoryStore) -> None:
    """Every record has its claim and every claim its record."""
    by_address = {r.address: r for r in (await records(store)).values()}
    held = await claims(store)
    assert set(held) == set(by_address)
    for address, claim in held.items():
        assert (claim["service"], claim["uid"]) == (by_address[address].service, by_address[address].uid)


class Yielding:
    """The store, giving the loop away before every call: concurrent allocators interleave."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return await fn(*args, **kwargs)

        return call


async def test_allocate_once_per_incarnation_and_again_is_the_same() -> None:
    store = MemoryStore()
    db = await put_service(store, "db")
    vips = VipStore(store, KEYS, NET)
    first = await vips.allocate("db")
    assert first == VipRecord("db", db.uid, "10.213.0.16")
    assert await vips.allocate("db") == first
    assert (await store.get(KEYS.vipcursor)) is not None
    await consistent(store)
    assert await vips.allocate("missing") is None


async def test_concurrent_allocators_on_many_services_never_share_an_address() -> None:
    """Four nodes allocating at once, each over every service in turn as `Names` does (two
    of them in the opposite order): a lost race is a `Conflict` at worst, retried by the
    next pass; nothing is ever given twice."""
    store = MemoryStore()
    names = [f"s{i}" for i in range(12)]
    for n in names:
        await put_service(store, n)
    allocators = [VipStore(Yielding(store), KEYS, NET) for _ in range(4)]  # type: ignore[arg-type]

    async def one_pass(vips: VipStore, order: list[str]) -> list[VipRecord | Conflict]:
        out: list[VipRecord | Conflict] = []
        for n in order:
            try:
                out.append(await vips.allocate(n))  # type: ignore[arg-type]
            except Conflict as exc:
                out.append(exc)
        return out

    for _ in range(3):  # passes, as `Names` retries after a lost race
        orders = [names, names[::-1], names, names[::-1]]
        results = await asyncio.gather(*(one_pass(a, o) for a, o in zip(allocators, orders, strict=True)))
        got = await records(store)
        assert len({r.address for r in got.values()}) == len(got)  # never one address twice
        for r in (r for rs in results for r in rs if isinstance(r, VipRecord)):
            assert got[r.service] == r  # what a winner or a reader returned is what etcd holds
        await consistent(store)
        if set(got) == set(names):
            break
    assert set(await records(store)) == set(names)


class LosingAnswers:
    """A store whose transactions fail: before committing (the writer died first), or after
    (the transaction committed, its answer was lost)."""

    def __init__(self, store: MemoryStore, commit: bool) -> None:
        self.store, self.commit, self.armed = store, commit, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            if self.commit:
                await self.store.txn(*args, **kwargs)
            raise StoreUnavailable("connection lost")
        return await self.store.txn(*args, **kwargs)


@pytest.mark.parametrize("commit", [False, True], ids=["died-before-the-write", "answer-lost-after-it"])
async def test_a_writer_that_dies_between_steps_leaves_all_or_nothing(commit: bool) -> None:
    store = MemoryStore()
    await put_service(store, "db")
    flaky = LosingAnswers(store, commit)
    with pytest.raises(StoreUnavailable):
        await VipStore(flaky, KEYS, NET).allocate("db")  # type: ignore[arg-type]
    held = await records(store)
    assert len(held) == (1 if commit else 0)
    await consistent(store)  # never an address without its claim, nor a claim without its record
    again = await VipStore(flaky, KEYS, NET).allocate("db")  # type: ignore[arg-type]
    assert again is not None and (not commit or again == held["db"])  # the same one, not a second
    assert len(await claims(store)) == 1


async def test_a_recreated_service_gets_a_fresh_address_and_the_old_name_is_not_answered() -> None:
    store = MemoryStore()
    await put_service(store, "db")
    vips = VipStore(store, KEYS, NET)
    old = await vips.allocate("db")
    assert old is not None
    await store.delete(KEYS.service("db"))  # removed ...
    new_db = await put_service(store, "db")  # ... and created again before any release ran
    services = [ServiceRecord.from_json((await store.get(KEYS.service("db"))).value)]  # type: ignore[union-attr]
    table = NameTable.build(services, list((await records(store)).values()))
    assert table.lookup("db") is not None and table.lookup("db").address is None  # type: ignore[union-attr]
    new = await vips.allocate("db")
    assert new is not None and new.uid == new_db.uid and new.address != old.address
    assert set(await claims(store)) == {new.address}  # the old claim went in the same write
    await consistent(store)
    table = NameTable.build(services, list((await records(store)).values()))
    assert table.lookup("db").address == new.address  # type: ignore[union-attr]


async def test_a_record_outside_a_changed_vip_range_is_replaced() -> None:
    store = MemoryStore()
    await put_service(store, "db")
    old = await VipStore(store, KEYS, NET).allocate("db")
    moved = ipaddress.IPv4Network("10.99.0.0/24")
    new = await VipStore(store, KEYS, moved).allocate("db")
    assert old is not None and new is not None and new.address == "10.99.0.16" and new.uid == old.uid
    assert set(await claims(store)) == {new.address}
    await consistent(store)


async def test_release_after_removal_and_not_while_it_exists() -> None:
    store = MemoryStore()
    await put_service(store, "db")
    vips = VipStore(store, KEYS, NET)
    await vips.allocate("db")
    assert await vips.release("db") is False  # still there: kept
    assert len(await records(store)) == 1
    await store.delete(KEYS.service("db"))
    assert await vips.release("db") is True
    assert await records(store) == {} and await claims(store) == {}
    assert await vips.release("db") is True  # nothing left: idempotent
    await put_service(store, "db")
    again = await vips.allocate("db")
    assert again is not None and again.address == "10.213.0.17"  # after the cursor, not the released .16


async def test_sweep_removes_claims_no_record_names() -> None:
    store = MemoryStore()
    await put_service(store, "db")
    vips = VipStore(store, KEYS, NET)
    kept = await vips.allocate("db")
    await store.put(KEYS.vipaddr("10.213.0.99"), b'{"service": "ghost", "uid": "x"}')
    await store.put(KEYS.vipaddr("10.213.0.98"), b"junk")
    assert await vips.sweep() == 2
    assert set(await claims(store)) == {kept.address}  # type: ignore[union-attr]


async def test_a_full_range_says_so_and_writes_nothing() -> None:
    store = MemoryStore()
    small = ipaddress.IPv4Network("10.213.0.0/26")  # offsets 16..62: 47 addresses
    vips = VipStore(store, KEYS, small)
    for i in range(47):
        await put_service(store, f"s{i}")
        await vips.allocate(f"s{i}")
    await put_service(store, "late")
    with pytest.raises(VipRangeFull, match=r"no virtual address left in vip_range 10\.213\.0\.0/26"):
        await vips.allocate("late")
    assert "late" not in await records(store)
