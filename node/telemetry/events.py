"""Cluster events: a bounded ring per node in etcd (`events/<node>/<slot>`).

Each node writes only its own ring, so writers never contend; readers merge all
rings by etcd revision. A ring holds `RING` events, so the history is bounded by
nodes x RING. Emitting never blocks the caller and never fails it: events go
through a queue, and a write that fails is logged and dropped (events are for
people, not for correctness).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from node.model.domain import Event
from node.model.keys import Keys
from node.store import KV, Store, StoreError

log = logging.getLogger(__name__)

RING = 256


class EventLog:
    def __init__(self, store: Store, keys: Keys, node: str, ring: int = RING) -> None:
        self.store = store
        self.keys = keys
        self.node = node
        self.ring = ring
        self._next = 0
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self.observers: list[Callable[[Event], None]] = []  # told of every event (metrics count them)

    async def start(self) -> None:
        """Continue the ring after its newest entry (so a restart does not overwrite it)."""
        kvs, _ = await self.store.range(self.keys.node_events(self.node))
        if kvs:
            newest = max(kvs, key=lambda kv: kv.mod_revision)
            self._next = (int(newest.key.rsplit("/", 1)[1]) + 1) % self.ring

    def emit(self, kind: str, message: str, service: str = "", task: str = "", cause: str = "") -> None:
        event = Event(time.time(), kind, self.node, message, service, task, cause)
        log.info("event %s: %s", kind, message, extra={"service": service, "task": task, "cause": cause})
        for observe in self.observers:
            observe(event)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(event)

    async def run(self) -> None:
        while True:
            event = await self._queue.get()
            key = self.keys.event(self.node, self._next)
            try:
                await self.store.put(key, event.to_json())
                self._next = (self._next + 1) % self.ring
            except StoreError as exc:
                log.warning("event %s not recorded: %s", event.kind, exc)


def decode(kvs: list[KV], service: str = "") -> list[tuple[int, Event]]:
    """Events from ring entries, oldest first, optionally of one service."""
    out: list[tuple[int, Event]] = []
    for kv in kvs:
        try:
            event = Event.from_json(kv.value)
        except (ValueError, TypeError):
            continue
        if not service or event.service == service:
            out.append((kv.mod_revision, event))
    out.sort(key=lambda item: item[0])
    return out
