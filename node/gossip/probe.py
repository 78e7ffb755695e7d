"""The active side of failure detection: the probe loop and the reconnect loop (memberlist state.go).

One probe per `probe_interval` (stretched by the Lifeguard health score), to the
next member of the round-robin order:

1. `Ping` it, with piggybacked updates, and wait up to `probe_timeout` for the ack.
2. No ack: ask `indirect_checks` random ALIVE members to `PingReq` it, concurrently,
   each with the rest of the interval as its deadline.
3. No ack from any of them: suspect it (the core starts the suspicion timer).

If the probe only returns after its own deadline, this member was not running (a
stopped process, an overloaded loop): the result says nothing about the target, so
it is dropped and the health score goes up instead. The health score also goes up
for every relay that did not answer at all (a "nack" vouches for our own network)
and down for every acked probe (awareness.py).

An ack that comes from a different member than the one probed (another process at
that address) counts as no ack. An ack at a higher incarnation than held is direct
evidence that the member is ALIVE (it refuted, or restarted).

Reconnect: every `reconnect_interval`, one random DEAD member (dead for less than
`gossip_to_the_dead`) is pinged with its death notice; one that is in fact running
refutes before it answers, and the higher incarnation in its ack brings it back.

An unexpected error in one probe (a bug, a message that cannot be handled) is logged
and the loops go on: they are the node's liveness, and the daemon stops when one ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable

from node.gossip.member import Member, MemberEvent
from node.gossip.messages import Ack, Ping, PingReq, Update
from node.gossip.piggyback import is_sync, piggyback
from node.gossip.state import MemberTable
from node.gossip.transport import ProbeFailed, Transport

log = logging.getLogger(__name__)


def loop_time() -> float:
    """The running loop's clock (virtual in simulations); monotonic outside a loop."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class Prober:
    """Probes and reconnects for one member; results go to `table`, events to `publish`."""

    def __init__(
        self,
        table: MemberTable,
        transport: Transport,
        rng: random.Random,
        publish: Callable[[list[MemberEvent]], None],
    ) -> None:
        self.table, self.transport, self.publish = table, transport, publish
        self.node, self.config = table.node, table.config
        self._rng = rng
        self._seq = itertools.count(1)

    def next_seq(self) -> int:
        return next(self._seq)

    async def probe_loop(self) -> None:
        loop, config = asyncio.get_running_loop(), self.config
        await asyncio.sleep(self._rng.uniform(0, config.probe_interval))  # stagger the members
        while not self.table.left:
            start = loop.time()
            deadline = start + self.table.health.scale(config.probe_interval)
            target = self.table.next_target()
            if target is not None:
                try:
                    await self.probe(target, deadline)
                except Exception:
                    log.exception("gossip: probe of %s failed unexpectedly", target.node)
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def probe(self, target: Member, deadline: float) -> None:
        loop, table, config = asyncio.get_running_loop(), self.table, self.config
        seq = self.next_seq()
        ping = Ping(self.node, seq, piggyback(table, target.node, probe=True))
        with contextlib.suppress(ProbeFailed):
            ack = await self.transport.ping(target.address, ping, table.health.scale(config.probe_timeout))
            if self.acked(ack, target.node):
                table.health.apply(-1)
                return
        relays = table.relays(config.indirect_checks, target.node)
        remaining = deadline - loop.time()
        if table.left or remaining <= 0:
            table.health.apply(1)  # we were late: inconclusive
            return
        missing = 1
        if relays:
            answers = await asyncio.gather(*(self._ping_req(r, seq, target, remaining) for r in relays))
            if any(a is not None and a.ack for a in answers):
                table.health.apply(-1)
                return
            missing = sum(1 for a in answers if a is None)
        if loop.time() > deadline + config.probe_timeout:
            missing += 1  # late again: inconclusive
        else:
            self.publish(table.suspect(target.node, loop.time()))
        table.health.apply(missing)

    async def _ping_req(self, relay: Member, seq: int, target: Member, timeout: float) -> Ack | None:
        updates = piggyback(self.table, relay.node, probe=True)
        try:
            ack = await self.transport.ping_req(
                relay.address, PingReq(self.node, seq, target.node, target.address, updates), timeout
            )
        except ProbeFailed:
            return None
        self.merge(ack.updates)
        if ack.ack and ack.node == target.node:
            self.publish(self.table.acked(ack.node, ack.incarnation, loop_time()))
        return ack

    async def reconnect_loop(self) -> None:
        loop, interval = asyncio.get_running_loop(), self.config.reconnect_interval
        await asyncio.sleep(self._rng.uniform(0, interval))
        while not self.table.left:
            start = loop.time()
            target = self.table.reconnect_target(start)
            if target is not None:
                try:
                    await self._reconnect(target)
                except Exception:
                    log.exception("gossip: reconnect probe of %s failed unexpectedly", target.node)
            await asyncio.sleep(max(0.0, start + interval - loop.time()))

    async def _reconnect(self, target: Member) -> None:
        notice = Update(target.node, target.address, target.incarnation, target.state)
        with contextlib.suppress(ProbeFailed):
            ping = Ping(self.node, self.next_seq(), (notice,))
            self.acked(
                await self.transport.ping(target.address, ping, self.config.probe_timeout), target.node
            )

    def acked(self, ack: Ack, node: str) -> bool:
        """Merge an ack from `node`; False if it was not acked by `node` itself."""
        self.merge(ack.updates)
        if ack.node != node or not ack.ack:
            return False
        self.publish(self.table.acked(node, ack.incarnation, loop_time()))
        return True

    def merge(self, updates: tuple[Update, ...]) -> None:
        if updates:
            self.publish(self.table.apply_all(updates, loop_time(), gossip=not is_sync(updates, self.config)))
