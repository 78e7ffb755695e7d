"""Which nodes the leader treats as dead: gossip's verdict, recorded in etcd.

A node is dead for scheduling when gossip (SWIM, `node.gossip`) has declared it
dead or left for at least `grace` seconds, or when a down mark says so, or when
its registry entry (`nodes/<id>`, on its lease) is gone. The leader records each
gossip death as `down/<node>` with a fenced write, so every node (and `shoal node
ls`) sees the same verdict, and removes the mark when gossip sees the node alive
again (it refuted with a higher incarnation: the heal case). A node that keeps its
etcd lease but is dead to its peers is dead here: that is the point of gossip.

A suspected node is never acted on; only a confirmed death is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Protocol

from node.events import EventLog
from node.keys import Keys
from node.store import Delete, Fenced, Put, Store, fence
from node.store.cache import PrefixCache


class Liveness(Protocol):
    def dead_since(self) -> Mapping[str, float]:
        """Node -> `time.monotonic()` when gossip declared it dead or left."""

    def alive(self) -> set[str]:
        """Nodes gossip sees alive or suspect."""

    def listener(self) -> asyncio.Event:
        """An event set on every membership change."""


class DownMarks:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        epoch: int,
        liveness: Liveness | None,
        events: EventLog,
        grace: float = 0.0,
    ) -> None:
        self.store, self.keys, self.epoch, self.liveness = store, keys, epoch, liveness
        self.events = events
        self.grace = grace
        self.cache = PrefixCache(store, keys.down_all, "down")

    def marked(self) -> set[str]:
        return {self.keys.tail(kv.key, self.keys.down_all) for kv in self.cache.values()}

    def gossip_dead(self, now: float | None = None) -> set[str]:
        if self.liveness is None:
            return set()
        now = time.monotonic() if now is None else now
        return {n for n, since in self.liveness.dead_since().items() if now - since >= self.grace}

    def next_deadline(self) -> float | None:
        """Seconds until a gossip death becomes old enough to act on, if any is pending."""
        if self.liveness is None:
            return None
        now = time.monotonic()
        waits = [since + self.grace - now for since in self.liveness.dead_since().values()]
        pending = [w for w in waits if w > 0]
        return min(pending) if pending else None

    def revived(self) -> set[str]:
        """Marked nodes that gossip sees alive again (they refuted: the heal case)."""
        if self.liveness is None:
            return set()  # without gossip, nothing can revive a mark
        return self.marked() & self.liveness.alive()

    def excluded(self) -> set[str]:
        """Nodes to schedule nothing on: marked down (and not revived), or dead to gossip."""
        return (self.marked() - self.revived()) | self.gossip_dead()

    async def sync(self, relevant: set[str]) -> None:
        """Mark newly dead nodes among `relevant` down, unmark revived ones (fenced)."""
        dead = self.gossip_dead()
        marked = self.marked()
        ops: list[Put | Delete] = []
        for node in sorted((dead & relevant) - marked):
            value = json.dumps({"since": time.time(), "epoch": self.epoch, "by": "gossip"}).encode()
            ops.append(Put(self.keys.down(node), value))
            self.events.emit("node.down", f"node {node} is dead to gossip; its tasks move")
        for node in sorted(self.revived()):
            ops.append(Delete(self.keys.down(node)))
            self.events.emit("node.up", f"node {node} is alive again")
        if not ops:
            return
        result = await self.store.txn([fence(self.keys.leader, self.epoch)], ops)
        if not result.succeeded:
            raise Fenced(f"leadership at epoch {self.epoch} is over; down marks not written")
