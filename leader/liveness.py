"""Which nodes the leader treats as dead: gossip's verdict, recorded in etcd.

A node is dead for scheduling when gossip (SWIM, `node.gossip`) has declared it
dead or left for at least `grace` seconds, or when a down mark says so, or when
its registry entry (`nodes/<id>`, on its lease) is gone. The leader records each
gossip death as `down/<node>` with a fenced write, so every node (and `shoal node
ls`) sees the same verdict, and removes the mark when gossip sees the node alive
again (it refuted with a higher incarnation: the heal case). A node that keeps its
etcd lease but is dead to its peers is dead here: that is the point of gossip.

A suspected node is never acted on; only a confirmed death is. Nor is the death of a
node whose daemon said it is restarting (`restarting/<node>`, `node.daemon.restarting`)
while that mark lives: its containers run on through the restart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Protocol

from node.model.keys import Keys
from node.store import Delete, Fenced, Put, Store, fence
from node.store.mirrors import mirror
from node.telemetry.events import EventLog


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
        self.cache = mirror(store, keys.down_all, "down")
        self.restarts = mirror(store, keys.restarting_all, "restarting")  # node.daemon.restarting
        self.quorate = True  # does this leader see a majority of the registry alive?

    def marked(self) -> set[str]:
        return {self.keys.tail(kv.key, self.keys.down_all) for kv in self.cache.values()}

    def restarting(self) -> set[str]:
        """Nodes stopped to come back (a live `restarting/<node>` mark): not acted on."""
        return {self.keys.tail(kv.key, self.keys.restarting_all) for kv in self.restarts.values()}

    def gossip_dead(self, now: float | None = None) -> set[str]:
        if self.liveness is None or not self.quorate:
            return set()
        now = time.monotonic() if now is None else now
        held = self.restarting()
        dead = self.liveness.dead_since().items()
        return {n for n, since in dead if now - since >= self.grace and n not in held}

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

    def check_quorum(self, registry: set[str]) -> None:
        """Act on gossip deaths only while this leader sees most registered nodes alive.

        A leader cut off from its peers (but not from etcd) sees everyone else die; it
        must not mark them all down and pull every task onto itself.
        """
        if self.liveness is None or not registry:
            return
        quorate = len(registry & self.liveness.alive()) * 2 > len(registry)
        if quorate != self.quorate:
            seen = len(registry & self.liveness.alive())
            self.events.emit(
                "leader.gossip-quorum" if quorate else "leader.gossip-minority",
                f"this leader sees {seen} of {len(registry)} nodes alive; "
                + ("acting on gossip deaths again" if quorate else "not acting on gossip deaths"),
            )
        self.quorate = quorate

    async def sync(self, registry: set[str], relevant: set[str]) -> None:
        """Mark newly dead nodes among `relevant` down, unmark revived ones (fenced)."""
        self.check_quorum(registry)
        newly_dead = sorted((self.gossip_dead() & relevant) - self.marked())
        revived = sorted(self.revived())
        value = json.dumps({"since": time.time(), "epoch": self.epoch, "by": "gossip"}).encode()
        ops: list[Put | Delete] = [Put(self.keys.down(node), value) for node in newly_dead]
        ops += [Delete(self.keys.down(node)) for node in revived]
        if not ops:
            return
        result = await self.store.txn([fence(self.keys.leader, self.epoch)], ops)
        if not result.succeeded:
            raise Fenced(f"leadership at epoch {self.epoch} is over; down marks not written")
        for node in newly_dead:
            self.events.emit("node.down", f"node {node} is dead to gossip; its tasks move")
        for node in revived:
            self.events.emit("node.up", f"node {node} is alive again")
