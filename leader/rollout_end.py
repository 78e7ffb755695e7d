"""A rollout that ends is stored with its version's outcome, in one fenced transaction.

When a pass steps a rollout into an end state (`completed`, `rolled_back`, `paused`, or
`failed` without a rollback to follow), `history/<svc>/<version>` gets that state as its
`outcome`. The rollout record and the outcome go in ONE transaction: written one after
the other, a leader that died between the two, an etcd error or a stale task batch in
between left the record ended and the outcome empty for good (the next pass sees the
record already ended and has nothing to do), and a reader could see the rollout
`rolled_back` while `shoal history` still showed no outcome.

The transaction compares the rollout key's and the history entry's mod revisions with
the ones the pass saw: a concurrent change (a new apply) makes it fail, nothing is
written, and the next pass decides again from what is stored. A failed rollout whose
rollback is due is not written here: `leader.rollback` writes it with the rollback.
"""

from __future__ import annotations

from dataclasses import replace

from leader.rollout import RolloutState
from node.model.domain import RolloutRecord, ServiceRecord
from node.model.keys import Keys
from node.store import Compare, Fenced, Put, Store, fence


def ends(before: RolloutRecord | None, record: RolloutRecord) -> bool:
    """Whether writing `record` over `before` ends a rollout (its outcome is due); pure."""
    if RolloutState(record.state).active:
        return False
    return before is None or (before.state, before.to_version) != (record.state, record.to_version)


async def write(store: Store, keys: Keys, epoch: int, record: RolloutRecord, rollout_mod: int) -> bool:
    """Store the ended `record` and its version's outcome together; False: stale (nothing
    written). Raises `Fenced` when our epoch no longer leads, `StoreError` when etcd does
    not answer (nothing or all of it is written; the next pass finds out which)."""
    rollout_key = keys.rollout(record.service)
    compares = [fence(keys.leader, epoch), Compare(rollout_key, "mod", "==", rollout_mod)]
    ops = [Put(rollout_key, record.to_json())]
    entry = await store.get(keys.history_version(record.service, record.to_version))
    if entry is not None:  # gone (pruned history): the record alone
        version = replace(ServiceRecord.from_json(entry.value), outcome=record.state)
        compares.append(Compare(entry.key, "mod", "==", entry.mod_revision))
        ops.append(Put(entry.key, version.to_json()))
    result = await store.txn(compares, ops)
    if result.succeeded:
        return True
    leader = await store.get(keys.leader)
    if leader is None or leader.create_revision != epoch:
        raise Fenced(f"leadership at epoch {epoch} is over; end of {record.service}'s rollout not written")
    return False
