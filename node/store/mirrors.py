"""One watch per daemon: a hub that mirrors every prefix the daemon's components read.

Leader, agent, proxy mesh, membership and credentials each read the cluster from
`PrefixCache` mirrors. Alone, each mirror opens its own etcd watch (15 per daemon,
`tasks/` three times on the leader's node). With a `WatchHub` attached to the store
(`WatchHub(store, keys.prefix)`, run by the daemon), `mirror(store, prefix, name)`
returns the hub's one mirror of that prefix, shared by every component, and the hub
feeds all its mirrors from ONE etcd watch over the common root. Without a hub (unit
tests, benches, the simulator) `mirror` returns a private `PrefixCache` as before.

One resume and re-list rule, for every mirror:
- each mirror's `items` are etcd's state under its prefix at its `revision` (the
  revision of its listing or of the last batch the hub delivered, never a watch
  header's);
- a mirror is listed when it is first asked for, with the hub's deliveries held
  meanwhile (the listing is then at least as new as anything delivered); an event is
  applied to a mirror only if it is newer than the mirror's revision;
- a dropped watch is resumed by the store from the last event delivered + 1; a
  compacted one (`Compacted`) or any other store error re-lists every mirror and
  watches again from the oldest mirror revision + 1 (back-off while etcd is away;
  meanwhile every mirror keeps its last view).

The hub watches the whole root, so keys no mirror covers (`events/`, `history/`)
also reach each daemon and are dropped here: they are written on changes only and
bounded (decision 39).
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from node.store.base import Compacted, Store, StoreError, WatchBatch
from node.store.cache import PrefixCache

log = logging.getLogger(__name__)

BACKOFF, MAX_BACKOFF = 0.1, 2.0  # s: before re-listing after a store error
LIST_ATTEMPTS = 5  # listings of one new mirror that came back older than the hub's deliveries

_HUBS: weakref.WeakKeyDictionary[object, WatchHub] = weakref.WeakKeyDictionary()


def hub_of(store: Store) -> WatchHub | None:
    """The hub attached to `store`, if any (then its mirrors need no watch of their own)."""
    return _HUBS.get(store)


def mirror(store: Store, prefix: str, name: str = "") -> PrefixCache:
    """The hub's shared mirror of `prefix` when `store` has a hub, else a private one."""
    hub = _HUBS.get(store)
    return hub.mirror(prefix, name) if hub is not None else PrefixCache(store, prefix, name)


class HubMirror(PrefixCache):
    """A mirror fed by a `WatchHub`: its own `run()` has nothing to do (the hub runs)."""

    async def run(self) -> None:
        await asyncio.Event().wait()  # until cancelled, as a private mirror's run would be


class WatchHub:
    def __init__(self, store: Store, root: str) -> None:
        if not root:
            raise ValueError("the hub's root prefix must not be empty")
        self.store = store
        self.root = root
        self.mirrors: dict[str, HubMirror] = {}
        self.revision = 0  # every mirror has seen every change up to here
        self.watches = 0  # watches opened (1, plus one per re-list)
        self._unlisted: list[HubMirror] = []
        self._added = asyncio.Event()
        self._lock = asyncio.Lock()  # a listing and a delivery never interleave
        _HUBS[store] = self

    def detach(self) -> None:
        """`mirror(store, ...)` makes private mirrors again (the hub itself stops when cancelled)."""
        if _HUBS.get(self.store) is self:
            del _HUBS[self.store]

    def mirror(self, prefix: str, name: str = "") -> PrefixCache:
        """The one mirror of `prefix` (made and listed on first use)."""
        if not prefix.startswith(self.root):
            raise ValueError(f"prefix {prefix!r} is not under the watch hub's root {self.root!r}")
        found = self.mirrors.get(prefix)
        if found is None:
            found = self.mirrors[prefix] = HubMirror(self.store, prefix, name or prefix)
            self._unlisted.append(found)
            self._added.set()
        return found

    async def run(self) -> None:
        """List, watch, deliver; forever (cancel to stop)."""
        backoff = BACKOFF
        while True:
            try:
                await self._wait_for_mirrors()
                async with self._lock:
                    await self._relist_all()
                backoff = BACKOFF
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._list_new(), name="watch-hub-list")
                    await self._follow()
            except* Compacted as group:
                log.info("watch hub %s: %s; re-listing", self.root, group.exceptions[0])
            except* StoreError as group:
                log.warning("watch hub %s: %s; re-listing in %.1fs", self.root, group.exceptions[0], backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _wait_for_mirrors(self) -> None:
        while not self.mirrors:
            self._added.clear()
            await self._added.wait()

    async def _relist_all(self) -> None:
        self._unlisted.clear()
        listed = list(self.mirrors.values())  # a mirror added meanwhile is listed by `_list_new`
        for m in listed:
            await m.relist()
        self.revision = min(m.revision for m in listed)

    async def _list_new(self) -> None:
        while True:
            await self._added.wait()
            self._added.clear()
            async with self._lock:
                while self._unlisted:
                    await self._list(self._unlisted[0])
                    self._unlisted.pop(0)

    async def _list(self, m: HubMirror) -> None:
        for _ in range(LIST_ATTEMPTS):
            await m.relist()
            if m.revision >= self.revision:
                return
        # never seen on etcd (its reads are linearizable): re-list everything
        raise StoreError(f"listing {m.prefix} stayed older than revision {self.revision}")

    async def _follow(self) -> None:
        self.watches += 1
        async for batch in self.store.watch(self.root, self.revision + 1):
            async with self._lock:
                self.deliver(batch)

    def deliver(self, batch: WatchBatch) -> None:
        """Apply `batch` to every listed mirror it concerns (events newer than the mirror)."""
        listed = [m for m in self.mirrors.values() if m.ready.is_set()]
        changed: set[str] = set()
        for ev in batch.events:
            for m in listed:
                if ev.kv.key.startswith(m.prefix) and ev.kv.mod_revision > m.revision:
                    if ev.kind == "put":
                        m.items[ev.kv.key] = ev.kv
                    else:
                        m.items.pop(ev.kv.key, None)
                    changed.add(m.prefix)
        for m in listed:
            m.revision = max(m.revision, batch.revision)
        self.revision = max(self.revision, batch.revision)
        for prefix in changed:
            self.mirrors[prefix]._notify()
