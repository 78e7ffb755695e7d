"""The leader's automatic rollback: derived from what is stored, written in one transaction.

A rollout whose failure action is `rollback` ends `failed` (`leader.rollout`). Its
rollback is then *due* for as long as the stored state says so:

    `rollouts/<svc>` is `failed`, and `services/<svc>` still holds that rollout's
    `to_version` (with its target template)

(`leader.rollout.rollback_due`). `leader.updates.decide` lists every such record on
every pass, whether the rollout failed in this very pass or an earlier leader stored
the failure and died before the rollback. `write` then commits, in ONE fenced
transaction: the failed rollout record, the service's new version (the spec of
`from_version`, its replica count kept), that version's history entry and the failed
version's outcome. All of it is in etcd or none is: a crash, a deposed leader or an
etcd error before or after the transaction leaves a state the next pass (of this
leader or the next) completes. Exactly once: the transaction compares the service
key's mod revision with the one the decision was made from, and once the new version
is stored the rollback is no longer due.

A rollback that cannot be done (the good version's history entry is gone) pauses the
record with a message saying so, and the failed version's outcome with it (`paused`),
reported once, not retried on every pass.

`write` is the one place the leader writes a service spec, so the published ports and
ingress routes of the good version are claimed there, in the same transaction
(`node.store.claims`); one another service took meanwhile refuses the rollback
(`Refused`, an event names the owner). So are its secret and config references
(`node.security.object_refs`, as the API's writes): each takes its object's current
revision, compared in the transaction; one removed since refuses the rollback too, so
no stored spec names an object that is not there (docs/secrets.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from enum import StrEnum

from leader.rollout import RolloutState
from node.model.domain import RolloutRecord, ServiceRecord
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.model.spec_job import rollback_replicas
from node.security.object_refs import bind_references
from node.store import KV, Compare, Fenced, Put, Store, claim_kinds, fence
from node.store.base import Op
from node.store.claims import Taken, service_writes


class Outcome(StrEnum):
    WRITTEN = "written"  # the rollback is stored
    STALE = "stale"  # something changed since the decision: the next pass decides again
    IMPOSSIBLE = "impossible"  # the good version is gone: the record is paused instead


@dataclass(frozen=True)
class Txn:
    compares: list[Compare]
    ops: list[Op]
    record: ServiceRecord | None = None  # the new service version, when the rollback is possible


def plan(
    keys: Keys,
    failed: RolloutRecord,
    current: KV,
    rollout_mod: int,
    good: KV | None,
    bad: KV | None,
    now: float,
) -> Txn:
    """The compares and writes that roll `failed` back, from the service key as the decision
    saw it (`current`), the rollout key's mod revision (`rollout_mod`, 0: absent) and the
    history entries of the good (`from_version`) and bad (`to_version`) versions; pure."""
    name = failed.service
    rollout_key = keys.rollout(name)
    compares = [Compare(rollout_key, "mod", "==", rollout_mod)]
    if good is None:
        paused = replace(
            failed,
            state=RolloutState.PAUSED.value,
            updated_at=now,
            message=f"{failed.message}; rollback impossible: version {failed.from_version} is no "
            f"longer in the history (apply a fixed spec)",
        )
        ops: list[Op] = [Put(rollout_key, paused.to_json())]
        if bad is not None:  # its outcome, as any rollout that ends (`leader.rollout_end`)
            outcome = replace(ServiceRecord.from_json(bad.value), outcome=RolloutState.PAUSED.value)
            compares.append(Compare(bad.key, "mod", "==", bad.mod_revision))
            ops.append(Put(bad.key, outcome.to_json()))
        return Txn(compares, ops)
    running = ServiceRecord.from_json(current.value)
    # roll back what runs, not how many (a job has none to keep: `rollback_replicas`)
    target = ServiceRecord.from_json(good.value).spec
    spec = target.model_copy(update={"replicas": rollback_replicas(target, running.spec)})
    record = replace(
        running,
        version=running.version + 1,
        spec=spec,
        updated_at=now,
        updated_by=f"leader (rollback of {failed.to_version})",
        rollback_of=failed.to_version,
        outcome="",
    )
    compares.append(Compare(current.key, "mod", "==", current.mod_revision))
    ops = [
        Put(rollout_key, failed.to_json()),
        Put(current.key, record.to_json()),
        Put(keys.history_version(name, record.version), record.to_json()),
    ]
    if bad is not None:
        outcome = replace(ServiceRecord.from_json(bad.value), outcome=RolloutState.FAILED.value)
        compares.append(Compare(bad.key, "mod", "==", bad.mod_revision))
        ops.append(Put(bad.key, outcome.to_json()))
    return Txn(compares, ops, record)


class Refused(FailedPrecondition):
    """The good version cannot be stored as it is now: it publishes a port or routes an
    ingress (host, path) another service took meanwhile (`owner`), or it references a
    secret or config removed since. Nothing is written, the rollout stays failed on the
    current version, an event says why, and every pass tries again (the object made
    again, the port freed: the rollback goes through)."""

    def __init__(self, why: str, owner: str = "") -> None:
        super().__init__(f"the previous version: {why}")
        self.owner = owner


async def write(
    store: Store, keys: Keys, epoch: int, failed: RolloutRecord, current: KV, rollout_mod: int
) -> Outcome | Refused:
    """Roll `failed` back in one fenced transaction (see the module docstring), with the port
    and route claims of the good version (`node.store.claims`) in it. Raises `Fenced` when our epoch no longer
    leads, `StoreError` when etcd does not answer."""
    name = failed.service
    running = ServiceRecord.from_json(current.value)
    if running.version != failed.to_version or running.uid != failed.uid:
        return Outcome.STALE  # the mirror moved on since the decision (a newer apply, a new namesake)
    good = await store.get(keys.history_version(name, failed.from_version))
    bad = await store.get(keys.history_version(name, failed.to_version))
    txn = plan(keys, failed, current, rollout_mod, good, bad, time.time())
    compares, ops = [fence(keys.leader, epoch), *txn.compares], list(txn.ops)
    if txn.record is not None:
        try:
            refs, bound = await bind_references(store, keys, txn.record.spec)
        except FailedPrecondition as exc:  # a secret or config of the good version is gone
            return Refused(str(exc))
        if refs:  # each reference at its object's revision now, compared in the transaction
            record = replace(txn.record, spec=txn.record.spec.model_copy(update=refs))
            record_ops = {keys.service(name), keys.history_version(name, record.version)}
            ops = [
                Put(op.key, record.to_json()) if isinstance(op, Put) and op.key in record_ops else op
                for op in ops
            ]
            txn = replace(txn, record=record)
        compares += bound.compares
        ops += bound.ops
        assert txn.record is not None
        try:
            claims = await service_writes(
                store, keys, claim_kinds.ALL, name, running.uid, running.spec, txn.record.spec, time.time()
            )
        except Taken as exc:
            return Refused(str(exc), exc.owner)
        compares += claims.compares
        ops += claims.ops
    result = await store.txn(compares, ops)
    if not result.succeeded:
        leader = await store.get(keys.leader)
        if leader is None or leader.create_revision != epoch:
            raise Fenced(f"leadership at epoch {epoch} is over; rollback of {name} not written")
        return Outcome.STALE
    return Outcome.WRITTEN if txn.record is not None else Outcome.IMPOSSIBLE
