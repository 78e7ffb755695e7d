"""Secrets and configs from the client API: create, update, list, remove, and binding
them into the service specs that use them (issue 13).

- `bind` is called by the one service-write path (`ServiceWriter`) for every version it
  writes: each `secrets` / `configs` reference gets the object's current `revision`
  (an object that does not exist refuses the write, nothing written), `secret_env`
  values are sealed under the cluster key (a value unchanged from the previous version
  keeps its sealed text, so an unchanged spec stays equal and rolls nothing; a value
  given already sealed that the service does not hold must open as that variable of
  that service, else the write is refused: its tasks could never start). Its compares
  and puts go into the service's own transaction: the objects' mod revisions
  (a concurrent update or rm makes the write retry) and `objuse/<kind>/<name>` (which
  `rm` compares, so an apply and an rm never both succeed on one object).
- `put` writes a new value and, in the same transaction, a new version of every service
  that uses the object with the new revision: the leader rolls them as any update. A
  value equal to the stored one writes nothing but still brings every service that
  uses it to its revision. One transaction means no crash window between the two. The
  versions carry one cause id (issue 14), so their tasks' events lead back to the update.
- `remove` is refused while a service uses the object, naming them.
- An empty secret (0 bytes) is refused, as Docker Swarm refuses it: most often a file
  or variable that was not what the operator meant. An empty config is kept.

A stored record that does not read as an object of its key (not JSON, a field missing or
of the wrong type, another kind or name: written around the API) is `UnreadableObject`:
listings and a stack's prune skip it and log it, never delete it (its owner is unknown);
`remove` still takes it by name. A service record that does not read, or is not its
key's (another `name`), is left out of the services an object's calls consider, logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from node.model.domain import ServiceRecord, new_cause, readable_services
from node.model.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.model.spec_lifecycle import OBJECT_PATTERN
from node.security.object_refs import FIELDS, Bound, bind_references
from node.security.objects import KINDS, MAX_BYTES, ObjectRecord, encode
from node.security.sealing import Sealer, SealError, is_sealed, secret_env_ad
from node.store import Compare, Delete, Put, Store
from node.store.base import KV, MAX_TXN_OPS, Op
from node.store.retry import compare_and_swap

log = logging.getLogger(__name__)


class UnreadableObject(ValueError):
    """A stored secret or config record that does not read as the object of its key."""


def read_object(kind: str, name: str, raw: bytes) -> ObjectRecord:
    """The record stored at `kind`/`name`, its fields checked; `UnreadableObject` otherwise."""
    try:
        data = json.loads(raw)
        ok = isinstance(data, dict) and all(
            isinstance(data.get(f), str) for f in ("kind", "name", "uid", "created", "updated", "data")
        )
        ok = ok and all(type(data.get(f)) is int and data[f] >= 0 for f in ("version", "size"))
        ok = ok and isinstance(data.get("stack", ""), str | None)
        record = ObjectRecord.from_json(raw) if ok else None
    except (ValueError, KeyError, TypeError, RecursionError):
        record = None
    if record is None or record.kind != kind or record.name != name:
        raise UnreadableObject(
            f"the stored record of {kind} '{name}' cannot be read (not a {kind} record of that name); "
            f"`shoal {kind} rm {name}` removes it"
        )
    return record


def readable_objects(kind: str, prefix: str, kvs: Iterable[KV]) -> list[tuple[KV, ObjectRecord]]:
    """The records among `kvs` (a range of `prefix`) that read; the others are logged and left out."""
    out = []
    for kv in kvs:
        try:
            out.append((kv, read_object(kind, kv.key.removeprefix(prefix), kv.value)))
        except UnreadableObject as exc:
            log.warning("%s (left alone)", exc)
    return out


def _readable(kind: str, name: str, raw: bytes) -> ObjectRecord:
    try:
        return read_object(kind, name, raw)
    except UnreadableObject as exc:
        raise FailedPrecondition(str(exc)) from None


class VersionWriter(Protocol):
    """What an object's update needs of the service writer (`node.api.services`), which
    imports this module: its node name and the ops of a new service version."""

    node: str

    def version_ops(self, record: ServiceRecord) -> list[Put | Delete]: ...


_FIELD = FIELDS
# Docker Swarm refuses one too ("secret data must be larger than 0"); configs may be empty
EMPTY_SECRET = "secret '{name}' is empty (0 bytes): a secret must hold at least one byte; check the file"


def check_object_name(kind: str, name: str) -> str:
    if kind not in KINDS:
        raise InvalidArgument(f"kind: must be one of {', '.join(KINDS)}, got {kind[:20]!r}")
    if not name or len(name) > 63 or not re.fullmatch(OBJECT_PATTERN, name):
        raise InvalidArgument(
            f"name: {name[:80]!r} is not a {kind} name (1-63 of letters, digits, '_', '.' and '-', "
            "starting and ending with a letter or digit)"
        )
    return name


def uses(spec: ServiceSpec, kind: str, name: str) -> bool:
    pulls = kind == "secret" and spec.image_pull_secret == name  # issue 13: a registry's credentials
    return pulls or any(ref.source == name for ref in getattr(spec, _FIELD[kind]) or [])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def next_record(
    kind: str, name: str, value: bytes, old: ObjectRecord | None, sealer: Sealer | None, stack: str = ""
) -> ObjectRecord:
    """The record that holds `value` after `old` (None: a new object, owned by `stack`):
    `old` itself when it already holds that value (nothing to write, nothing rolls); a
    new version (a new revision) keeping `old`'s uid and owner otherwise."""
    if old is not None:
        try:
            if old.value(sealer) == value:
                return old
        except (SealError, ValueError):
            pass  # unreadable: replaced by the new value
        data = encode(kind, name, value, sealer)
        return replace(old, version=old.version + 1, size=len(value), updated=_now(), data=data)
    now = _now()
    data = encode(kind, name, value, sealer)
    return ObjectRecord(kind, name, uuid.uuid4().hex[:12], 1, len(value), now, now, data, stack)


class Objects:
    """Secrets and configs of one cluster. `sealer` is set by the daemon (the cluster key
    derived from this node's CA passphrase); without it secrets cannot be written."""

    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys
        self.sealer: Sealer | None = None

    def _sealer(self, what: str) -> Sealer:
        if self.sealer is None:
            raise FailedPrecondition(
                f"this node has no cluster key (its CA passphrase, tls/ca.pass): it cannot seal {what}"
            )
        return self.sealer

    # -- binding into a service write ------------------------------------------------------

    async def bind(
        self,
        spec: ServiceSpec,
        previous: ServiceSpec | None,
        pending: Mapping[tuple[str, str], ObjectRecord] | None = None,
    ) -> tuple[ServiceSpec, Bound]:
        """`pending`: (kind, name) -> the record a stack deploy writes in the same
        transaction (decision 72); a reference to it takes that revision, and the stack's
        own compares on the object hold for it."""
        update: dict[str, object] = {}
        if spec.secret_env:
            update["secret_env"] = self._seal_env(spec, previous)
        refs, bound = await bind_references(self.store, self.keys, spec, pending)
        update |= refs
        return (spec.model_copy(update=update) if update else spec), bound

    def _seal_env(self, spec: ServiceSpec, previous: ServiceSpec | None) -> dict[str, str]:
        before = (previous.secret_env or {}) if previous is not None else {}
        out = {}
        for var, value in (spec.secret_env or {}).items():
            ad = secret_env_ad(spec.name, var)
            old = before.get(var)
            if is_sealed(value):  # a stored version (rollback, scale): already sealed
                if value != old and self.sealer is not None:
                    self._check_sealed(spec.name, var, value, ad)
                out[var] = value
                continue
            sealer = self._sealer("secret_env")
            if old is not None and is_sealed(old):
                try:
                    if sealer.open(old, ad) == value.encode():
                        out[var] = old  # unchanged: the same sealed text, the same template
                        continue
                except SealError:
                    pass
            out[var] = sealer.seal(value.encode(), ad)
        return out

    def _check_sealed(self, service: str, var: str, value: str, ad: str) -> None:
        """A sealed value given to a write that the service does not hold already (a
        rollback's, or one pasted from a stored spec) must open as this variable of this
        service: one of another service or variable, another cluster, or altered text never
        opens, and every task would fail to start. Refused, nothing written."""
        assert self.sealer is not None
        try:
            self.sealer.open(value, ad)
        except SealError:
            raise InvalidArgument(
                f"secret_env.{var}: a sealed value (shoal-sealed:v1:...) that does not open as "
                f"{var} of service '{service}' (sealed for another service or variable, by another "
                "cluster, or altered): give the value in the clear, shoal seals it"
            ) from None

    # -- the objects themselves -------------------------------------------------------------

    async def get(self, kind: str, name: str) -> ObjectRecord:
        kv = await self.store.get(self.keys.object(kind, check_object_name(kind, name)))
        if kv is None:
            raise NotFound(f"{kind} '{name}' not found; `shoal {kind} ls` lists them")
        return _readable(kind, name, kv.value)

    async def all(self, kind: str) -> tuple[list[ObjectRecord], dict[str, list[str]]]:
        """Every object of `kind`, by name, and the services using each: as `remove` counts
        them (`uses`: a pull secret too), each service once."""
        check_object_name(kind, "x")
        kvs, _ = await self.store.range(self.keys.objects(kind))
        readable = readable_objects(kind, self.keys.objects(kind), kvs)
        records = sorted((record for _, record in readable), key=lambda r: r.name)
        users: dict[str, list[str]] = {}
        for service, _mod in await self._services():
            names = {ref.source for ref in getattr(service.spec, _FIELD[kind]) or []}
            if kind == "secret" and service.spec.image_pull_secret:
                names.add(service.spec.image_pull_secret)
            for name in names:
                users.setdefault(name, []).append(service.name)
        return records, users

    async def _services(self) -> list[tuple[ServiceRecord, int]]:
        """Every readable service record and its key's mod revision. One whose `name` is not
        its key's (written around the API) is left out and logged, as one that does not
        read: looked up by its name it failed every call here (KeyError, INTERNAL)."""
        kvs, _ = await self.store.range(self.keys.services)
        out = []
        for kv in kvs:
            for record in readable_services([kv.value]):
                if self.keys.service(record.name) == kv.key:
                    out.append((record, kv.mod_revision))
                else:
                    log.warning("%s holds a record named %r (left alone)", kv.key, record.name)
        return out

    async def put(
        self, kind: str, name: str, value: bytes, update: bool, writer: VersionWriter, cause: str = ""
    ) -> tuple[ObjectRecord, list[str]]:
        """Create (`update` False) or replace the value of an object; the record and the
        services given a new version (rolled) in the same transaction, each version with
        `cause` (issue 14: one id per call, made here when not given), as an apply's has."""
        check_object_name(kind, name)
        cause = cause or new_cause()
        if len(value) > MAX_BYTES:
            raise InvalidArgument(
                f"{kind} '{name}': {len(value)} bytes; the limit is {MAX_BYTES // 1024} KiB"
            )
        if not value and kind == "secret":
            raise InvalidArgument(EMPTY_SECRET.format(name=name))
        key, use_key = self.keys.object(kind, name), self.keys.object_use(kind, name)
        sealer = self._sealer("a secret") if kind == "secret" else None

        async def attempt() -> tuple[ObjectRecord, list[str]] | None:
            kv, use = await self.store.get(key), await self.store.get(use_key)
            old = _readable(kind, name, kv.value) if kv is not None else None
            if old is not None and not update:
                raise Conflict(
                    f"{kind} '{name}' exists; `shoal {kind} update {name} -f FILE` replaces its value "
                    "(and rolls the services that use it)"
                )
            if old is None and update:
                raise NotFound(f"{kind} '{name}' not found; create it: shoal {kind} create {name} -f FILE")
            record = next_record(kind, name, value, old, sealer)
            ops: list[Op] = [] if record is old else [Put(key, record.to_json())]
            compares = [
                Compare(key, "mod", "==", kv.mod_revision) if kv else Compare(key, "create", "==", 0),
                Compare(use_key, "mod", "==", use.mod_revision if use else 0),
            ]
            rolled = []
            for service, mod in await self._services():
                if not uses(service.spec, kind, name):
                    continue
                refs = [
                    r.model_copy(update={"revision": record.revision}) if r.source == name else r
                    for r in getattr(service.spec, _FIELD[kind]) or []
                ]
                spec = service.spec.model_copy(update={_FIELD[kind]: refs})
                if spec == service.spec:
                    continue
                new = ServiceRecord(
                    service.name,
                    service.version + 1,
                    spec,
                    time.time(),
                    f"{writer.node} ({kind} {name} updated)",
                    uid=service.uid,
                    cause=cause,
                )
                compares.append(Compare(self.keys.service(service.name), "mod", "==", mod))
                ops.extend(writer.version_ops(new))
                rolled.append(service.name)
            if len(ops) + len(compares) > MAX_TXN_OPS:
                raise FailedPrecondition(
                    f"{kind} '{name}' is used by {len(rolled)} services: more than one transaction can "
                    "update with it; split it into several objects"
                )
            if not ops:
                return record, []
            result = await self.store.txn(compares, ops)
            return (record, rolled) if result.succeeded else None

        return await compare_and_swap(
            attempt, f"{kind} '{name}' or a service using it is being changed concurrently; try again"
        )

    async def remove(self, kind: str, name: str) -> None:
        key, use_key = self.keys.object(kind, check_object_name(kind, name)), self.keys.object_use(kind, name)

        async def attempt() -> bool | None:
            kv, use = await self.store.get(key), await self.store.get(use_key)
            if kv is None:
                raise NotFound(f"{kind} '{name}' not found; `shoal {kind} ls` lists them")
            users = [s.name for s, _ in await self._services() if uses(s.spec, kind, name)]
            if users:
                raise FailedPrecondition(
                    f"{kind} '{name}' is used by service(s) {', '.join(sorted(users))}: remove it from "
                    "their specs (or remove them) first"
                )
            result = await self.store.txn(
                [
                    Compare(key, "mod", "==", kv.mod_revision),
                    Compare(use_key, "mod", "==", use.mod_revision if use else 0),
                ],
                [Delete(key), Delete(use_key)],
            )
            return True if result.succeeded else None

        await compare_and_swap(attempt, f"{kind} '{name}' is being used or changed concurrently; try again")
