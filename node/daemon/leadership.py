"""The one place where `node` wires in `leader`: campaign, lead, step down, repeat.

Leadership ends at the first of: the leader loop fails or is fenced, the leader
key changes (someone deleted it), or this node's lease is lost or about to expire
(`Session.expiring`, checked every 100 ms, so the leader stops acting before etcd
can hand leadership to another node). Every step-down resigns (deletes
the key, compared on its epoch) at once, graceful or not, so another node leads
within the time it takes to notice the deletion; when etcd does not take the delete,
this node's next campaign deletes the key that names it (`Election.campaign`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from leader.election import Election
from leader.liveness import Liveness
from leader.loop import LeaderLoop
from leader.pools import PoolContext, PoolKeeper
from leader.upkeep import Bounds, Upkeep
from leader.usage_rollup import Rollup
from node.model.keys import Keys
from node.store import Store, StoreError
from node.store.session import Session
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)


class Leadership:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        address: str,
        session: Session,
        events: EventLog,
        resync: float,
        liveness: Liveness | None = None,
        down_grace: float = 0.0,
        bounds: Bounds | None = None,
    ) -> None:
        self.election = Election(store, keys, node, address, session)
        self.store, self.keys, self.node, self.session, self.events = store, keys, node, session, events
        self.resync = resync
        self.liveness, self.down_grace = liveness, down_grace
        self.epoch = 0  # non-zero while leading
        self.bounds = bounds or Bounds()  # what the leader keeps of etcd (leader.upkeep)
        self.loop: LeaderLoop | None = None  # the loop of the latest epoch led (metrics read it)
        self.on_loop: list[Callable[[LeaderLoop], None]] = []  # told of each new loop (metrics time it)
        self.pool_context: PoolContext | None = None  # issue 15: set, the leader keeps node pools

        # run while leading, cancelled at the step-down; their end ends no term (issue 15: autoscaler)
        self.companions: list[Callable[[], Awaitable[None]]] = []

    async def _expiring(self) -> str:
        # a deadline on the clock, not an event: poll it
        while self.session.valid.is_set() and not self.session.expiring():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        return "this node's etcd lease is lost or about to expire"

    async def run(self) -> None:
        try:
            while True:
                epoch = await self.election.campaign()
                self.epoch = epoch
                self.events.emit("leader.elected", f"{self.node} leads at epoch {epoch}")
                reason = await self._lead(epoch)
                # Step down for good: the key hangs on this node's lease, which etcd may
                # well go on renewing (a lease "about to expire" often is not), and while
                # it stands nobody else can lead. Never a TTL wait.
                await self.resign()
                self.events.emit(
                    "leader.stepped-down", f"{self.node} stopped leading epoch {epoch}: {reason}"
                )
        finally:
            if self.epoch:
                await self.resign()

    async def _lead(self, epoch: int) -> str:
        loop = LeaderLoop(
            self.store, self.keys, epoch, self.events, self.resync, self.liveness, self.down_grace
        )
        for hook in self.on_loop:
            hook(loop)
        self.loop = loop
        if self.pool_context is not None:
            loop.pools = PoolKeeper(self.store, self.keys, epoch, self.events, self.pool_context)
        watchers = {
            asyncio.create_task(loop.run(), name="leader-loop"),
            asyncio.create_task(self.election.watch_deposed(epoch), name="leader-deposed"),
            asyncio.create_task(self._expiring(), name="leader-lease"),
            asyncio.create_task(
                Upkeep(self.store, self.keys, epoch, self.events, self.bounds).run(), name="leader-upkeep"
            ),
            asyncio.create_task(  # issue 15: usage intervals -> day totals, bounded
                Rollup(
                    self.store,
                    self.keys,
                    epoch,
                    self.bounds.usage_rollup_after,
                    self.bounds.usage_keep_days,
                    forget_after=self.bounds.reap_after,
                ).run(),
                name="leader-usage-rollup",
            ),
        }
        if loop.pools is not None:  # its provider calls end with the leadership
            watchers.add(asyncio.create_task(loop.pools.run(), name="leader-pools"))

        companions = [asyncio.create_task(_awaited(c()), name="leader-companion") for c in self.companions]
        try:
            done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*watchers, *companions):
                task.cancel()
            await asyncio.gather(*watchers, *companions, return_exceptions=True)
        first = done.pop()
        if first.cancelled():
            return "cancelled"
        exc = first.exception()
        if exc is not None:
            log.warning("leader loop ended: %r", exc)
            return f"{type(exc).__name__}: {exc}"
        return str(first.result())

    async def resign(self) -> None:
        epoch, self.epoch = self.epoch, 0
        with contextlib.suppress(StoreError, TimeoutError):
            async with asyncio.timeout(2.0):
                if await self.election.resign(epoch):
                    log.info("resigned leadership at epoch %d", epoch)


async def _awaited(job: Awaitable[None]) -> None:
    await job


__all__ = ["Bounds", "Leadership"]
