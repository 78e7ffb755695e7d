"""A service spec's references to secrets and configs, bound for the transaction that
stores the spec: each reference takes its object's current revision, the transaction
compares each object's mod revision (a `secret rm` or update between the read and the
write makes it fail, and the writer reads again) and records the use (`objuse/`, which
`secret rm` reads to refuse removing an object in use).

Every writer of a spec binds through here: the API's apply and rollback
(`node.api.objects.Objects.bind`) and the leader's automatic rollback
(`leader.rollback`), so a stored spec never names an object that is not there, and a
reference's revision is the object's at that write (a namesake made later has another).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.security.objects import ObjectRecord
from node.store import Compare, Put, Store
from node.store.base import Op

FIELDS = {"secret": "secrets", "config": "configs"}
"""The spec field of each kind of object."""


@dataclass
class Bound:
    """What a service write adds to its transaction for the objects it references."""

    compares: list[Compare] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)


async def bind_references(
    store: Store,
    keys: Keys,
    spec: ServiceSpec,
    pending: Mapping[tuple[str, str], ObjectRecord] | None = None,
) -> tuple[dict[str, object], Bound]:
    """The spec fields to update (references with their objects' current revisions) and
    what the write's transaction adds. `pending`: (kind, name) -> the record a stack deploy
    writes in the same transaction (decision 72): a reference to it takes that revision.
    FailedPrecondition naming every missing object (and how to make it) when one is gone."""
    pending = pending or {}
    update: dict[str, object] = {}
    bound, missing = Bound(), []
    uses_: dict[str, Put] = {}
    for kind, fieldname in FIELDS.items():
        refs = getattr(spec, fieldname) or []
        fresh = []
        for i, ref in enumerate(refs):
            key = keys.object(kind, ref.source)
            use = keys.object_use(kind, ref.source)
            if (own := pending.get((kind, ref.source))) is not None:
                fresh.append(ref.model_copy(update={"revision": own.revision}))
                uses_[use] = Put(use, spec.name.encode())
                continue
            kv = await store.get(key)
            if kv is None:
                missing.append(
                    f"{fieldname}[{i}].source: {kind} '{ref.source}' does not exist; create it first "
                    f"(`shoal {kind} create {ref.source} -f FILE`; `shoal {kind} ls` lists them)"
                )
                continue
            record = ObjectRecord.from_json(kv.value)
            fresh.append(ref.model_copy(update={"revision": record.revision}))
            bound.compares.append(Compare(key, "mod", "==", kv.mod_revision))
            uses_[use] = Put(use, spec.name.encode())
        if refs:
            update[fieldname] = fresh
    if spec.image_pull_secret:  # issue 13: held like a secret reference, not mounted
        key = keys.object("secret", spec.image_pull_secret)
        use = keys.object_use("secret", spec.image_pull_secret)
        ours = ("secret", spec.image_pull_secret) in pending
        kv = None if ours else await store.get(key)
        if kv is None and not ours:
            missing.append(f"image_pull_secret: secret '{spec.image_pull_secret}' does not exist")
        else:
            if kv is not None:
                bound.compares.append(Compare(key, "mod", "==", kv.mod_revision))
            uses_[use] = Put(use, spec.name.encode())
    if missing:
        raise FailedPrecondition(f"service '{spec.name}' not written: " + "; ".join(missing))
    bound.ops.extend(uses_.values())
    return update, bound
