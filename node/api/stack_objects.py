"""A stack's own secrets and configs, written in the stack's transaction (decision 72).

`stack deploy -c` sends the values of the Compose file's `file:` / `environment:`
secrets and configs (named `<stack>_<name>`) with the stack. `node.api.stacks` adds what
this module plans to the one etcd transaction that writes the services, so the objects
and the services that use them are written together or not at all:

- `plan_writes`: each object's next record (`node.api.objects.next_record`: sealed, a new
  revision only when the value changed) with its compares: a changed object compares
  its key and its use key (`objuse/`), as `PutObject` does; an unchanged one its key only,
  and puts nothing. The records are handed to the services' binding as `pending`, so a
  service takes the revision written in the same transaction.
- Ownership: a record written here carries `stack` (`ObjectRecord.stack`). A name held by
  an object of no stack (`shoal secret create`) or of another stack is refused, naming
  it, and nothing is written; except an object of no stack that only this stack's services
  use (written by an older CLI through `PutObject`), which is adopted, its revision kept.
- `roll_outside`: a service outside the stack that uses a changed object gets a new
  version too, as `PutObject` would give it.
- `prune`: the stack's objects that are not declared any more and that no service uses
  after the write are deleted (with their use keys, compared); `stack rm` calls it with
  nothing declared. One that a service outside the stack still uses is kept. A record
  that cannot be read (`node.api.objects.UnreadableObject`) is logged and left alone: its
  owner is unknown, and it blocks no deploy or rm of any stack. One the deploy declares is
  refused, naming it (the deploy would overwrite what it cannot tell is the stack's).

No value is in any message, repr or change: names, sizes and revisions only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from node.api.objects import (
    EMPTY_SECRET,
    Objects,
    UnreadableObject,
    VersionWriter,
    check_object_name,
    next_record,
    read_object,
    readable_objects,
    uses,
)
from node.model.domain import ServiceRecord
from node.model.errors import FailedPrecondition, InvalidArgument
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.security.object_refs import FIELDS
from node.security.objects import KINDS, MAX_BYTES, ObjectRecord
from node.store import Compare, Delete, Put
from node.store.base import Op

MAX_OBJECTS = 64  # objects in one stack deploy (each is at least one operation)
MAX_WRITE_BYTES = 1024 * 1024  # stored bytes one deploy may put; etcd takes 1.5 MiB per request
_FIELD = FIELDS


@dataclass(frozen=True)
class StackObject:
    """A secret or config sent with a stack deploy; `value` is never shown."""

    kind: str
    name: str  # <stack>_<name>
    value: bytes = field(repr=False)


@dataclass(frozen=True)
class ObjectChange:
    kind: str
    name: str
    action: str  # created | updated | unchanged | removed | kept
    size: int
    revision: str = ""


@dataclass
class ObjectPlan:
    pending: dict[tuple[str, str], ObjectRecord] = field(default_factory=dict)
    changed: dict[tuple[str, str], ObjectRecord] = field(default_factory=dict)  # a new revision
    compares: list[Compare] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    changes: list[ObjectChange] = field(default_factory=list)


def check_objects(stack: str, objects: Sequence[StackObject]) -> None:
    """Refuse what no store read can make right: kind, name (`<stack>_...`), duplicates,
    sizes, count. Messages name the object, never its value."""
    if len(objects) > MAX_OBJECTS:
        raise InvalidArgument(
            f"objects: {len(objects)} secrets and configs in one stack; the limit is {MAX_OBJECTS}"
        )
    seen: set[tuple[str, str]] = set()
    problems = []
    for i, o in enumerate(objects):
        where = f"objects[{i}]"
        try:
            check_object_name(o.kind, o.name)
        except InvalidArgument as exc:
            problems.append(f"{where}.{exc}")
            continue
        if not o.name.startswith(f"{stack}_"):
            problems.append(f"{where}.name: {o.name!r} is not a name of stack '{stack}' ({stack}_<name>)")
        elif (o.kind, o.name) in seen:
            problems.append(f"{where}.name: {o.kind} {o.name!r} is given twice")
        elif len(o.value) > MAX_BYTES:
            problems.append(f"{where}: {o.kind} {o.name!r} has {len(o.value)} bytes; the limit is 500 KiB")
        elif not o.value and o.kind == "secret":
            problems.append(f"{where}: {EMPTY_SECRET.format(name=o.name)}")
        seen.add((o.kind, o.name))
    if problems:
        raise InvalidArgument(f"stack '{stack}': " + "; ".join(problems))


async def plan_writes(
    objects: Objects, stack: str, asked: Sequence[StackObject], services: Iterable[ServiceRecord]
) -> ObjectPlan:
    """The records, compares and puts of the stack's objects (see the module's doc)."""
    plan = ObjectPlan()
    if not asked:
        return plan
    every = list(services)
    sealer = objects._sealer("a secret") if any(o.kind == "secret" for o in asked) else None
    for o in asked:
        key, use_key = objects.keys.object(o.kind, o.name), objects.keys.object_use(o.kind, o.name)
        kv = await objects.store.get(key)
        try:
            old = read_object(o.kind, o.name, kv.value) if kv is not None else None
        except UnreadableObject as exc:
            raise FailedPrecondition(f"stack '{stack}': {exc}; nothing was written") from None
        adopt = old is not None and old.stack != stack
        if old is not None and adopt:
            _may_adopt(stack, old, [s for s in every if uses(s.spec, o.kind, o.name)])
            old = replace(old, stack=stack)
        record = next_record(o.kind, o.name, o.value, old, sealer if o.kind == "secret" else None, stack)
        plan.pending[(o.kind, o.name)] = record
        if kv is not None and record is old:  # the stored value
            plan.compares.append(Compare(key, "mod", "==", kv.mod_revision))
            if adopt:
                plan.ops.append(Put(key, record.to_json()))  # its owner only: no new revision
            plan.changes.append(ObjectChange(o.kind, o.name, "unchanged", record.size, record.revision))
            continue
        use = await objects.store.get(use_key)
        plan.compares += [
            Compare(key, "mod", "==", kv.mod_revision) if kv else Compare(key, "create", "==", 0),
            Compare(use_key, "mod", "==", use.mod_revision if use else 0),
        ]
        plan.ops.append(Put(key, record.to_json()))
        plan.changed[(o.kind, o.name)] = record
        action = "updated" if kv is not None else "created"
        plan.changes.append(ObjectChange(o.kind, o.name, action, record.size, record.revision))
    written = sum(len(op.value) for op in plan.ops if isinstance(op, Put))
    if written > MAX_WRITE_BYTES:
        raise InvalidArgument(
            f"stack '{stack}': its secrets and configs to write take {written // 1024} KiB stored, more "
            f"than one etcd transaction takes ({MAX_WRITE_BYTES // 1024} KiB); create the largest with "
            "`shoal secret create` / `shoal config create` and declare them `external: true`"
        )
    return plan


def _may_adopt(stack: str, old: ObjectRecord, users: list[ServiceRecord]) -> None:
    """An object of no stack that only this stack's services use came from an older CLI's
    `PutObject` for this stack: adopted. Anything else is someone else's: refused."""
    if not old.stack and users and all(s.spec.stack == stack for s in users):
        return
    owner = f"stack '{old.stack}'" if old.stack else f"`shoal {old.kind} create`"
    used = f", used by {', '.join(sorted(s.name for s in users))}" if users else ""
    raise FailedPrecondition(
        f"{old.kind} '{old.name}' exists and belongs to {owner}{used}, not to stack '{stack}': the "
        f"deploy would overwrite it. Declare it `external: true` in the Compose file to use it as it "
        f"is, or remove it first (`shoal {old.kind} rm {old.name}`); nothing was written"
    )


def roll_outside(
    writer: VersionWriter,
    keys: Keys,
    stack: str,
    plan: ObjectPlan,
    outside: Iterable[tuple[ServiceRecord, int]],
    cause: str,
) -> tuple[list[Compare], list[Op], list[tuple[str, int]]]:
    """A new version of each service outside the stack that uses a changed object, with
    the new revision (what `PutObject` gives them): compares, ops, (service, version)."""
    compares: list[Compare] = []
    ops: list[Op] = []
    rolled: list[tuple[str, int]] = []
    if not plan.changed:
        return compares, ops, rolled
    for service, mod in outside:
        spec = _with_revisions(service.spec, plan.changed)
        if spec == service.spec:
            continue
        new = ServiceRecord(
            service.name,
            service.version + 1,
            spec,
            time.time(),
            f"{writer.node} (stack {stack}: its secrets or configs updated)",
            uid=service.uid,
            cause=cause,
        )
        compares.append(Compare(keys.service(service.name), "mod", "==", mod))
        ops.extend(writer.version_ops(new))
        rolled.append((service.name, new.version))
    return compares, ops, rolled


def _with_revisions(spec: ServiceSpec, changed: dict[tuple[str, str], ObjectRecord]) -> ServiceSpec:
    update = {}
    for kind, fieldname in _FIELD.items():
        refs = getattr(spec, fieldname) or []
        fresh = [
            r.model_copy(update={"revision": changed[(kind, r.source)].revision})
            if (kind, r.source) in changed
            else r
            for r in refs
        ]
        if fresh != refs:
            update[fieldname] = fresh
    return spec.model_copy(update=update) if update else spec


async def prune(
    objects: Objects, stack: str, declared: set[tuple[str, str]], after: Sequence[ServiceSpec]
) -> tuple[list[Compare], list[Op], list[ObjectChange]]:
    """Delete the stack's objects not in `declared` that no spec of `after` (every service
    as the transaction leaves it) uses; those still used are reported `kept`."""
    compares: list[Compare] = []
    ops: list[Op] = []
    changes: list[ObjectChange] = []
    for kind in KINDS:
        kvs, _ = await objects.store.range(objects.keys.objects(kind))
        for kv, record in readable_objects(kind, objects.keys.objects(kind), kvs):
            if record.stack != stack or (kind, record.name) in declared:
                continue
            if any(uses(spec, kind, record.name) for spec in after):
                changes.append(ObjectChange(kind, record.name, "kept", record.size, record.revision))
                continue
            use_key = objects.keys.object_use(kind, record.name)
            use = await objects.store.get(use_key)
            compares += [
                Compare(kv.key, "mod", "==", kv.mod_revision),
                Compare(use_key, "mod", "==", use.mod_revision if use else 0),
            ]
            ops += [Delete(kv.key), Delete(use_key)]
            changes.append(ObjectChange(kind, record.name, "removed", record.size))
    return compares, ops, changes
