"""`EtcdStore` that counts: latency per operation, errors by kind, watch re-opens.

Plain numbers kept on the event loop (no prometheus-client here); the daemon's
`/metrics` collector (`node.daemon.collectors`) reads them when Prometheus scrapes.
A subclass, not a wrapper, so the daemon keeps one store object of the same type.

- `latency[op]`: a histogram per operation (get, range, put, delete, txn, grant,
  keepalive, revoke, compact), failed calls included; operations are a fixed set.
- `errors[(op, kind)]`: kind `unavailable` (etcd did not answer: `StoreUnavailable`),
  `refused` (etcd answered no: any other `StoreError`), `compacted` (a watch's history
  was gone), `cancelled` is not counted (the caller went away, not etcd).
- `watches`: watch streams asked for; `watch_opens`: streams opened, first ones and
  resumes after a dropped stream alike; `watch_opens - watches` are the reconnects.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from node.proxy.stats import Histogram
from node.store.base import KV, Compacted, Compare, Op, StoreError, StoreUnavailable, TxnResult, WatchBatch
from node.store.etcd import EtcdStore

T = TypeVar("T")

OPERATIONS = ("get", "range", "put", "delete", "txn", "grant", "keepalive", "revoke", "compact")


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, Compacted):
        return "compacted"
    if isinstance(exc, StoreUnavailable):
        return "unavailable"
    return "refused"


class StoreMeter:
    """The numbers (kept apart from the store so tests and fakes can use them too)."""

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {op: Histogram() for op in OPERATIONS}
        self.errors: Counter[tuple[str, str]] = Counter()
        self.watches = 0
        self.watch_opens = 0

    async def timed(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        start = time.monotonic()
        try:
            return await call()
        except StoreError as exc:
            self.errors[(op, error_kind(exc))] += 1
            raise
        finally:
            self.latency[op].observe(time.monotonic() - start)

    @property
    def watch_reconnects(self) -> int:
        return max(0, self.watch_opens - self.watches)


class MeteredEtcdStore(EtcdStore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter = StoreMeter()

    async def get(self, key: str) -> KV | None:
        return await self.meter.timed("get", lambda: super(MeteredEtcdStore, self).get(key))

    async def range(self, prefix: str, revision: int = 0) -> tuple[list[KV], int]:
        return await self.meter.timed("range", lambda: super(MeteredEtcdStore, self).range(prefix, revision))

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        return await self.meter.timed("put", lambda: super(MeteredEtcdStore, self).put(key, value, lease))

    async def delete(self, key: str, prefix: bool = False) -> int:
        return await self.meter.timed("delete", lambda: super(MeteredEtcdStore, self).delete(key, prefix))

    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], else_ops: Sequence[Op] = ()
    ) -> TxnResult:
        return await self.meter.timed(
            "txn", lambda: super(MeteredEtcdStore, self).txn(compares, ops, else_ops)
        )

    async def grant(self, ttl: int) -> int:
        return await self.meter.timed("grant", lambda: super(MeteredEtcdStore, self).grant(ttl))

    async def keepalive(self, lease: int) -> int:
        return await self.meter.timed("keepalive", lambda: super(MeteredEtcdStore, self).keepalive(lease))

    async def revoke(self, lease: int) -> None:
        await self.meter.timed("revoke", lambda: super(MeteredEtcdStore, self).revoke(lease))

    async def compact(self, revision: int) -> None:
        await self.meter.timed("compact", lambda: super(MeteredEtcdStore, self).compact(revision))

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        self.meter.watches += 1
        try:
            async for batch in super().watch(prefix, start_revision):
                yield batch
        except StoreError as exc:
            self.meter.errors[("watch", error_kind(exc))] += 1
            raise

    def _open_watch(self, prefix: str, start_revision: int) -> grpc.aio.StreamStreamCall:
        self.meter.watch_opens += 1
        return super()._open_watch(prefix, start_revision)
