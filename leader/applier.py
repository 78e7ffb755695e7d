"""Commits plans to `tasks/` in fenced, batched transactions.

Every transaction compares the leader key's create revision with our epoch
(a deposed leader's write fails) and each task key's mod revision with the one
the plan was computed from (a concurrent change makes the batch fail instead of
overwriting it; the next reconcile pass re-plans from fresh state). Batches stay
under etcd's per-transaction limit, and several are in flight at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from leader.scheduler import Plan
from node.model.keys import Keys
from node.store import Compare, Delete, Fenced, Put, Store, fence
from node.store.base import MAX_TXN_OPS, Op

PARALLEL = 8  # transactions in flight while committing


@dataclass(frozen=True)
class Write:
    op: Op
    expect_mod: int  # the key's mod revision the plan saw (0: absent)


def writes_for(plan: Plan, keys: Keys, seen: dict[str, int]) -> list[Write]:
    out: list[Write] = []
    for task in plan.stop:
        key = keys.task(task.service, task.slot)
        out.append(Write(Delete(key), seen.get(key, 0)))
    for task in plan.place:
        key = keys.task(task.service, task.slot)
        out.append(Write(Put(key, task.to_json()), seen.get(key, 0)))
    for claim in plan.claims:  # volume claims (leader.placement.volumes): any batch order is safe
        key = keys.volume(claim.service, claim.slot, claim.name)
        out.append(Write(Put(key, claim.to_json()), seen.get(key, 0)))
    return out


def _batches(writes: list[Write], size: int) -> Iterator[list[Write]]:
    for i in range(0, len(writes), size):
        yield writes[i : i + size]


class Applier:
    def __init__(self, store: Store, keys: Keys, epoch: int) -> None:
        self.store = store
        self.keys = keys
        self.epoch = epoch

    async def commit(
        self, writes: Iterable[Write], on_batch: Callable[[list[Write], int], None] | None = None
    ) -> tuple[int, int]:
        """Commit all writes; return (batches refused as stale, last revision written).
        `on_batch(batch, revision)` is told of each batch committed (its keys' mod revision).

        Up to `PARALLEL` transactions are in flight at once: a batch stands alone (its own
        fence and compares), so their order does not matter, and etcd's round trip, not
        the leader, is what bounds a large commit (100,000 tasks: 1,000 transactions).
        Raises `Fenced` when our epoch is no longer the leader's.
        """
        stale = revision = 0
        batches = _batches(list(writes), MAX_TXN_OPS)

        async def worker() -> None:
            nonlocal stale, revision
            for batch in batches:  # shared: each batch goes to one worker
                compares = [fence(self.keys.leader, self.epoch)]
                compares += [Compare(w.op.key, "mod", "==", w.expect_mod) for w in batch]
                result = await self.store.txn(compares, [w.op for w in batch])
                revision = max(revision, result.revision)
                if result.succeeded:
                    if on_batch is not None:
                        on_batch(batch, result.revision)
                    continue
                leader = await self.store.get(self.keys.leader)
                if leader is None or leader.create_revision != self.epoch:
                    raise Fenced(f"leadership at epoch {self.epoch} is over; write refused")
                stale += 1

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(PARALLEL):
                    tg.create_task(worker())
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None  # Fenced or StoreError, as callers expect
        return stale, revision

    async def delete_prefix(self, *prefixes: str) -> None:
        """Delete whole prefixes (a removed service's tasks and volume claims), fenced."""
        ops = [Delete(prefix, prefix=True) for prefix in prefixes]
        result = await self.store.txn([fence(self.keys.leader, self.epoch)], list(ops))
        if not result.succeeded:
            raise Fenced(f"leadership at epoch {self.epoch} is over; write refused")
