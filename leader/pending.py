"""Why replicas wait: the leader publishes each service's pending reason in etcd.

The scheduler says, every pass, which replicas fit nowhere and why (`Plan.unplaced`,
`Plan.pending_nodes`, `Plan.reason`). Only the leader knows that, but any node's API
must be able to show it (`shoal service ps`, `inspect`), so the leader keeps one key
per waiting service, `pending/<service>` (a `PendingRecord`):

- written when the reason or the waiting slots change, not on every pass (a pass
  that changes nothing writes nothing);
- deleted as soon as every replica has a node, or the service is gone (a write whose
  outcome is unknown, etcd's answer lost, makes the next pass read `pending/` again, so
  nothing it may have written is forgotten);
- fenced like every leader write: a deposed leader cannot overwrite its successor's.

A new leader reads what is there once and goes on from it, so it neither rewrites
every key nor leaves a stale one behind. A key whose record cannot be read
(`node.model.readable.pending`: written around the leader) is logged once per mod
revision and taken as stored but unlike anything: the pass writes that service's reason
over it, or deletes it when the service waits for nothing. The leader is the key's only
writer and its content is wholly derived from the pass's plan (nothing decides on it),
so this loses nothing (decision 97); the other services' reasons go on either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from leader.scheduler import Plan
from node.model import readable
from node.model.domain import PendingRecord, UnreadableRecord
from node.model.keys import Keys
from node.store import Delete, Fenced, Put, Store, fence
from node.store.base import MAX_TXN_OPS, Op

log = logging.getLogger(__name__)


def _what(record: PendingRecord) -> tuple[str, tuple[int, ...], tuple[str, ...], str]:
    return record.reason, tuple(record.slots), tuple(record.nodes), record.uid


class PendingReasons:
    def __init__(self, store: Store, keys: Keys, epoch: int) -> None:
        self.store, self.keys, self.epoch = store, keys, epoch
        self._published: dict[str, PendingRecord | None] | None = None  # service -> what etcd holds
        self._said: dict[str, int] = {}  # service whose record cannot be read -> mod revision logged

    async def _load(self) -> dict[str, PendingRecord | None]:
        """What `pending/` holds by service (its key's name); None: a record that cannot be read."""
        kvs, _ = await self.store.range(self.keys.pendings)
        out: dict[str, PendingRecord | None] = {}
        said, self._said = self._said, {}
        for kv in kvs:
            name = self.keys.tail(kv.key, self.keys.pendings)
            try:
                out[name] = readable.pending(name, kv.value)
            except UnreadableRecord as exc:
                out[name] = None  # unlike any wanted record: written over, or deleted
                self._said[name] = kv.mod_revision
                if said.get(name) != kv.mod_revision:
                    log.warning("%s; the leader writes it anew", exc)
        return out

    def wanted(self, plans: Iterable[Plan], now: float) -> dict[str, PendingRecord]:
        """The records the plans call for (`since` kept while the reason stays the same)."""
        published = self._published or {}
        out = {}
        for plan in plans:
            if not plan.pending:
                continue
            old = published.get(plan.service)
            same = old is not None and old.reason == plan.reason and old.uid == plan.uid  # not a namesake's
            since = old.since if old is not None and same else now
            out[plan.service] = PendingRecord(
                plan.service, plan.reason, sorted(plan.unplaced), sorted(plan.pending_nodes), since, plan.uid
            )
        return out

    async def publish(self, plans: Iterable[Plan], now: float | None = None) -> int:
        """Bring `pending/` in line with the plans; return how many keys were written."""
        if self._published is None:
            self._published = await self._load()
        want = self.wanted(plans, time.time() if now is None else now)
        ops: list[Op] = [
            Delete(self.keys.pending(name)) for name in sorted(self._published.keys() - want.keys())
        ]
        for name, record in sorted(want.items()):
            old = self._published.get(name)
            if old is None or _what(old) != _what(record):  # new, changed, or unreadable
                ops.append(Put(self.keys.pending(name), record.to_json()))
        try:
            for i in range(0, len(ops), MAX_TXN_OPS):
                result = await self.store.txn([fence(self.keys.leader, self.epoch)], ops[i : i + MAX_TXN_OPS])
                if not result.succeeded:
                    raise Fenced(f"leadership at epoch {self.epoch} is over; pending reasons not written")
        except BaseException:
            self._published = None  # some may be written, their answer lost: read etcd again next time
            raise
        self._published = {**want}
        return len(ops)
