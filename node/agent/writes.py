"""The agent's etcd writes, kept apart from its passes: latest value per key, retried.

A pass decides from what it knows locally (its assignments mirror, the runtime) and
hands what it wants in `status/` and `endpoints/` to a `WriteQueue`; it never waits
on etcd. `run` flushes the pending writes in transactions and retries a failed flush
(tenacity: exponential back-off, capped, for as long as the daemon lives), so during
an etcd outage the agent goes on restarting crashed containers and replacing unhealthy
ones, and what it saw is written once etcd answers again.

Guarantees:
- one pending operation per key, the latest one (a put replaced by a later put or
  delete, and so on): the queue is bounded by the number of keys the agent owns,
  however long the outage;
- puts are bound to the session's lease *at flush time*, and only flushed while the
  session holds a valid lease, so a write never lands on a lease that was replaced;
- an entry leaves the queue only once a flush that carried its latest value succeeded
  on the lease the session still holds (a newer value enqueued meanwhile stays pending,
  and so does everything when the lease was replaced during the flush: its puts died with
  the old lease); flushes never overlap, so an older value can never land after a newer one;
- a caller that must know a write is in etcd (a withdrawal before a stop) calls
  `flush` itself, under its own deadline, and checks `pending`.
"""

from __future__ import annotations

import asyncio
import logging

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from node.store import Delete, Put, Store, StoreError
from node.store.base import MAX_TXN_OPS, Op
from node.store.session import Session

log = logging.getLogger(__name__)

RETRY_MIN = 0.1  # s: the first wait after a failed flush
RETRY_MAX = 2.0  # s: the longest wait between flush attempts (an outage's end is seen this soon)


class WriteQueue:
    def __init__(self, store: Store, session: Session) -> None:
        self.store = store
        self.session = session
        self._pending: dict[str, bytes | None] = {}  # key -> value to put (None: delete)
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()  # one flush at a time: writes of one key never reorder
        self.failures = 0  # failed flush attempts, for logs and tests

    def put(self, key: str, value: bytes) -> None:
        self._pending[key] = value
        self._wake.set()

    def delete(self, key: str) -> None:
        self._pending[key] = None
        self._wake.set()

    def pending(self, key: str) -> bool:
        return key in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Write everything pending now (raises StoreError; nothing is lost then)."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        if not self.session.valid.is_set():
            raise StoreError("no valid etcd lease to write on")
        lease = self.session.lease
        batch = dict(self._pending)
        ops: list[Op] = [Delete(k) if v is None else Put(k, v, lease=lease) for k, v in batch.items()]
        for i in range(0, len(ops), MAX_TXN_OPS):
            await self.store.txn([], ops[i : i + MAX_TXN_OPS])
            # the lease replaced while this was in etcd: what it put dies with the old lease,
            # and the publisher's re-queue of the same bytes for the new one must not be taken
            # as written; those puts stay pending for the next flush (a delete holds anyway)
            replaced = self.session.lease != lease
            if replaced:
                self._wake.set()
            for op in ops[i : i + MAX_TXN_OPS]:
                if replaced and isinstance(op, Put):
                    continue
                if op.key in self._pending and self._pending[op.key] == batch[op.key]:
                    del self._pending[op.key]  # unchanged since: written

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(StoreError),
                wait=wait_exponential(multiplier=RETRY_MIN, min=RETRY_MIN, max=RETRY_MAX),
                before_sleep=self._failed,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    await self.flush()

    def _failed(self, state: RetryCallState) -> None:
        self.failures += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        if state.attempt_number == 1 or state.attempt_number % 30 == 0:
            log.warning("%d etcd write(s) pending, retrying: %s", len(self._pending), exc)
