"""`WatchHub`: one watch feeds every mirror of a daemon, with one resume and re-list rule.

On the in-memory store (etcd's semantics, `node.store.memory`). Paths named:
a mirror asked for while the hub runs (listed with deliveries held), a compacted
watch (every mirror re-listed), a watch that fails (re-listed after a back-off,
with etcd unreachable while re-listing (views kept, then caught up).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from node.api import resolve
from node.model.errors import NotFound
from node.model.keys import Keys
from node.store import KV, StoreUnavailable, WatchBatch
from node.store.cache import PrefixCache
from node.store.memory import MemoryStore
from node.store.mirrors import HubMirror, WatchHub, mirror
from tests.factories import FakeClock, make_service
from tests.helpers import wait_until

ROOT = "/shoal/v1/"
TASKS, NODES, EVENTS = f"{ROOT}tasks/", f"{ROOT}nodes/", f"{ROOT}events/"


class CountedWatches:
    """A store that counts watches and listings; `gate` holds watches back; `fail` breaks the
    running watch at its next batch."""

    def __init__(self, store: MemoryStore) -> None:
        self.inner = store
        self.watches: list[tuple[str, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = 0
        self.ranges = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        self.watches.append((prefix, start_revision))
        await self.gate.wait()
        async for batch in self.inner.watch(prefix, start_revision):
            if self.fail:
                self.fail -= 1
                raise StoreUnavailable("etcd unreachable at memory: the test broke this watch")
            yield batch

    async def range(self, prefix: str) -> tuple[list[KV], int]:
        self.ranges += 1
        return await self.inner.range(prefix)


def _values(cache: PrefixCache) -> dict[str, bytes]:
    return {k: kv.value for k, kv in cache.items.items()}


async def _listing(store: MemoryStore, prefix: str) -> dict[str, bytes]:
    kvs, _ = await store.range(prefix)
    return {kv.key: kv.value for kv in kvs}


@contextlib.asynccontextmanager
async def running(hub: WatchHub) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(hub.run())
    try:
        yield task
    finally:
        hub.detach()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def mem() -> MemoryStore:
    return MemoryStore(clock=FakeClock())


async def test_without_a_hub_each_mirror_is_private(mem: MemoryStore) -> None:
    a, b = mirror(mem, TASKS, "agent-tasks"), mirror(mem, TASKS, "mesh-tasks")
    assert a is not b and not isinstance(a, HubMirror)


async def test_components_share_one_mirror_per_prefix_and_one_watch(mem: MemoryStore) -> None:
    store = CountedWatches(mem)
    hub = WatchHub(store, ROOT)  # type: ignore[arg-type]
    leader, agent, mesh = (mirror(store, TASKS, n) for n in ("tasks", "agent-tasks", "mesh-tasks"))  # type: ignore[arg-type]
    nodes = mirror(store, NODES)  # type: ignore[arg-type]
    assert leader is agent is mesh and nodes is not leader
    await mem.put(f"{TASKS}web/0", b"a")
    async with running(hub):
        await wait_until(lambda: leader.ready.is_set() and nodes.ready.is_set(), timeout=5)
        assert _values(leader) == {f"{TASKS}web/0": b"a"}
        woken_tasks, woken_nodes = leader.listener(), nodes.listener()
        woken_tasks.clear()
        woken_nodes.clear()
        await mem.put(f"{TASKS}web/1", b"b")
        await mem.put(f"{EVENTS}n1/0", b"started")  # no mirror: dropped
        await mem.delete(f"{TASKS}web/0")
        rev = await mem.put(f"{NODES}n1", b"n")
        await wait_until(lambda: nodes.revision >= rev and leader.revision >= rev, timeout=5)
        assert _values(leader) == {f"{TASKS}web/1": b"b"}
        assert _values(nodes) == {f"{NODES}n1": b"n"}
        assert woken_tasks.is_set() and woken_nodes.is_set()
        woken_tasks.clear()
        rev = await mem.put(f"{NODES}n2", b"n")
        await wait_until(lambda: nodes.revision >= rev, timeout=5)
        assert leader.revision >= rev  # a view of tasks/ at that revision too...
        assert not woken_tasks.is_set()  # ...but not woken: nothing under tasks/ changed
        assert store.watches == [(ROOT, store.watches[0][1])]  # ONE watch, over the root


async def test_a_mirror_asked_for_while_writes_run_misses_nothing(mem: MemoryStore) -> None:
    hub = WatchHub(mem, ROOT)
    tasks = mirror(mem, TASKS)
    stop = asyncio.Event()

    async def write() -> None:
        for i in range(400):
            if stop.is_set():
                return
            if i % 3 == 2:
                await mem.delete(f"{NODES}n{i - 1}")
            else:
                await mem.put(f"{NODES}n{i}", str(i).encode())
            await asyncio.sleep(0)

    async with running(hub):
        await wait_until(lambda: tasks.ready.is_set(), timeout=5)
        writer = asyncio.create_task(write())
        for _ in range(20):
            await asyncio.sleep(0)
        nodes = mirror(mem, NODES, "late")  # asked for mid-load (a new leader term's mirror)
        await writer
        rev = mem.revision
        await wait_until(lambda: nodes.revision >= rev, timeout=5, message="late mirror caught up")
        assert _values(nodes) == await _listing(mem, NODES)
        assert nodes.relists == 1
        stop.set()


async def test_a_compacted_watch_relists_every_mirror(mem: MemoryStore) -> None:
    store = CountedWatches(mem)
    hub = WatchHub(store, ROOT)  # type: ignore[arg-type]
    tasks, nodes = mirror(store, TASKS), mirror(store, NODES)  # type: ignore[arg-type]
    await mem.put(f"{TASKS}old", b"0")
    await mem.put(f"{NODES}gone", b"0")
    store.gate.clear()  # the watch lags behind
    async with running(hub):
        await wait_until(lambda: tasks.ready.is_set() and nodes.ready.is_set(), timeout=5)
        await mem.put(f"{TASKS}new", b"1")
        await mem.delete(f"{NODES}gone")
        await mem.compact(mem.revision)
        store.gate.set()  # the watch now asks for history that is gone
        await wait_until(lambda: tasks.relists >= 2 and nodes.relists >= 2, timeout=5, message="re-lists")
        assert _values(tasks) == {f"{TASKS}old": b"0", f"{TASKS}new": b"1"}
        assert _values(nodes) == {}
        rev = await mem.put(f"{NODES}after", b"2")
        await wait_until(lambda: nodes.revision >= rev, timeout=5, message="watch after re-list")
        assert _values(nodes) == {f"{NODES}after": b"2"}
        assert hub.watches == 2


async def test_a_failed_watch_keeps_the_views_while_etcd_is_away_then_relists(mem: MemoryStore) -> None:
    store = CountedWatches(mem)
    hub = WatchHub(store, ROOT)  # type: ignore[arg-type]
    tasks = mirror(store, TASKS)  # type: ignore[arg-type]
    await mem.put(f"{TASKS}a", b"0")
    async with running(hub):
        await wait_until(lambda: tasks.ready.is_set(), timeout=5)
        store.fail = 1  # the watch breaks on its next batch...
        await mem.put(f"{TASKS}b", b"1")
        mem.unavailable = True  # ...and etcd is away when the hub re-lists
        ranges = store.ranges
        await wait_until(lambda: store.ranges >= ranges + 2, timeout=5, message="re-lists tried")
        assert _values(tasks) == {f"{TASKS}a": b"0"}  # the last view, kept
        mem.unavailable = False
        rev = await mem.put(f"{TASKS}c", b"2")
        await wait_until(lambda: tasks.revision >= rev, timeout=10, message="caught up")
        assert _values(tasks) == {f"{TASKS}a": b"0", f"{TASKS}b": b"1", f"{TASKS}c": b"2"}
        assert tasks.relists == 2 and hub.watches == 2


def test_a_prefix_outside_the_root_is_refused(mem: MemoryStore) -> None:
    hub = WatchHub(mem, ROOT)
    try:
        with pytest.raises(ValueError, match="not under the watch hub's root"):
            hub.mirror("/other/tasks/")
    finally:
        hub.detach()


def test_a_listener_nobody_holds_goes_away(mem: MemoryStore) -> None:
    cache = PrefixCache(mem, TASKS)
    kept = cache.listener()
    cache.listener()  # a past leader term's, say
    gc.collect()
    assert list(cache._listeners) == [kept]


async def test_a_resolve_stream_is_told_by_the_hub_without_a_watch_of_its_own(mem: MemoryStore) -> None:
    keys = Keys(ROOT)
    store = CountedWatches(mem)
    hub = WatchHub(store, ROOT)  # type: ignore[arg-type]
    for prefix in (keys.endpoints_all, keys.tasks, keys.services, keys.nodes, keys.down_all):
        mirror(store, prefix)  # type: ignore[arg-type]  # as the daemon's mesh and membership do
    await mem.put(keys.service("web"), make_service("web").to_json())
    async with running(hub):
        answers = resolve.watch(store, keys, "web", None)  # type: ignore[arg-type]
        first = await anext(answers)
        assert first.name == "web" and not first.endpoints
        await mem.delete(keys.service("web"))
        with pytest.raises(NotFound):
            await asyncio.wait_for(anext(answers), 5)
        assert [w[0] for w in store.watches] == [ROOT]  # the hub's, and none for the stream


async def test_a_resolve_stream_reads_nothing_for_another_services_changes(mem: MemoryStore) -> None:
    """Woken by any change in the shared mirrors, a watch read etcd 4-6 times for each: a
    rollout of another service made every open watch read 20 times a second. It reads
    again only when this service's keys (or a node, or a down mark) changed."""
    keys = Keys(ROOT)
    store = CountedWatches(mem)
    hub = WatchHub(store, ROOT)  # type: ignore[arg-type]
    caches = [
        mirror(store, p) for p in (keys.endpoints_all, keys.tasks, keys.services, keys.nodes, keys.down_all)
    ]  # type: ignore[arg-type]
    await mem.put(keys.service("web"), make_service("web").to_json())
    reads = 0
    get, range_ = store.inner.get, store.inner.range

    async def counted_get(key: str) -> Any:
        nonlocal reads
        reads += 1
        return await get(key)

    async def counted_range(prefix: str) -> Any:
        nonlocal reads
        reads += 1
        return await range_(prefix)

    async with running(hub):
        for c in caches:
            await c.ready.wait()
        answers = resolve.watch(store, keys, "web", None)  # type: ignore[arg-type]
        await anext(answers)
        store.get, store.range = counted_get, counted_range  # type: ignore[method-assign]
        following = asyncio.create_task(anext(answers))
        await mem.put(keys.task("api", 1000), b"{}")  # the first wake reads (the mirrors may be listing)
        await wait_until(lambda: reads > 0, 5.0, message="the first wake's read")
        reads = 0
        for i in range(100):
            await mem.put(keys.task("api", i + 1), b"{}")
        tasks = caches[1]
        await wait_until(lambda: len(tasks.items) == 101, 5.0, message="the mirror has them")
        await asyncio.sleep(3 * resolve.COALESCE)  # the window in which a wake would have read
        assert reads == 0
        await mem.delete(keys.service("web"))
        with pytest.raises(NotFound):
            await asyncio.wait_for(following, 5)
