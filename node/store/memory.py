"""`MemoryStore`: an in-memory `Store` with etcd's semantics, for unit tests and simulations.

Pure: no etcd, grpc or docker import. What it guarantees, as etcd (3.4) does, and
as tests/unit/test_store_contract.py checks against both stores:
- one global revision, starting at 1, incremented once per write: a `put`, a `delete`
  that removed something, a transaction that changed something, a lease that was
  revoked or expired with keys on it. A write that changes nothing keeps the revision.
- every key has a create revision, a mod revision and a version (1 on creation);
  deleting a key forgets them, so a re-created key gets a new create revision.
- `txn` evaluates every `Compare` on the state before it, then runs the success or
  the failure branch. A missing key has create = mod = version = 0; a *value*
  comparison on a missing key always fails (etcd has no "missing value"). A branch
  that puts one key twice, or puts a key it also deletes, is refused (`StoreError`),
  as are branches of more than 128 operations and puts on a lease that does not exist;
  a write of more key and value bytes than etcd takes (`MAX_REQUEST_BYTES`) is `TooLarge`.
- leases expire on the injected `clock`: `expire_leases()` deletes the keys of every
  expired lease (one revision per lease) and runs at the start of every call.
  `keepalive` returns the TTL, or 0 when the lease is gone.
- `watch(prefix, start)` replays kept history from `start` (0: from now on), one
  `WatchBatch` per revision, then follows new writes. History before the compacted
  revision is gone: a watch that needs it raises `Compacted` (at start, or when a slow
  consumer falls behind a `compact`). A delete event carries the key and the
  revision of the delete only.
- `unavailable = True` makes every call raise `StoreUnavailable` (an etcd outage);
  a watch already running then just sees no writes, as a reconnecting client would.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.store.base import (
    KV,
    Compacted,
    Compare,
    Delete,
    Op,
    Put,
    StoreError,
    StoreUnavailable,
    TxnResult,
    WatchBatch,
    WatchEvent,
    check_size,
)

MAX_OPS = 128  # etcd's default --max-txn-ops


@dataclass
class _Lease:
    ttl: int
    expires_at: float
    keys: set[str] = field(default_factory=set)


def _holds(kv: KV | None, c: Compare) -> bool:
    if c.target == "value":
        if kv is None:
            return False  # etcd: a value comparison on a missing key always fails
        expected = c.value if isinstance(c.value, bytes) else str(c.value).encode()
        return _compare(kv.value, c.op, expected)
    revisions = {"create": kv.create_revision, "mod": kv.mod_revision, "version": kv.version} if kv else {}
    return _compare(revisions.get(c.target, 0), c.op, int(c.value))


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "==":
        return bool(actual == expected)
    if op == "!=":
        return bool(actual != expected)
    return bool(actual < expected if op == "<" else actual > expected)


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoints = "memory"
        self.clock = clock
        self.unavailable = False
        self.revision = 1
        self.compacted = 0
        self.history: list[WatchBatch] = []  # one batch per revision, oldest first
        self._kvs: dict[str, KV] = {}
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x5E0A1)
        self._changed = asyncio.Event()

    # -- internals ------------------------------------------------------------------------

    def _check(self) -> None:
        if self.unavailable:
            raise StoreUnavailable(f"etcd unreachable at {self.endpoints}: MemoryStore.unavailable is set")
        self.expire_leases()

    def _matching(self, key: str, prefix: bool, end: str = "") -> list[str]:
        if prefix:
            return sorted(k for k in self._kvs if k.startswith(key))
        if end:
            return sorted(k for k in self._kvs if key <= k < end)
        return [key] if key in self._kvs else []

    def _commit(self, ops: Sequence[Op]) -> int:
        """Apply `ops` (already validated) as one revision; return the revision."""
        rev = self.revision + 1
        events: list[WatchEvent] = []
        for op in ops:
            if isinstance(op, Put):
                old = self._kvs.get(op.key)
                if old is not None and old.lease in self._leases:
                    self._leases[old.lease].keys.discard(op.key)
                created, version = (old.create_revision, old.version + 1) if old else (rev, 1)
                kv = KV(op.key, op.value, created, rev, version, op.lease)
                if op.lease:
                    self._leases[op.lease].keys.add(op.key)
                self._kvs[op.key] = kv
                events.append(WatchEvent("put", kv))
                continue
            for key in self._matching(op.key, op.prefix, op.end):
                old = self._kvs.pop(key)
                if old.lease in self._leases:
                    self._leases[old.lease].keys.discard(key)
                events.append(WatchEvent("delete", KV(key, b"", 0, rev, 0)))
        if events:
            self.revision = rev
            self.history.append(WatchBatch(rev, tuple(events)))
            self._changed.set()
            self._changed = asyncio.Event()
        return self.revision

    def _validate(self, ops: Sequence[Op]) -> None:
        if len(ops) > MAX_OPS:
            raise StoreError(f"too many operations in txn request ({len(ops)} > {MAX_OPS})")
        puts = [op.key for op in ops if isinstance(op, Put)]
        if len(set(puts)) != len(puts):
            raise StoreError("duplicate key given in txn request")
        deletes = [op for op in ops if isinstance(op, Delete)]
        if any(
            k == d.key or (d.prefix and k.startswith(d.key)) or (d.end and d.key <= k < d.end)
            for d in deletes
            for k in puts
        ):
            raise StoreError("duplicate key given in txn request")
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise StoreError(f"requested lease not found: {op.lease:x}")

    # -- test hooks -----------------------------------------------------------------------

    def expire_leases(self) -> None:
        """Revoke every lease whose TTL has run out on `clock` (deleting its keys)."""
        now = self.clock()
        for lease_id in sorted(i for i, lease in self._leases.items() if lease.expires_at <= now):
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id)
        self._commit([Delete(k) for k in sorted(lease.keys)])

    # -- the Store protocol ---------------------------------------------------------------

    async def connect(self) -> None:
        self._check()

    async def close(self) -> None:
        pass

    async def ping(self, timeout: float = 3.0) -> None:
        self._check()

    async def get(self, key: str) -> KV | None:
        self._check()
        return self._kvs.get(key)

    async def range(self, prefix: str) -> tuple[list[KV], int]:
        self._check()
        return [self._kvs[k] for k in self._matching(prefix, True)], self.revision

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._check()
        check_size((), [Put(key, value)])
        self._validate([Put(key, value, lease)])
        return self._commit([Put(key, value, lease)])

    async def delete(self, key: str, prefix: bool = False) -> int:
        self._check()
        count = len(self._matching(key, prefix))
        self._commit([Delete(key, prefix)])
        return count

    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], else_ops: Sequence[Op] = ()
    ) -> TxnResult:
        self._check()
        if len(compares) > MAX_OPS:
            raise StoreError(f"too many operations in txn request ({len(compares)} > {MAX_OPS})")
        check_size(compares, ops, else_ops)
        self._validate(ops)
        self._validate(else_ops)
        ok = all(_holds(self._kvs.get(c.key), c) for c in compares)
        return TxnResult(ok, self._commit(ops if ok else else_ops))

    async def grant(self, ttl: int) -> int:
        self._check()
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = _Lease(ttl, self.clock() + ttl)
        return lease_id

    async def keepalive(self, lease: int) -> int:
        self._check()
        found = self._leases.get(lease)
        if found is None:
            return 0
        found.expires_at = self.clock() + found.ttl
        return found.ttl

    async def revoke(self, lease: int) -> None:
        self._check()
        if lease in self._leases:
            self._drop_lease(lease)

    async def compact(self, revision: int) -> None:
        self._check()
        if revision > self.revision:
            raise StoreError(f"required revision {revision} is a future revision")
        if revision <= self.compacted:
            raise StoreError(f"required revision {revision} has been compacted")
        self.compacted = revision
        self.history = [b for b in self.history if b.revision >= revision]

    async def snapshot(self) -> AsyncIterator[bytes]:
        """Only etcd makes a snapshot `etcdctl snapshot restore` can read."""
        self._check()
        raise StoreError("a backup needs etcd: the in-memory store has no snapshot")
        yield b""  # an async generator, like etcd's

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        self._check()
        next_rev = start_revision if start_revision > 0 else self.revision + 1
        while True:
            if next_rev < self.compacted:
                raise Compacted(self.compacted)
            changed = self._changed
            start = bisect.bisect_left(self.history, next_rev, key=lambda b: b.revision)
            for batch in self.history[start:]:
                next_rev = batch.revision + 1
                events = tuple(ev for ev in batch.events if ev.kv.key.startswith(prefix))
                if events:
                    yield WatchBatch(batch.revision, events)
                if next_rev < self.compacted:
                    raise Compacted(self.compacted)
            await changed.wait()
