"""Commits plans to `tasks/` in fenced, batched transactions.

Every transaction compares the leader key's create revision with our epoch
(a deposed leader's write fails) and each task key's mod revision with the one
the plan was computed from (a concurrent change makes the batch fail instead of
overwriting it; the next reconcile pass re-plans from fresh state). Batches stay
under etcd's per-transaction limit, and several are in flight at once.

A service's writes of one pass (its tasks, and the rollout record that lets their
slots be updated: `Write.group`) go in ONE transaction: split, a crash, an etcd error
or a stale compare could commit the updated tasks without the record that tracks them,
and a slot the record does not track is never monitored (its new replica could
crash-loop and the rollout still complete, with no rollback). A group too large for
one transaction (a rollout of ~50 slots or more in one pass) is split; its `lead`
write (the record) is then in its first batch, committed before the group's others:
a record without its tasks is repaired by the next pass (it places its slots again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from leader.scheduler import Plan
from node.model.keys import Keys
from node.store import Compare, Delete, Fenced, Put, Store, fence
from node.store.base import MAX_TXN_OPS, Op

PARALLEL = 8  # transactions in flight while committing


@dataclass(frozen=True)
class Write:
    op: Op
    expect_mod: int  # the key's mod revision the plan saw (0: absent)
    group: str = ""  # writes of one group go in one transaction (module doc); "": any batch
    lead: bool = False  # a split group's write to commit before the group's others


def writes_for(plan: Plan, keys: Keys, seen: dict[str, int]) -> list[Write]:
    out: list[Write] = []
    group = plan.service
    for task in plan.stop:
        key = keys.task(task.service, task.slot)
        out.append(Write(Delete(key), seen.get(key, 0), group))
    for task in plan.place:
        key = keys.task(task.service, task.slot)
        out.append(Write(Put(key, task.to_json()), seen.get(key, 0), group))
    for claim in plan.claims:  # volume claims (leader.placement.volumes): any batch order is safe
        key = keys.volume(claim.service, claim.slot, claim.name)
        out.append(Write(Put(key, claim.to_json()), seen.get(key, 0), group))
    return out


def batches(writes: list[Write], size: int) -> tuple[list[list[Write]], list[list[Write]]]:
    """(first, then): the batches of at most `size` writes to commit, `first` before `then`.
    Each group is whole in one batch when it fits; one that does not is split, its lead
    writes in its first batch, which goes in `first`. Pure."""
    groups: dict[str, list[Write]] = {}
    for w in writes:
        groups.setdefault(w.group, []).append(w)
    first: list[list[Write]] = []
    then: list[list[Write]] = []
    loose = groups.pop("", [])
    current: list[Write] = []
    for ws in groups.values():
        if len(ws) > size:
            ordered = sorted(ws, key=lambda w: not w.lead)  # stable: the leads first
            chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)]
            (first if chunks[0][0].lead else then).append(chunks[0])
            then.extend(chunks[1:])
            continue
        if len(current) + len(ws) > size:
            then.append(current)
            current = []
        current.extend(ws)
    for w in loose:  # any batch: they fill the last one up
        if len(current) == size:
            then.append(current)
            current = []
        current.append(w)
    if current:
        then.append(current)
    return first, then


@dataclass
class _Tally:
    stale: int = 0  # batches refused as stale
    revision: int = 0  # the last revision written
    failed_groups: set[str] = field(default_factory=set)  # groups of the stale batches


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
        first, then = batches(list(writes), MAX_TXN_OPS)
        tally = _Tally()
        await self._commit(first, on_batch, tally)
        # a split group whose lead batch did not commit: its other batches are not sent
        # (tasks without the record that tracks them); stale, the next pass plans again
        sent = [b for b in then if not (b[0].group and b[0].group in tally.failed_groups)]
        tally.stale += len(then) - len(sent)
        await self._commit(sent, on_batch, tally)
        return tally.stale, tally.revision

    async def _commit(
        self, phase: list[list[Write]], on_batch: Callable[[list[Write], int], None] | None, tally: _Tally
    ) -> None:
        todo = iter(phase)

        async def worker() -> None:
            for batch in todo:  # shared: each batch goes to one worker
                compares = [fence(self.keys.leader, self.epoch)]
                compares += [Compare(w.op.key, "mod", "==", w.expect_mod) for w in batch]
                result = await self.store.txn(compares, [w.op for w in batch])
                tally.revision = max(tally.revision, result.revision)
                if result.succeeded:
                    if on_batch is not None:
                        on_batch(batch, result.revision)
                    continue
                leader = await self.store.get(self.keys.leader)
                if leader is None or leader.create_revision != self.epoch:
                    raise Fenced(f"leadership at epoch {self.epoch} is over; write refused")
                tally.stale += 1
                tally.failed_groups.update(w.group for w in batch)

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(PARALLEL):
                    tg.create_task(worker())
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None  # Fenced or StoreError, as callers expect

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete these keys, fenced, in transactions of at most MAX_TXN_OPS."""
        for i in range(0, len(keys), MAX_TXN_OPS):
            ops = [Delete(key) for key in keys[i : i + MAX_TXN_OPS]]
            result = await self.store.txn([fence(self.keys.leader, self.epoch)], list(ops))
            if not result.succeeded:
                raise Fenced(f"leadership at epoch {self.epoch} is over; write refused")

    async def delete_prefix(self, *prefixes: str) -> None:
        """Delete whole prefixes (a removed service's tasks and volume claims), fenced."""
        ops = [Delete(prefix, prefix=True) for prefix in prefixes]
        result = await self.store.txn([fence(self.keys.leader, self.epoch)], list(ops))
        if not result.succeeded:
            raise Fenced(f"leadership at epoch {self.epoch} is over; write refused")
