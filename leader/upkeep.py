"""The leader keeps etcd bounded: compaction, defragmentation, reaping of gone nodes.

etcd keeps every revision until compacted, and a compacted database file keeps its
size until defragmented. Nothing else in shoal does either, so the leader does, next
to its reconcile loop (`node.daemon.leadership` runs both):

- compaction: every `COMPACT_EVERY` s the leader notes etcd's revision; it compacts
  to the revision it noted `retention` seconds ago (Kubernetes' apiserver does the
  same with 5 minutes). A watcher cut off longer than that re-lists (`Compacted`).
- defragmentation: a member whose file is at least `defrag_min` bytes with less than
  `defrag_ratio` of it in use is defragmented; one member per pass, so a cluster
  never has two members stalled by it at once.
- reaping (every `REAP_EVERY` s): a node with no registry entry (`nodes/<id>`, on its
  lease) whose down mark and newest event are older than `reap_after` loses its mark
  (`down/<id>`); client tokens revoked or expired longer than `reap_after` ago are
  deleted (until then a caller still learns why it fails). A gone node's events stay.
- trimming the event log (every `TRIM_EVERY` s, issue 14): one range delete of every
  event older than `events_max_age` and of the oldest beyond `events_max`
  (`node.telemetry.events.trim_cut`), whoever wrote them; entries of the per-node
  rings of older versions go once older than `events_max_age` (or at once with no age bound).

Every write is fenced on the leader's epoch (compaction too: a fenced empty txn
first), so a deposed leader changes nothing. A store error skips the step until the
next pass; `Fenced` ends the leadership, as in the reconcile loop.

The rules (`compact_target`, `defrag_due`, `gone_nodes`, `stale_tokens`, `trim_cut`) are pure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from node.model.domain import Event
from node.model.keys import Keys
from node.security.tokens import StoredToken
from node.store import KV, Delete, Fenced, Store, StoreError, fence
from node.store.base import MAX_TXN_OPS, MemberStatus
from node.telemetry.events import EventLog, event_time_ns, trim_cut

log = logging.getLogger(__name__)

COMPACT_EVERY = 60.0  # s between two notes of etcd's revision (and compaction checks)
REAP_EVERY = 600.0  # s between two reaping passes (they read every down mark, event and token)
TRIM_EVERY = 30.0  # s between two trims of the event log (each reads the log: <= events_max entries)


@dataclass(frozen=True)
class Bounds:
    """What the leader keeps of etcd (NodeConfig: etcd_retention, etcd_defrag_*, reap_after)."""

    retention: float = 600.0  # s of history kept; 0: never compact
    defrag_ratio: float = 0.5  # defragment below this fraction in use; 0: never
    defrag_min: int = 64 * 2**20  # bytes: smaller files are left alone
    reap_after: float = 86400.0  # s a node (or a revoked token) is gone before it is dropped
    events_max: int = 5000  # events kept (issue 14; NodeConfig.events_max)
    events_max_age: float = 86400.0  # s an event is kept at most; 0: by count only
    usage_rollup_after: float = 3600.0  # issue 15: raw usage intervals older than this are rolled up
    usage_keep_days: int = 400  # issue 15: days of usage day totals kept (leader.usage_rollup)


@runtime_checkable
class Maintenance(Protocol):
    """What `EtcdStore` offers beyond `Store`: per-member status and defragmentation."""

    async def member_status(self) -> list[MemberStatus]: ...
    async def defragment(self, endpoint: str) -> None: ...


# -- the rules ----------------------------------------------------------------------------


def compact_target(samples: Sequence[tuple[float, int]], now: float, retention: float) -> int:
    """The newest revision noted at least `retention` s before `now` (0: none yet)."""
    due = [rev for at, rev in samples if at <= now - retention]
    return max(due, default=0)


def defrag_due(status: MemberStatus, ratio: float, min_size: int) -> bool:
    """Is this member's file big enough and mostly free space?"""
    return ratio > 0 and status.db_size >= min_size and status.db_size_in_use < status.db_size * ratio


def gone_nodes(
    marks: Mapping[str, float],
    newest_events: Mapping[str, float],
    registered: Iterable[str],
    now: float,
    after: float,
) -> set[str]:
    """Nodes to forget: unregistered, with a down mark or events, and neither
    written for `after` seconds (wall clock; a node that wrote an event is not gone)."""
    known = set(marks) | set(newest_events)
    return {
        n for n in known - set(registered) if max(marks.get(n, 0.0), newest_events.get(n, 0.0)) <= now - after
    }


def stale_tokens(records: Iterable[StoredToken], now: datetime, after: float) -> list[str]:
    """Ids of client tokens revoked, or expired, more than `after` seconds before `now`."""
    out = []
    for record in records:
        ended = [t for t in (record.revoked, record.expires) if t]
        try:
            ends = [datetime.fromisoformat(t) for t in ended]
        except ValueError:
            continue  # a record we cannot read is left to an operator
        if record.revoked:
            ends = ends[:1]  # revoked: that moment counts, whatever the expiry
        elif not ends or ends[0] > now:
            continue
        if (now - ends[0]).total_seconds() >= after:
            out.append(record.id)
    return sorted(out)


# -- the shell ----------------------------------------------------------------------------


class Upkeep:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        epoch: int,
        events: EventLog,
        bounds: Bounds,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.keys, self.epoch, self.events, self.bounds = store, keys, epoch, events, bounds
        self.clock, self.wall = clock, wall
        self.samples: list[tuple[float, int]] = []
        self.compacted = 0
        self.defragmented: list[str] = []
        self.reaped: list[str] = []  # keys deleted by reaping (the last pass)
        self._reaped_at = float("-inf")
        self.trimmed = 0  # events deleted by the last trim

    async def run(self) -> None:
        """Ticks and trims until one raises (`Fenced`: the leadership is over)."""
        loops = {
            asyncio.create_task(self._ticking(), name="leader-upkeep-tick"),
            asyncio.create_task(self._trimming(), name="leader-events-trim"),
        }
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for loop in done:
                loop.result()
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _ticking(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(COMPACT_EVERY)

    async def _trimming(self) -> None:
        while True:
            try:
                await self.trim()
            except Fenced:
                raise
            except StoreError as exc:
                log.warning("etcd upkeep: event trim skipped: %s", exc)
            await asyncio.sleep(TRIM_EVERY)

    async def trim(self) -> None:
        """Delete the events past the bounds: one fenced range delete (and the old rings'
        entries past the age bound, one by one)."""
        kvs, _ = await self.store.range(self.keys.events)
        times: list[int] = []
        legacy: list[KV] = []
        for kv in kvs:
            t = event_time_ns(kv.key, self.keys.events)
            if t is None:
                legacy.append(kv)
            else:
                times.append(t)
        now = self.wall()
        cut = trim_cut(times, now, self.bounds.events_max, self.bounds.events_max_age)
        ops = [Delete(self.keys.event_at(0), end=self.keys.event_at(cut))] if cut else []
        old = now - self.bounds.events_max_age if self.bounds.events_max_age > 0 else float("inf")
        ops += [Delete(kv.key) for kv in legacy if _event_time(kv.value) < old]
        if not ops:
            self.trimmed = 0
            return
        await self._fenced(ops)
        self.trimmed = sum(1 for t in times if t < cut) + len(ops) - (1 if cut else 0)  # range + legacy
        log.info("etcd upkeep: %d event(s) trimmed (%d kept)", self.trimmed, len(kvs) - self.trimmed)

    async def tick(self) -> None:
        """One pass: note the revision, compact, defragment one member, reap when due."""
        steps: list[Callable[[], Awaitable[None]]] = [self.compact, self.defragment]
        if self.clock() - self._reaped_at >= REAP_EVERY:
            steps.append(self.reap)
        for step in steps:
            try:
                await step()
            except Fenced:
                raise
            except StoreError as exc:
                log.warning("etcd upkeep: %s skipped: %s", getattr(step, "__name__", step), exc)

    async def _fenced(self, ops: Sequence[Delete]) -> None:
        for i in range(0, max(len(ops), 1), MAX_TXN_OPS):
            result = await self.store.txn([fence(self.keys.leader, self.epoch)], ops[i : i + MAX_TXN_OPS])
            if not result.succeeded:
                raise Fenced(f"leadership at epoch {self.epoch} is over; etcd upkeep stopped")

    async def compact(self) -> None:
        if self.bounds.retention <= 0:
            return
        now = self.clock()
        _, revision = await self.store.range(self.keys.leader)
        self.samples.append((now, revision))
        target = compact_target(self.samples, now, self.bounds.retention)
        self.samples = [s for s in self.samples if s[0] > now - self.bounds.retention] or self.samples[-1:]
        if target <= self.compacted:
            return
        await self._fenced([])
        try:
            await self.store.compact(target)
        except StoreError as exc:
            if "compacted" not in str(exc):
                raise
            log.info("etcd upkeep: revision %d was already compacted (by etcd itself?)", target)
        self.compacted = target
        log.info("etcd upkeep: compacted to revision %d (%gs ago)", target, self.bounds.retention)

    async def defragment(self) -> None:
        maintenance = self.store
        if not isinstance(maintenance, Maintenance) or self.bounds.defrag_ratio <= 0:
            return  # the in-memory store has no members
        statuses = await maintenance.member_status()
        for status in statuses:
            if defrag_due(status, self.bounds.defrag_ratio, self.bounds.defrag_min):
                await self._fenced([])
                await maintenance.defragment(status.endpoint)
                self.defragmented.append(status.endpoint)
                self.events.emit(
                    "etcd.defragmented",
                    f"etcd member {status.endpoint} defragmented: {status.db_size_in_use} of "
                    f"{status.db_size} bytes were in use",
                )
                return  # one member per pass

    async def reap(self) -> None:
        self._reaped_at = self.clock()
        after, now = self.bounds.reap_after, self.wall()
        marks_kv, _ = await self.store.range(self.keys.down_all)
        nodes_kv, _ = await self.store.range(self.keys.nodes)
        events_kv, _ = await self.store.range(self.keys.events)
        tokens_kv, _ = await self.store.range(self.keys.tokens)
        marks = {self.keys.tail(kv.key, self.keys.down_all): _since(kv.value) for kv in marks_kv}
        newest: dict[str, float] = {}
        for kv in events_kv:
            event = _event(kv.value)
            if event is not None:
                newest[event.node] = max(newest.get(event.node, 0.0), event.time)
        registered = [self.keys.tail(kv.key, self.keys.nodes) for kv in nodes_kv]
        gone = sorted(gone_nodes(marks, newest, registered, now, after))
        tokens = stale_tokens(_tokens(tokens_kv), datetime.fromtimestamp(now, UTC), after)
        ops: list[Delete] = []
        for node in gone:
            if node in marks:
                ops.append(Delete(self.keys.down(node)))
        ops += [Delete(self.keys.token(t)) for t in tokens]
        self.reaped = [op.key for op in ops]
        if not ops:
            return
        await self._fenced(ops)
        if gone:
            log.info("etcd upkeep: forgot nodes gone for %gs: %s", after, ", ".join(gone))
        if tokens:
            log.info("etcd upkeep: deleted %d client token(s) revoked or expired long ago", len(tokens))


def _since(raw: bytes) -> float:
    """A down mark's `since` (wall clock); an unreadable mark counts as old."""
    try:
        return float(json.loads(raw).get("since", 0.0))
    except (ValueError, AttributeError, TypeError):
        return 0.0


def _event(raw: bytes) -> Event | None:
    try:
        return Event.from_json(raw)
    except (ValueError, TypeError, KeyError):
        return None


def _event_time(raw: bytes) -> float:
    event = _event(raw)
    return float(event.time) if event is not None else 0.0


def _tokens(kvs: Iterable[KV]) -> list[StoredToken]:
    out = []
    for kv in kvs:
        try:
            out.append(StoredToken.from_json(kv.value))
        except (ValueError, TypeError):
            continue
    return out
