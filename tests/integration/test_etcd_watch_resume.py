"""Watches cut at random moments under a steady write load lose nothing.

Real etcd (the session's, `etcd_endpoint`); between it and the watching `EtcdStore` a
`FaultProxy` that resets every connection at random moments, often just after the
client reconnected, when etcd has answered "created" (stamped with its *current*
revision) but not yet sent the catch-up events. A writer on a direct connection puts
and deletes keys under three prefixes all along (bounded in count and time).

- all along (before, during and after each cut), each `PrefixCache` mirror (three with
  a watch each, three fed by one `WatchHub` watch over the root) equals a
  listing of its prefix *at the mirror's own revision* (a correct mirror is always
  exactly etcd's state at that revision, so a lost put or delete shows at once,
  before a later write to the same key can hide it);
- at the end (writes stopped), every mirror equals a fresh listing;
- a raw `watch` through the proxy delivered exactly the events a direct watch from
  the same revision sees: same keys, kinds and revisions, in order, none twice.

On a watch resumed from a response header's revision (etcd3aio's own resume), the
events between are skipped without an error and the mirrors never re-list.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from node.store.base import KV, WatchBatch
from node.store.cache import PrefixCache
from node.store.etcd import EtcdStore
from node.store.mirrors import WatchHub
from tests.faultproxy import FaultProxy
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

CUTS = 15
KEYS = 400  # per prefix: a lost event is rarely hidden by a later write to its key
MAX_WRITES = 30_000
LOAD_SECONDS = 120.0  # the writer stops at this bound whatever happens
WRITE_PAUSE = 0.002  # s between two writes: ~300 writes/s on an idle machine
CHECK_PAUSE = 0.02  # s between two comparisons of the mirrors with etcd

Event = tuple[str, str, int]  # kind, key, mod revision


def _state(kvs: list[KV] | dict[str, KV]) -> dict[str, tuple[bytes, int]]:
    items = kvs.values() if isinstance(kvs, dict) else kvs
    return {kv.key: (kv.value, kv.mod_revision) for kv in items}


class Writer:
    """Puts and deletes under `prefixes`, from a direct connection, until stopped or bounded."""

    def __init__(self, store: EtcdStore, prefixes: list[str]) -> None:
        self.store, self.prefixes = store, prefixes
        self.revision = 0
        self.writes = 0
        self.stop = asyncio.Event()
        self.live: dict[str, set[str]] = {p: set() for p in prefixes}

    async def run(self) -> None:
        rng = random.Random(11)
        deadline = time.monotonic() + LOAD_SECONDS
        while not self.stop.is_set() and self.writes < MAX_WRITES and time.monotonic() < deadline:
            prefix = rng.choice(self.prefixes)
            live = self.live[prefix]
            if live and rng.random() < 0.3:
                key = rng.choice(sorted(live))
                await self.store.delete(key)
                live.discard(key)
                self.revision = (await self.store.range(key))[1]
            else:
                key = f"{prefix}k{rng.randrange(KEYS):03d}"
                self.revision = await self.store.put(key, f"v{self.writes}".encode())
                live.add(key)
            self.writes += 1
            await asyncio.sleep(WRITE_PAUSE)


class MirrorChecker:
    """Compares each mirror, again and again, with a listing at the mirror's own revision."""

    def __init__(self, store: EtcdStore, mirrors: list[PrefixCache]) -> None:
        self.store, self.mirrors = store, mirrors
        self.checked = 0
        self.passed_at = 0  # the lowest mirror revision of the last check that passed
        self.stop = asyncio.Event()

    async def run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        while not self.stop.is_set() and time.monotonic() < deadline:
            lowest = None
            for mirror in self.mirrors:
                items, revision = dict(mirror.items), mirror.revision  # one instant: no await between
                listed, _ = await self.store.range(mirror.prefix, revision=revision)
                assert _state(items) == _state(listed), f"{mirror.name} differs from etcd at {revision}"
                lowest = revision if lowest is None else min(lowest, revision)
            self.checked += 1
            self.passed_at = lowest or 0
            await asyncio.sleep(CHECK_PAUSE)


async def _events(batches: AsyncIterator[WatchBatch], into: list[Event], until: int = 0) -> None:
    async for batch in batches:
        into += [(ev.kind, ev.kv.key, ev.kv.mod_revision) for ev in batch.events]
        if until and into and into[-1][2] >= until:
            return


async def _stop(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watches_cut_at_random_moments_miss_no_event(etcd_endpoint: str) -> None:
    root = f"/test-{uuid.uuid4().hex[:10]}/"
    prefixes = [f"{root}{name}/" for name in ("a", "b", "c")]
    proxy = FaultProxy(etcd_endpoint)
    await proxy.start()
    direct = EtcdStore([etcd_endpoint], timeout=5.0)
    watched = EtcdStore([proxy.endpoint], timeout=2.0)
    await direct.connect()
    await watched.connect()
    writer = Writer(direct, prefixes)
    hub = WatchHub(watched, root)  # the daemon's way: one watch over the root feeds three mirrors
    mirrors = [PrefixCache(watched, p) for p in prefixes] + [hub.mirror(p, f"hub {p}") for p in prefixes]
    start = (await direct.range(root))[1] + 1
    seen: list[Event] = []
    tasks = [asyncio.create_task(m.run()) for m in mirrors]
    tasks.append(asyncio.create_task(hub.run()))
    tasks.append(asyncio.create_task(_events(watched.watch(root, start), seen)))
    load = asyncio.create_task(writer.run())
    checker = MirrorChecker(direct, mirrors)
    rng = random.Random(7)
    try:
        await wait_until(lambda: all(m.ready.is_set() for m in mirrors), timeout=10, message="mirrors listed")
        checks = asyncio.create_task(checker.run())
        tasks.append(checks)
        at_cut = 0
        for cut in range(CUTS):
            accepted = proxy.accepted
            await asyncio.sleep(rng.uniform(0.0, 0.25))  # the random moment (often mid catch-up)
            at_cut = writer.revision
            proxy.cut()
            await wait_until(
                lambda a=accepted: proxy.accepted > a, timeout=20, message=f"reconnect after cut {cut}"
            )
            assert not checks.done(), checks.exception()
        # every cut was followed by a passing check of every mirror past it (checks only
        # move forward, so past the last cut means past each one)
        await wait_until(
            lambda: checker.passed_at >= at_cut, timeout=20, message="mirrors checked past the cuts"
        )
        assert not load.done() or load.exception() is None
        writer.stop.set()
        await load
        checker.stop.set()
        await checks
        assert writer.writes > CUTS
        final = (await direct.range(root))[1]
        for mirror in mirrors:
            fresh, _ = await direct.range(mirror.prefix)
            await wait_until(
                lambda m=mirror, f=fresh: _state(m.items) == _state(f),  # type: ignore[misc]
                timeout=20,
                message=f"{mirror.name} equal to a fresh listing at the end",
            )
        await wait_until(lambda: seen and seen[-1][2] >= final, timeout=20, message="raw watch at the end")
        expected: list[Event] = []
        await asyncio.wait_for(_events(direct.watch(root, start), expected, until=final), 20)
        assert len(seen) == len(set(seen)), "an event delivered twice"
        assert seen == expected, f"raw watch: {len(seen)} events seen, {len(expected)} written"
    finally:
        writer.stop.set()
        await _stop(load, *tasks)
        hub.detach()
        await watched.close()
        await direct.close()
        await proxy.stop()
