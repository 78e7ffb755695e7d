"""A local mirror of every key under one prefix: list, then watch, forever.

The leader, the agent and the API read the cluster from mirrors instead of asking
etcd for each decision. Guarantees:
- after `ready` is set, `items` is a consistent view at `revision`: the revision of
  the last listing or of the last event delivered (never a watch header's revision,
  which can be ahead of the events sent so far);
- a dropped watch resumes from the last event delivered + 1 (in the store); a
  compacted one (or any store error) leads to a full re-list, so no change is ever missed;
- every change wakes the listeners (`listener()` events), and nothing else does.
While etcd is unreachable the mirror keeps its last view (control plane down must
not blank what nodes know) and retries with back-off (`node.store.retry.patiently`:
0.1 s doubling to 2 s, from 0.1 s again once a listing succeeded; a compacted watch
re-lists at once).
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from node.store.base import KV, Compacted, Store, StoreUnavailable
from node.store.retry import patiently, progressed

log = logging.getLogger(__name__)


class PrefixCache:
    def __init__(self, store: Store, prefix: str, name: str = "") -> None:
        self.store = store
        self.prefix = prefix
        self.name = name or prefix
        self.items: dict[str, KV] = {}
        self.revision = 0
        self.ready = asyncio.Event()
        self.relists = 0
        # weak: a listener nobody waits on any more (a past leader term's) goes away by itself
        self._listeners: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    def listener(self, event: asyncio.Event | None = None) -> asyncio.Event:
        """An event set on every change; the caller clears it after reading. Pass one
        `event` to several mirrors to be woken by a change in any of them."""
        event = event or asyncio.Event()
        self._listeners.add(event)
        if self.ready.is_set():
            event.set()
        return event

    def remove_listener(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)

    def _notify(self) -> None:
        for event in list(self._listeners):
            event.set()

    async def relist(self) -> None:
        kvs, revision = await self.store.range(self.prefix)
        self.items = {kv.key: kv for kv in kvs}
        self.revision = revision
        self.relists += 1
        self.ready.set()
        self._notify()

    async def run(self) -> None:
        """List, then follow the watch, forever: a watch ends only by an error, and is
        then listed and followed again (a listing never goes without the watch after it)."""
        async for attempt in patiently(
            f"watch {self.name}", at_once=Compacted, first=0.1, most=2.0, logger=log
        ):
            with attempt:
                await self.relist()
                progressed(attempt)
                async for batch in self.store.watch(self.prefix, self.revision + 1):
                    for ev in batch.events:
                        if ev.kind == "put":
                            self.items[ev.kv.key] = ev.kv
                        else:
                            self.items.pop(ev.kv.key, None)
                    self.revision = max(self.revision, batch.revision)
                    self._notify()
                raise StoreUnavailable(f"the watch of {self.prefix} ended")  # none should: list again

    def values(self) -> list[KV]:
        return list(self.items.values())
