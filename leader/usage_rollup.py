"""The leader rolls raw usage intervals into day totals and keeps them bounded (decision 67).

Every `ROLL_EVERY` s the leader reads `usage/raw/` and takes the records whose interval
ended more than `rollup_after` s ago and lie before their node's cursor (keys a node may
still rewrite are never rolled: decision 67). For each group (UTC day, `Dims`) it writes ONE
transaction: the day record `usage/day/<day>/<digest>` set to its old total plus the
raw records', and every one of those raw keys deleted, on the conditions that the
leader's epoch is still ours (fenced), the day record is the one it read, and each raw
key is the one it read (same mod revision). A crash before the transaction changes
nothing; after it, the raw keys are gone and the total has them: nothing is lost or
counted twice, whoever leads next. A raw key written late (a node that was away) is
rolled in at a later pass, added to the same day record. Groups too big for one
transaction go in several, each complete by itself. A day record that cannot be read is
logged and its group left raw (the report still counts the raw records; nothing is added
to a total that would be lost), and the other groups go on.

Day totals older than `keep_days` are deleted (one fenced range delete), so etcd holds
at most `rollup_after` s of raw intervals (nodes x tasks per interval) and one record
per (day, node, service) for `keep_days` days.

A node's cursor `usage/cursor/<node>` is deleted once the node is gone for good: not
registered, no interval closed for `forget_after` s (the daemon's `reap_after`, 1 day),
and every raw record behind the cursor rolled up (`forget`). So cursors are bounded by
the nodes of the last day, not by every node a pool ever started. A node back after
that is metered from its return, like a new one: the up to `MAX_BACKFILL` (6 h) its
meter would have gone back for containers that ran while it was away is not counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from node.model.keys import Keys
from node.model.usage_ledger import DAY, Dims, MeterState, Record, Tally, UsageKeys, day_of
from node.store import KV, Compare, Delete, Fenced, Put, Store, StoreError, fence
from node.store.base import MAX_TXN_OPS

log = logging.getLogger(__name__)

ROLL_EVERY = 60.0  # s between two roll-up passes
CHUNK = MAX_TXN_OPS - 2  # raw keys per transaction (each a compare and a delete)


class Rollup:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        epoch: int,
        rollup_after: float,
        keep_days: int,
        wall: Callable[[], float] = time.time,
        forget_after: float = 86400.0,
    ) -> None:
        self.store, self.keys, self.epoch, self.wall = store, keys, epoch, wall
        self.rollup_after, self.keep_days = rollup_after, keep_days
        self.forget_after = max(forget_after, rollup_after)  # a cursor's records are all rollable by then
        self.ukeys = UsageKeys(keys.prefix)
        self.rolled = 0  # raw records rolled by the last pass
        self.dropped = 0  # day records deleted by the last pass
        self.unreadable: set[str] = set()  # day totals found unreadable (logged once each)

    async def run(self) -> None:
        while True:
            try:
                await self.roll()
                await self.forget()
                await self.expire()
            except Fenced:
                raise
            except StoreError as exc:
                log.warning("usage roll-up skipped: %s", exc)
            except Exception:  # a bad record must not end the leadership: logged, tried again
                log.exception("usage roll-up failed; trying again at the next pass")
            await asyncio.sleep(min(ROLL_EVERY, max(1.0, self.rollup_after / 2)))

    async def roll(self) -> int:
        """One pass; the number of raw records rolled into day totals."""
        cursors = await self._cursors()
        kvs, _ = await self.store.range(self.ukeys.raw)
        cut = self.wall() - self.rollup_after
        groups: dict[tuple[int, Dims], list[tuple[KV, Record]]] = {}
        for kv in kvs:
            try:
                record = Record.from_json(kv.value)
            except (ValueError, KeyError, TypeError):
                log.warning("usage roll-up: unreadable record %s left alone", kv.key)
                continue
            if record.end <= min(cut, cursors.get(record.dims.node, 0)):  # final: behind its node's cursor
                groups.setdefault((day_of(record.start), record.dims), []).append((kv, record))
        self.rolled = 0
        for (day, dims), items in sorted(groups.items(), key=lambda g: g[0][0]):
            for i in range(0, len(items), CHUNK):
                if await self._roll_chunk(day, dims, items[i : i + CHUNK]):
                    self.rolled += len(items[i : i + CHUNK])
        if self.rolled:
            log.info("usage roll-up: %d raw interval record(s) rolled into day totals", self.rolled)
        return self.rolled

    async def _cursors(self) -> dict[str, int]:
        """node -> the end of its last closed interval: its raw keys before it are final (a
        node rewrites keys only at or after its cursor, decision 67)."""
        kvs, _ = await self.store.range(self.ukeys.cursors)
        out = {}
        for kv in kvs:
            try:
                out[kv.key[len(self.ukeys.cursors) :]] = MeterState.from_json(kv.value).end
            except (ValueError, KeyError, TypeError):
                continue
        return out

    async def _roll_chunk(self, day: int, dims: Dims, items: list[tuple[KV, Record]]) -> bool:
        key = self.ukeys.day_key(day, dims)
        old = await self.store.get(key)
        try:
            total = Record.from_json(old.value).tally if old is not None else Tally()
        except (ValueError, KeyError, TypeError) as exc:
            # its raw records stay raw (the report counts them there): adding them to a total
            # that cannot be read would lose it, and a pass that raised here stopped every
            # group after it and the expiry, at every pass
            if key not in self.unreadable:
                log.warning(
                    "usage roll-up: day total %s cannot be read (%s); its group is left raw", key, exc
                )
            self.unreadable.add(key)
            return False
        for _, record in items:
            total = total + record.tally
        compares = [
            fence(self.keys.leader, self.epoch),
            Compare(key, "mod", "==", old.mod_revision if old is not None else 0),
            *(Compare(kv.key, "mod", "==", kv.mod_revision) for kv, _ in items),
        ]
        ops: list[Put | Delete] = [
            Put(key, Record(dims, day, day + DAY, total).to_json()),
            *(Delete(kv.key) for kv, _ in items),
        ]
        result = await self.store.txn(compares, ops)
        if result.succeeded:
            return True
        await self._check_fence()
        return False  # a raw key rewritten meanwhile, or another pass: the next pass sees it

    async def forget(self) -> int:
        """Delete the cursors of nodes gone for good; the number deleted.

        A cursor goes when its node has no registration (`nodes/<node>`), has closed no
        interval for `forget_after` s (its end is that old), and has no raw record left at or
        before it (every one rolled into a day total, by this pass or an earlier one). The
        delete is fenced and compared on the cursor (unchanged since read) and on the node
        being unregistered still. A crash before it leaves the cursor: the next pass deletes
        it. A node back after that is metered from its return, as a new node: no interval
        behind the deleted cursor is written again (its meter's next write, compared on the
        cursor, fails and reloads), so none is counted twice."""
        cut = self.wall() - self.forget_after
        kvs, _ = await self.store.range(self.ukeys.cursors)
        cursors = {}
        for kv in kvs:
            try:
                end = MeterState.from_json(kv.value).end
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # unreadable: left alone (its node's records are not rolled either)
            if end <= cut:
                cursors[kv.key[len(self.ukeys.cursors) :]] = (kv, end)
        if not cursors:
            return 0
        nodes, _ = await self.store.range(self.keys.nodes)
        for kv in nodes:
            cursors.pop(self.keys.tail(kv.key, self.keys.nodes), None)
        raws, _ = await self.store.range(self.ukeys.raw)
        for kv in raws:
            owner = kv.key[len(self.ukeys.raw) :].partition("/")[2].partition("/")[0]  # <start>/<node>/<task>
            if owner in cursors:
                try:
                    record = Record.from_json(kv.value)
                except (ValueError, KeyError, TypeError):
                    continue  # never rolled: it holds nothing up
                if record.end <= cursors[owner][1]:
                    cursors.pop(owner)  # not rolled yet: the cursor still says it is final
        forgotten = 0
        for node, (kv, _) in sorted(cursors.items()):
            compares = [
                fence(self.keys.leader, self.epoch),
                Compare(kv.key, "mod", "==", kv.mod_revision),
                Compare(self.keys.node(node), "create", "==", 0),
            ]
            if (await self.store.txn(compares, [Delete(kv.key)])).succeeded:
                forgotten += 1
            else:
                await self._check_fence()  # else the node came back meanwhile: kept
        if forgotten:
            log.info("usage roll-up: %d cursor(s) of nodes gone %gs deleted", forgotten, self.forget_after)
        return forgotten

    async def _check_fence(self) -> None:
        leader = await self.store.get(self.keys.leader)
        if leader is None or leader.create_revision != self.epoch:
            raise Fenced(f"leadership at epoch {self.epoch} is over; usage roll-up stopped")

    async def expire(self) -> int:
        """Delete the day totals older than `keep_days` (one fenced range delete)."""
        oldest = day_of(int(self.wall())) - self.keep_days * DAY
        kvs, _ = await self.store.range(self.ukeys.days)
        old = [kv for kv in kvs if kv.key < self.ukeys.day_at(oldest)]
        self.dropped = len(old)
        if not old:
            return 0
        result = await self.store.txn(
            [fence(self.keys.leader, self.epoch)], [Delete(self.ukeys.days, end=self.ukeys.day_at(oldest))]
        )
        if not result.succeeded:
            raise Fenced(f"leadership at epoch {self.epoch} is over; usage roll-up stopped")
        log.info("usage roll-up: %d day total(s) older than %d days deleted", len(old), self.keep_days)
        return len(old)
