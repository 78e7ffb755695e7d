"""One contract for both stores: the in-memory fake must behave as the real etcd does.

Every test taking `sut` runs twice: on `MemoryStore` and on `EtcdStore` against the
real etcd of the session (`etcd_endpoint`), under a prefix of its own. The real-etcd
runs (and the etcd-only tests at the bottom) are marked `integration`; they live
here because etcd is always available where the unit tests run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from node.dev.devcluster import EtcdProcess
from node.store import KV, Compacted, Compare, Delete, Put, Store, StoreError, StoreUnavailable, fence
from node.store.base import MAX_REQUEST_BYTES, TooLarge, WatchBatch
from node.store.cache import PrefixCache
from node.store.etcd import EtcdStore
from node.store.memory import MemoryStore
from tests.factories import FakeClock
from tests.helpers import free_port, free_port_pair, wait_until

real_etcd = pytest.mark.integration


@dataclass
class StoreUnderTest:
    store: Store
    prefix: str
    advance: Callable[[float], None]  # moves the lease clock (a no-op on real etcd: time passes)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def revision(self) -> int:
        return (await self.store.range(self.prefix))[1]


@pytest.fixture(params=["memory", pytest.param("etcd", marks=real_etcd)])
async def sut(request: pytest.FixtureRequest) -> AsyncIterator[StoreUnderTest]:
    if request.param == "memory":
        clock = FakeClock()
        yield StoreUnderTest(MemoryStore(clock=clock), "/t/", clock.advance)
        return
    store = EtcdStore([request.getfixturevalue("etcd_endpoint")], timeout=5.0)
    await store.connect()
    try:
        yield StoreUnderTest(store, request.getfixturevalue("etcd_prefix"), lambda _: None)
    finally:
        await store.close()


async def collect(
    store: Store, prefix: str, start: int, count: int, timeout: float = 5.0
) -> list[WatchBatch]:
    """The first batches of a watch until `count` events arrived."""
    batches: list[WatchBatch] = []
    async with asyncio.timeout(timeout):
        async for batch in store.watch(prefix, start):
            batches.append(batch)
            if sum(len(b.events) for b in batches) >= count:
                break
    return batches


# -- keys --------------------------------------------------------------------------------


async def test_put_get_versions_and_revisions(sut: StoreUnderTest) -> None:
    s, k = sut.store, sut.key("a")
    assert await s.get(k) is None
    r1 = await s.put(k, b"one")
    assert await s.get(k) == KV(k, b"one", r1, r1, 1)
    r2 = await s.put(k, b"two")
    assert r2 == r1 + 1
    assert await s.get(k) == KV(k, b"two", r1, r2, 2)
    assert await sut.revision() == r2


async def test_range_is_sorted_and_bounded_by_the_prefix(sut: StoreUnderTest) -> None:
    s = sut.store
    for name in ("b/2", "a", "b/1", "c"):
        await s.put(sut.key(name), name.encode())
    await s.put(sut.prefix.rstrip("/") + "x", b"outside")  # shares the text, not the prefix
    kvs, revision = await s.range(sut.key("b/"))
    assert [kv.key for kv in kvs] == [sut.key("b/1"), sut.key("b/2")]
    assert revision == await sut.revision()
    kvs, _ = await s.range(sut.prefix)
    assert [kv.value for kv in kvs] == [b"a", b"b/1", b"b/2", b"c"]
    await s.delete(sut.prefix.rstrip("/") + "x")


async def test_delete_and_prefix_delete(sut: StoreUnderTest) -> None:
    s = sut.store
    for name in ("a", "b/1", "b/2", "bb"):
        await s.put(sut.key(name), b"x")
    before = await sut.revision()
    assert await s.delete(sut.key("missing")) == 0
    assert await sut.revision() == before, "deleting nothing is not a write"
    assert await s.delete(sut.key("a")) == 1
    assert await s.get(sut.key("a")) is None
    assert await sut.revision() == before + 1
    assert await s.delete(sut.key("b/"), prefix=True) == 2
    assert await sut.revision() == before + 2, "a prefix delete is one revision"
    assert [kv.key for kv in (await s.range(sut.prefix))[0]] == [sut.key("bb")]


async def test_a_range_delete_in_a_txn_removes_keys_from_key_up_to_end(sut: StoreUnderTest) -> None:
    s = sut.store
    for v in range(1, 8):
        await s.put(sut.key(f"h/{v:012d}"), b"x")
    before = await sut.revision()
    start, end = sut.key(f"h/{0:012d}"), sut.key(f"h/{5:012d}")
    result = await s.txn([], [Put(sut.key("h/" + f"{8:012d}"), b"y"), Delete(start, end=end)])
    assert result.succeeded and await sut.revision() == before + 1
    left = [kv.key for kv in (await s.range(sut.key("h/")))[0]]
    assert left == [sut.key(f"h/{v:012d}") for v in (5, 6, 7, 8)]


async def test_a_recreated_key_starts_over(sut: StoreUnderTest) -> None:
    s, k = sut.store, sut.key("a")
    first = await s.put(k, b"1")
    await s.put(k, b"2")
    await s.delete(k)
    again = await s.put(k, b"3")
    kv = await s.get(k)
    assert kv is not None and (kv.create_revision, kv.version) == (again, 1) and again > first


# -- transactions ------------------------------------------------------------------------


async def test_txn_success_is_one_revision(sut: StoreUnderTest) -> None:
    s, a, b = sut.store, sut.key("a"), sut.key("b")
    before = await sut.revision()
    result = await s.txn([Compare(a, "create", "==", 0)], [Put(a, b"1"), Put(b, b"2")])
    assert result.succeeded and result.revision == before + 1
    kva, kvb = await s.get(a), await s.get(b)
    assert kva is not None and kvb is not None
    assert kva.mod_revision == kvb.mod_revision == result.revision


async def test_txn_failure_runs_the_else_branch_only(sut: StoreUnderTest) -> None:
    s, a, b = sut.store, sut.key("a"), sut.key("b")
    r = await s.put(a, b"1")
    failed = await s.txn([Compare(a, "create", "==", 0)], [Put(b, b"then")])
    assert (failed.succeeded, failed.revision) == (False, r), "a failed txn without else writes nothing"
    other = await s.txn([Compare(a, "version", "==", 5)], [Put(b, b"then")], [Put(b, b"else")])
    assert not other.succeeded and other.revision == r + 1
    kv = await s.get(b)
    assert kv is not None and kv.value == b"else"


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (("version", "==", 2), True),
        (("version", ">", 1), True),
        (("version", "<", 2), False),
        (("version", "!=", 2), False),
        (("value", "==", b"v2"), True),
        (("value", "!=", b"v2"), False),
        (("value", "<", b"v3"), True),
        (("value", ">", b"v3"), False),
        (("mod", "==", "MOD"), True),
        (("create", "==", "MOD"), False),
        (("create", "<", "MOD"), True),
    ],
)
async def test_compare_on_an_existing_key(sut: StoreUnderTest, compare: tuple, holds: bool) -> None:
    s, k = sut.store, sut.key("k")
    await s.put(k, b"v1")
    mod = await s.put(k, b"v2")
    target, op, value = compare
    result = await s.txn([Compare(k, target, op, mod if value == "MOD" else value)], [])
    assert result.succeeded is holds


@pytest.mark.parametrize(
    ("target", "op", "value", "holds"),
    [
        ("create", "==", 0, True),
        ("mod", "==", 0, True),
        ("version", "==", 0, True),
        ("version", ">", 0, False),
        # etcd: a value comparison on a missing key always fails, whatever the operator
        ("value", "==", b"", False),
        ("value", "!=", b"x", False),
    ],
)
async def test_compare_on_a_missing_key(
    sut: StoreUnderTest, target: str, op: str, value: int | bytes, holds: bool
) -> None:
    result = await sut.store.txn([Compare(sut.key("none"), target, op, value)], [])  # type: ignore[arg-type]
    assert result.succeeded is holds


async def test_bad_txns_are_refused_and_write_nothing(sut: StoreUnderTest) -> None:
    s, a = sut.store, sut.key("a")
    before = await sut.revision()
    with pytest.raises(StoreError):
        await s.txn([], [Put(a, b"1"), Put(a, b"2")])
    with pytest.raises(StoreError):
        await s.txn([], [Delete(sut.prefix, prefix=True), Put(a, b"1")])
    with pytest.raises(StoreError):
        await s.txn([], [Put(sut.key(f"k{i}"), b"") for i in range(129)])
    assert await sut.revision() == before
    assert (await s.range(sut.prefix))[0] == []


async def test_a_write_too_large_for_etcd_is_refused_as_too_large_not_an_outage(sut: StoreUnderTest) -> None:
    """Before, etcd's "request is too large" was a plain refusal the API answered with
    UNAVAILABLE "try again", and the in-memory store took any size: a write that can never
    succeed looked retryable. Both stores now raise `TooLarge` saying by how much."""
    s, a, b = sut.store, sut.key("a"), sut.key("b")
    before = await sut.revision()
    half = b"x" * (MAX_REQUEST_BYTES // 2 + 1)
    with pytest.raises(TooLarge, match="more than etcd takes in one request"):
        await s.put(a, half + half)
    with pytest.raises(TooLarge) as refused:
        await s.txn([], [Put(a, half), Put(b, half)])
    assert refused.value.size > MAX_REQUEST_BYTES == refused.value.limit
    assert await sut.revision() == before
    assert await s.put(a, b"x" * (MAX_REQUEST_BYTES // 2)) > before  # well under it is fine


async def test_fence_refuses_an_old_epoch(sut: StoreUnderTest) -> None:
    s, leader, task, other = sut.store, sut.key("leader"), sut.key("tasks/web/1"), sut.key("tasks/web/2")
    epoch = await s.put(leader, b"n1")
    ok = await s.txn([fence(leader, epoch)], [Put(task, b"epoch-1"), Put(other, b"epoch-1")])
    assert ok.succeeded
    await s.delete(leader)
    new_epoch = await s.put(leader, b"n2")
    kv = await s.get(leader)
    assert kv is not None and kv.create_revision == new_epoch > epoch
    before = await sut.revision()
    stale = await s.txn([fence(leader, epoch)], [Put(task, b"stale"), Delete(other)])
    assert not stale.succeeded and stale.revision == before
    assert [kv.value for kv in (await s.range(sut.key("tasks/")))[0]] == [b"epoch-1", b"epoch-1"]
    assert (await s.txn([fence(leader, new_epoch)], [Put(task, b"epoch-2")])).succeeded


# -- leases ------------------------------------------------------------------------------


async def test_lease_keepalive_and_revoke(sut: StoreUnderTest) -> None:
    s, a, b = sut.store, sut.key("a"), sut.key("b")
    lease = await s.grant(30)
    await s.put(a, b"1", lease=lease)
    await s.txn([], [Put(b, b"2", lease=lease)])
    kv = await s.get(a)
    assert kv is not None and kv.lease == lease
    assert await s.keepalive(lease) == 30
    before = await sut.revision()
    await s.revoke(lease)
    assert await s.get(a) is None and await s.get(b) is None
    assert await sut.revision() == before + 1, "a revoke deletes its keys in one revision"
    assert await s.keepalive(lease) <= 0
    await s.revoke(lease)  # already gone: fine
    with pytest.raises(StoreError):
        await s.put(a, b"1", lease=lease)


async def test_a_key_put_again_without_lease_outlives_it(sut: StoreUnderTest) -> None:
    s, a = sut.store, sut.key("a")
    lease = await s.grant(30)
    await s.put(a, b"1", lease=lease)
    await s.put(a, b"2")
    await s.revoke(lease)
    kv = await s.get(a)
    assert kv is not None and (kv.value, kv.lease) == (b"2", 0)


async def test_an_expired_lease_takes_its_keys(sut: StoreUnderTest) -> None:
    s, a = sut.store, sut.key("a")
    lease = await s.grant(2)
    await s.put(a, b"1", lease=lease)
    sut.advance(1.5)
    assert await s.keepalive(lease) == 2
    sut.advance(1.5)
    assert await s.get(a) is not None, "kept alive"
    sut.advance(3)
    assert await wait_until(lambda: _gone(s, a), timeout=10, message="lease expiry") is True
    assert await s.keepalive(lease) <= 0


async def _gone(s: Store, key: str) -> bool:
    return await s.get(key) is None


# -- watches -----------------------------------------------------------------------------


async def test_a_batch_revision_is_its_last_event_not_the_current_revision(sut: StoreUnderTest) -> None:
    """A catch-up answer from etcd carries its current revision in the header, past the
    events it holds; a consumer resuming from that would skip events (issue 11, item 2)."""
    s = sut.store
    start = await s.put(sut.key("w/a"), b"1")
    last = await s.put(sut.key("w/b"), b"2")
    await s.put(sut.key("elsewhere"), b"3")  # a later write outside the watched prefix
    await s.put(sut.key("elsewhere2"), b"4")
    batches = await collect(s, sut.key("w/"), start, 2)
    assert [b.revision for b in batches][-1] == last
    for b in batches:
        assert b.revision == max(ev.kv.mod_revision for ev in b.events)


async def test_watch_replays_puts_and_deletes_in_order(sut: StoreUnderTest) -> None:
    s, a, b, c = sut.store, sut.key("w/a"), sut.key("w/b"), sut.key("w/c")
    await s.put(sut.key("before"), b"0")
    start = await sut.revision() + 1
    r1 = await s.put(a, b"1")
    await s.put(sut.key("elsewhere"), b"x")  # not under the watched prefix
    r2 = await s.put(b, b"2")
    await s.delete(a)
    r4 = (await s.txn([], [Put(c, b"3"), Delete(b)])).revision
    batches = await collect(s, sut.key("w/"), start, 5)
    events = [(ev.kind, ev.kv.key, ev.kv.mod_revision) for batch in batches for ev in batch.events]
    assert events == [
        ("put", a, r1),
        ("put", b, r2),
        ("delete", a, r2 + 1),
        ("put", c, r4),
        ("delete", b, r4),
    ]
    revisions = [batch.revision for batch in batches]
    assert revisions == sorted(revisions) and revisions[-1] >= r4
    first_put = batches[0].events[0].kv
    assert (first_put.value, first_put.create_revision, first_put.version) == (b"1", r1, 1)

    later = await collect(s, sut.key("w/"), r2 + 1, 3)
    assert [(ev.kind, ev.kv.key) for bt in later for ev in bt.events] == [
        ("delete", a),
        ("put", c),
        ("delete", b),
    ]


async def test_watch_follows_new_writes(sut: StoreUnderTest) -> None:
    s = sut.store
    start = await sut.revision() + 1
    watcher = asyncio.create_task(collect(s, sut.prefix, start, 2))
    await s.put(sut.key("a"), b"1")
    await s.delete(sut.key("a"))
    batches = await watcher
    assert [ev.kind for bt in batches for ev in bt.events] == ["put", "delete"]


async def test_watch_from_a_compacted_revision_raises(sut: StoreUnderTest) -> None:
    s, k = sut.store, sut.key("a")
    r1 = await s.put(k, b"1")
    r2 = await s.put(k, b"2")
    r3 = await s.put(k, b"3")
    await s.compact(r2)
    with pytest.raises(Compacted):
        await collect(s, sut.prefix, r1, 1)
    # etcd keeps the compacted revision itself: watching from it still works
    batches = await collect(s, sut.prefix, r2, 2)
    assert [ev.kv.mod_revision for bt in batches for ev in bt.events] == [r2, r3]
    with pytest.raises(StoreError):
        await s.compact(r1)  # already compacted


# -- the prefix cache --------------------------------------------------------------------


class GatedWatches:
    """A store whose watches start only once `gate` is set (a watch that lags behind)."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        await self.gate.wait()
        async for batch in self.inner.watch(prefix, start_revision):
            yield batch


async def test_prefix_cache_relists_after_a_compaction(sut: StoreUnderTest) -> None:
    s = sut.store
    await s.put(sut.key("old"), b"0")
    await s.put(sut.key("gone"), b"0")
    gated = GatedWatches(s)
    cache = PrefixCache(gated, sut.prefix)  # type: ignore[arg-type]
    task = asyncio.create_task(cache.run())
    try:
        await wait_until(lambda: cache.ready.is_set(), timeout=5)
        listed_at = cache.revision
        await s.put(sut.key("new"), b"1")
        await s.delete(sut.key("gone"))
        await s.put(sut.key("old"), b"2")
        await s.compact(await sut.revision())
        gated.gate.set()  # the watch now asks for history that is gone
        await wait_until(lambda: cache.relists >= 2, timeout=10, message="re-list after compaction")
        assert cache.revision > listed_at
        assert {k: kv.value for k, kv in cache.items.items()} == {sut.key("new"): b"1", sut.key("old"): b"2"}
        await s.put(sut.key("after"), b"3")
        await wait_until(lambda: sut.key("after") in cache.items, timeout=10, message="watch after re-list")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- real etcd only ----------------------------------------------------------------------


@real_etcd
async def test_prefix_cache_survives_an_etcd_restart(tmp_path: Path) -> None:
    port = free_port_pair()
    etcd = EtcdProcess(tmp_path / "etcd" / "data", port, port + 1)
    await asyncio.to_thread(etcd.start)
    store = EtcdStore([etcd.endpoint], timeout=2.0)
    cache = PrefixCache(store, "/r/")
    task: asyncio.Task[None] | None = None
    try:
        await store.connect()
        await store.put("/r/before", b"1")
        task = asyncio.create_task(cache.run())
        await wait_until(lambda: "/r/before" in cache.items, timeout=10)
        await asyncio.to_thread(etcd.stop)
        await asyncio.to_thread(etcd.start)  # same data dir: same history
        await wait_until(lambda: store.put("/r/after", b"2"), timeout=30, message="put after restart")
        await wait_until(lambda: "/r/after" in cache.items, timeout=30, message="cache after restart")
        assert cache.items["/r/before"].value == b"1"
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await store.close()
        await asyncio.to_thread(etcd.stop)


@real_etcd
async def test_unreachable_etcd_fails_fast_naming_the_endpoint() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    store = EtcdStore([endpoint], timeout=2.0)
    await store.connect()
    try:
        for call in (store.ping, lambda: store.get("/x"), lambda: store.put("/x", b"1")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=endpoint):
                await call()
            assert time.monotonic() - started < 3.0
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (2200000 vs. 2097152)"),
    ],
)
def test_etcd_refusing_a_write_for_its_size_is_too_large(code: grpc.StatusCode, details: str) -> None:
    """Before, etcd's own size refusal was a plain `StoreError`, answered as "try again"."""
    store = EtcdStore(["127.0.0.1:1"])
    exc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    assert isinstance(store._error(exc), TooLarge)


async def test_memory_store_outage_raises_on_every_call() -> None:
    s = MemoryStore()
    await s.put("/a", b"1")
    s.unavailable = True
    calls: list[Callable[[], Awaitable[object]]] = [
        s.ping,
        lambda: s.get("/a"),
        lambda: s.range("/"),
        lambda: s.put("/a", b"2"),
        lambda: s.delete("/a"),
        lambda: s.txn([], []),
        lambda: s.grant(5),
        lambda: s.keepalive(1),
        lambda: s.revoke(1),
        lambda: s.compact(1),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable, match="memory"):
            await call()
    with pytest.raises(StoreUnavailable):
        await collect(s, "/", 1, 1)
    s.unavailable = False
    assert await s.get("/a") is not None
