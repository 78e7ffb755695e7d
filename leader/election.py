"""Leader election through one etcd key.

A node campaigns by creating the `leader` key on its session lease in a
transaction that succeeds only if the key does not exist. The key's create
revision is the leader's **epoch**: a fencing token that grows with every new
leadership. Every leader write compares it (`node.store.fence`), so a deposed
leader, however slow, can never write.

Leadership ends when the key is deleted (resign), when its lease expires, or
when this node's session is lost; `watch_deposed` returns at the first of these.

The key's watches start after the revision the key was read at, not after its mod
revision: the key is never rewritten (only its lease renewed), so its mod revision stays
at the epoch, and once the leader's upkeep compacted past it, a watch from there was
refused at once, on every node, twice a second for good.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from node.model.keys import Keys
from node.store import KV, Compare, Delete, Put, Store
from node.store.retry import patiently
from node.store.session import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderInfo:
    node: str
    epoch: int
    address: str = ""


class Election:
    def __init__(self, store: Store, keys: Keys, node: str, address: str, session: Session) -> None:
        self.store = store
        self.keys = keys
        self.node = node
        self.address = address
        self.session = session

    async def current(self) -> LeaderInfo | None:
        kv = await self.store.get(self.keys.leader)
        if kv is None:
            return None
        data = json.loads(kv.value)
        return LeaderInfo(data.get("node", ""), kv.create_revision, data.get("address", ""))

    async def _read(self) -> tuple[KV | None, int]:
        """The leader key and the store revision it was read at (a watch starts after it)."""
        kvs, revision = await self.store.range(self.keys.leader)  # a prefix: pick the key itself
        return next((kv for kv in kvs if kv.key == self.keys.leader), None), revision

    async def _lease_fit(self) -> None:
        """Until this node's lease is valid and not about to expire.

        A leader steps down when its lease is about to expire (`Session.expiring`,
        `node.daemon.leadership`). Campaigning on that same lease won at once (nobody
        else is as quick), led for an instant and stepped down again, over and over until
        the renewal landed: the chaos soak counted 1,149 epochs in 10 minutes. Only a lease
        with time left campaigns."""
        # a deadline on the clock, not an event: poll it (as Leadership._expiring does)
        while not self.session.valid.is_set() or self.session.expiring():
            if not self.session.valid.is_set():
                await self.session.valid.wait()
            else:
                await asyncio.sleep(0.1)

    async def try_acquire(self) -> int | None:
        """One attempt; the epoch when this node now leads, else None."""
        await self._lease_fit()
        value = json.dumps({"node": self.node, "address": self.address, "since": time.time()}).encode()
        result = await self.store.txn(
            [Compare(self.keys.leader, "create", "==", 0)],
            [Put(self.keys.leader, value, lease=self.session.lease)],
        )
        return result.revision if result.succeeded else None

    async def campaign(self) -> int:
        """Block until this node leads; return its epoch. A store error is retried after
        0.5 s (`patiently`); a lost race waits for the key to go (not a retry)."""
        retrying = patiently("election", first=0.5, most=0.5, logger=log)
        while True:
            epoch: int | None = await retrying(self._turn)
            if epoch is not None:
                return epoch

    async def _turn(self) -> int | None:
        """One try; when another node leads, wait until its key goes (or a while)."""
        epoch = await self.try_acquire()
        if epoch is None and not await self._clear_own_stale_key():
            await self._wait_vacant()
        return epoch

    async def _clear_own_stale_key(self) -> bool:
        """Delete a leader key that names this node while it campaigns (True if deleted).

        A node campaigns only when it does not lead, so a key naming it is left from a
        leadership it stepped down from without a resign reaching etcd (its lease about
        to expire while etcd changed its raft leader, say). etcd renews that lease with
        the node's others, so without this the key would outlive the step-down for good
        and no node would lead. Node ids are unique in a cluster (a join never grants a
        running node's id), and the delete compares the key's create revision, so a
        newer leadership is never touched."""
        kv = await self.store.get(self.keys.leader)
        if kv is None:
            return False
        try:
            node = json.loads(kv.value).get("node", "")
        except (ValueError, AttributeError):
            return False
        if node != self.node:
            return False
        log.warning(
            "election: the leader key at epoch %d is this node's own, left from a step-down; deleting it",
            kv.create_revision,
        )
        return await self.resign(kv.create_revision)

    async def _wait_vacant(self) -> None:
        """Return once the leader key is gone (or looks gone), or after a while."""
        kv, revision = await self._read()
        if kv is None:
            return
        with_timeout = asyncio.timeout(5.0)  # re-check now and then, watches can stall
        try:
            async with with_timeout:
                async for batch in self.store.watch(self.keys.leader, revision + 1):
                    if any(ev.kind == "delete" for ev in batch.events):
                        return
        except TimeoutError:
            return

    async def watch_deposed(self, epoch: int) -> str:
        """Return (with the reason) when leadership at `epoch` is over. The key is read
        again every 5 s (watches can stall); a store error is retried after 0.5 s."""
        retrying = patiently("leader watch", first=0.5, most=0.5, logger=log)
        while True:  # not a retry: a look at the key every 5 s
            reason: str | None = await retrying(self._deposed, epoch)
            if reason is not None:
                return reason

    async def _deposed(self, epoch: int) -> str | None:
        kv, revision = await self._read()
        if kv is None or kv.create_revision != epoch:
            return "the leader key changed"
        try:
            async with asyncio.timeout(5.0):
                async for batch in self.store.watch(self.keys.leader, revision + 1):
                    for ev in batch.events:
                        if ev.kind == "delete" or ev.kv.create_revision != epoch:
                            return "the leader key was deleted"
        except TimeoutError:
            pass
        return None

    async def resign(self, epoch: int) -> bool:
        """Give up leadership at once (no TTL wait); False when it was not ours any more."""
        result = await self.store.txn(
            [Compare(self.keys.leader, "create", "==", epoch)], [Delete(self.keys.leader)]
        )
        return result.succeeded
