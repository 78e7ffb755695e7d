"""Service writes from the client API: apply, scale, remove.

Every write is a compare-and-swap on the service key's mod revision, so two
concurrent applies never lose one another (the loser retries from a fresh read:
`node.store.retry.compare_and_swap`),
and a spec is in etcd before the call returns. Nothing is written when the spec is
invalid or unchanged. The published ports and ingress routes a version claims or frees
(`node.store.claims`) go into the same transaction, so of concurrent applies publishing
one port or routing one (host, path) exactly one wins; the others get
FAILED_PRECONDITION naming the owner. A service gets its
incarnation uid when it is created, never on an update. Every new version gets a cause
id (`new_cause`): its tasks and the events it leads to carry it (issue 14).

A spec (up to 512 KiB) is parsed in a worker thread, at most `PARSES` at once with the
stack files (`node.api.stacks` shares `parse_off_loop`): pure-Python YAML takes seconds
for a large one, and on the event loop that would stall the daemon's lease keep-alives,
gossip and every other call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TypeVar

from node.api.ingress_check import check_ingress
from node.api.objects import Bound, Objects
from node.api.port_policy import PortPolicy
from node.api.registry import Resolver, secret_opener
from node.model import readable
from node.model.domain import (
    RolloutRecord,
    ServiceRecord,
    UnreadableRecord,
    claims_to_drop,
    new_cause,
    new_service_uid,
    template_hash,
)
from node.model.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from node.model.keys import Keys
from node.model.spec import ServiceSpec, SpecError, parse_spec, spec_from_dict, spec_to_dict
from node.model.spec_autoscale import keep_count
from node.model.spec_compat import unknown_to
from node.model.spec_job import is_job, rollback_replicas
from node.model.spec_lifecycle import stack_problem
from node.model.spec_schedule import never_fires
from node.security.objects import ObjectRecord
from node.store import KV, Compare, Delete, Put, Store, claim_kinds
from node.store.base import ETCD_TXN_LIMIT, Op, TooLarge
from node.store.claims import service_writes
from node.store.retry import compare_and_swap

T = TypeVar("T")
PARSES = 2  # specs and stack files parsed at once (threads; the GIL makes more no faster)
log = logging.getLogger(__name__)
HISTORY_LIMIT = 10  # versions kept in `history/<name>/` (NodeConfig.history_limit)


class ServiceWriter:
    def __init__(self, store: Store, keys: Keys, node: str) -> None:
        self.store = store
        self.keys = keys
        self.node = node
        self.ports = PortPolicy()  # the daemon sets its own ports (node.api.port_policy)
        self.history_limit = HISTORY_LIMIT
        self.objects = Objects(store, keys)  # secrets, configs, sealed secret_env (node.api.objects)
        self.resolver = Resolver()  # tags to digests at the registry (node.api.registry)
        self._parsing = asyncio.Semaphore(PARSES)

    async def parse_off_loop(self, parse: Callable[..., T], *args: object) -> T:
        """`parse(*args)` in a worker thread, at most `PARSES` at once (applies and stack
        deploys together): seconds of YAML for a large file must not stall the loop."""
        async with self._parsing:
            return await asyncio.to_thread(parse, *args)

    async def pin(self, spec: ServiceSpec) -> ServiceSpec:
        """`spec` with its image's tag resolved to a digest now (`node.api.registry`);
        refuses (nothing written) when the registry cannot resolve it."""
        return await self.resolver.pin(spec, secret_opener(self.objects))

    async def read(self, name: str) -> tuple[ServiceRecord, int]:
        """The stored record and its mod revision, its own fields of the right types too
        (`current_record`): a new version is not built on `"version": "three"`
        (FailedPrecondition). `remove` reads for itself, so such a record can be removed."""
        kv = await self.store.get(self.keys.service(name))
        if kv is None:
            raise NotFound(f"service '{name}' not found; `shoal service ls` lists the services")
        return current_record(name, kv), kv.mod_revision

    async def _write(
        self, record: ServiceRecord, expect_mod: int, old: ServiceRecord | None, bound: Bound | None = None
    ) -> bool:
        """The service record, its history entry, its port and route claims (`node.store.claims`) and what its
        secrets and configs need (`bound`), in one transaction compared on the service
        key's mod revision."""
        compares, ops = await self.write_ops(record, expect_mod, old, bound)
        n = max(len(compares), len(ops))
        if n > ETCD_TXN_LIMIT:  # etcd refuses it (INVALID_ARGUMENT), which read as an internal error
            raise InvalidArgument(
                f"{record.name}: this change needs {n} operations in one etcd transaction and the limit "
                f"is {ETCD_TXN_LIMIT}: use fewer secrets, configs and published ports in one service"
            )
        try:
            return (await self.store.txn(compares, ops)).succeeded
        except TooLarge as exc:  # the spec is written twice (the record and its history copy)
            raise InvalidArgument(
                f"{record.name}: {exc}; the spec is stored twice (the service and its history), "
                "so keep large values (env, files) out of it: use configs or secrets"
            ) from None

    async def write_ops(
        self, record: ServiceRecord, expect_mod: int, old: ServiceRecord | None, bound: Bound | None = None
    ) -> tuple[list[Compare], list[Op]]:
        """What `_write` commits, for a caller that writes several services in one
        transaction (`node.api.stacks`)."""
        old_spec = old.spec if old else None
        name, spec = record.name, record.spec
        claims = await service_writes(
            self.store, self.keys, claim_kinds.ALL, name, record.uid, old_spec, spec, time.time()
        )
        bound = bound or Bound()
        compares = [
            Compare(self.keys.service(record.name), "mod", "==", expect_mod),
            *claims.compares,
            *bound.compares,
        ]
        return compares, [*self.version_ops(record), *claims.ops, *bound.ops]

    def version_ops(self, record: ServiceRecord) -> list[Put | Delete]:
        """The puts of a new version (service key and history) and the history's pruning."""
        value = record.to_json()
        return [
            Put(self.keys.service(record.name), value),
            Put(self.keys.history_version(record.name, record.version), value),
            *self._prune(record),
        ]

    def _prune(self, record: ServiceRecord) -> list[Delete]:
        """In the write that adds a version: delete every version but the last
        `history_limit` (older specs, old `secret_env` included, do not pile up)."""
        oldest_kept = record.version - self.history_limit + 1
        if oldest_kept <= 1:
            return []
        name = record.name
        return [Delete(self.keys.history_version(name, 0), end=self.keys.history_version(name, oldest_kept))]

    async def apply(self, text: str, source: str) -> tuple[ServiceRecord, bool]:
        try:
            spec = await self.parse_off_loop(parse_spec, text, source or "<spec>")
        except SpecError as exc:
            raise InvalidArgument(str(exc)) from exc
        if (problem := stack_problem(spec.name, spec.stack, spec.depends_on)) is not None:
            raise InvalidArgument(f"{source or '<spec>'}: {'.'.join(problem[1])}: {problem[0]}")
        name = spec.name
        spec = await self.pin(spec)  # before the compare-and-swap: the registry is asked once

        async def attempt() -> tuple[ServiceRecord, bool] | None:
            kv = await self.store.get(self.keys.service(name))
            record, current, bound = await self.bound_version(spec, kv)
            if record is current:
                return record, False
            if await self._write(record, kv.mod_revision if kv else 0, current, bound):
                return record, True
            return None

        return await compare_and_swap(attempt, _busy(name))

    async def bound_version(
        self, asked: ServiceSpec, kv: KV | None, pending: Mapping[tuple[str, str], ObjectRecord] | None = None
    ) -> tuple[ServiceRecord, ServiceRecord | None, Bound]:
        """`next_version` of `asked` with its secrets and configs bound (their current
        revisions, or those of `pending`, the objects a stack deploy writes with it;
        `secret_env` sealed) and what the write must hold for them; `apply` and `stack
        deploy` share it, so a stack's services are sealed and checked alike."""
        if why := never_fires(asked, time.time()):
            raise InvalidArgument(f"service '{asked.name}' not written: {why}")
        current = current_record(asked.name, kv) if kv else None
        spec, bound = await self.objects.bind(asked, current.spec if current else None, pending)
        record, current = await self.next_version(spec, kv)
        return record, current, bound

    async def next_version(
        self, spec: ServiceSpec, kv: KV | None
    ) -> tuple[ServiceRecord, ServiceRecord | None]:
        """The record `spec` makes, over the current one read as `kv` (None: a new service),
        and the current record; the current record itself when the spec equals its own.
        Raises when the port policy refuses the spec. `apply` and `stack deploy` share it."""
        current = current_record(spec.name, kv) if kv else None
        spec = keep_count(spec, current.spec if current else None)  # issue 15: the autoscaled count
        if current is not None and current.spec == spec:
            return current, current
        await self.readable_everywhere(spec)
        await self.ports.check(self.store, self.keys, spec, current.spec if current else None)
        await check_ingress(self.store, self.keys, spec)  # issue 17: (host, path) of another service
        version = current.version + 1 if current else 1
        uid = current.uid if current else new_service_uid()  # a new incarnation only at create
        record = ServiceRecord(spec.name, version, spec, time.time(), self.node, uid=uid, cause=new_cause())
        return record, current

    async def readable_everywhere(self, spec: ServiceSpec) -> None:
        """Refuse a spec that a live node's build could not read back (a rolling upgrade
        in progress: `node.model.spec_compat`), naming the field and the nodes. A node
        record that cannot be read (`node.model.readable.node`) is not judged, like one
        that publishes no paths: the leader places nothing new there and logs why, and
        one such record must not refuse every apply."""
        kvs, _ = await self.store.range(self.keys.nodes)
        infos = []
        for kv in kvs:
            try:
                infos.append(readable.node(self.keys.tail(kv.key, self.keys.nodes), kv.value))
            except UnreadableRecord:
                continue
        unknown = unknown_to(spec, [(info.id, info.spec_paths) for info in infos])
        if not unknown:
            return
        versions = {info.id: info.version for info in infos}
        path, nodes = next(iter(unknown.items()))
        field, _, value = path.partition("=")
        what = f"value {value!r} of {field}" if value else f"field {field}"
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        on = ", ".join(f"{n} (shoal {versions.get(n) or '?'})" for n in nodes)
        raise FailedPrecondition(
            f"{spec.name}: {what}{more} cannot be read by node(s) {on}, which run an older "
            "build: upgrade every node first, or apply without it (docs/operations.md, Upgrading)"
        )

    async def scale(self, name: str, replicas: int, of: ServiceRecord | None = None) -> ServiceRecord:
        """`of`: the record the caller decided from (the autoscaler); a service removed and
        made again since, or another version, is not scaled (FailedPrecondition)."""
        if not 0 <= replicas <= 10_000:
            raise InvalidArgument(f"replicas: must be between 0 and 10000, got {replicas}")

        async def attempt() -> ServiceRecord | None:
            current, mod = await self.read(name)
            if of is not None and (current.uid, current.version) != (of.uid, of.version):
                raise FailedPrecondition(
                    f"{name} changed since version {of.version} was read (now version {current.version}"
                    f"{', another incarnation' if current.uid != of.uid else ''}): not scaled"
                )
            if is_job(current.spec):
                raise FailedPrecondition(
                    f"{name} is a job: it has no replicas to scale; change job.parallelism or "
                    "job.completions in its spec and apply it"
                )
            if current.spec.mode == "global":  # the leader runs one per eligible node, whatever the count
                raise FailedPrecondition(
                    f"{name} is a global service (mode: global): it runs one task on each eligible node "
                    "and has no replicas to scale; drain a node or change the service's constraints, "
                    "or `shoal service rm` it"
                )
            if current.replicas == replicas:
                return current
            spec = current.spec.model_copy(update={"replicas": replicas})  # checked above
            record = ServiceRecord(
                name, current.version + 1, spec, time.time(), self.node, uid=current.uid, cause=new_cause()
            )
            return record if await self._write(record, mod, current) else None

        return await compare_and_swap(attempt, _busy(name))

    async def history(self, name: str) -> tuple[ServiceRecord, list[ServiceRecord]]:
        """The current record and every stored version, oldest first."""
        current, _ = await self.read(name)
        kvs, _ = await self.store.range(self.keys.history(name))
        return current, sorted((ServiceRecord.from_json(kv.value) for kv in kvs), key=lambda r: r.version)

    async def rollback(self, name: str) -> ServiceRecord:
        """A new version with the spec the service ran before its current one.

        "Before" is the `from_version` of the latest rollout when it went to the current
        version, else the newest earlier version that differs in more than where and how
        many replicas run. Its replica count stays the current one.
        """

        async def attempt() -> ServiceRecord | None:
            current, mod = await self.read(name)
            _, versions = await self.history(name)
            target = await self._previous(current, versions)
            replicas = rollback_replicas(target.spec, current.spec)
            try:  # checked as a stored spec is: a copy with replicas changed skips the models' checks
                spec = spec_from_dict({**spec_to_dict(target.spec), "replicas": replicas})
            except SpecError as exc:
                raise FailedPrecondition(
                    f"{name}: cannot roll back to version {target.version}: {exc}"
                ) from None
            spec, bound = await self.objects.bind(spec, current.spec)  # the objects' current revisions
            await self.ports.check(self.store, self.keys, spec, current.spec)
            await check_ingress(self.store, self.keys, spec)
            record = ServiceRecord(
                name,
                current.version + 1,
                spec,
                time.time(),
                f"{self.node} (rollback)",
                rollback_of=current.version,
                uid=current.uid,
                cause=new_cause(),
            )
            return record if await self._write(record, mod, current, bound) else None

        return await compare_and_swap(attempt, _busy(name))

    async def _previous(self, current: ServiceRecord, versions: list[ServiceRecord]) -> ServiceRecord:
        by_version = {r.version: r for r in versions}
        kv = await self.store.get(self.keys.rollout(current.name))
        if kv is not None:
            rollout = RolloutRecord.from_json(kv.value)
            same = rollout.to_version == current.version and rollout.uid == current.uid
            if same and rollout.from_version in by_version:
                return by_version[rollout.from_version]
        for r in reversed(versions):
            if r.version < current.version and template_hash(r.spec) != template_hash(current.spec):
                return r
        raise FailedPrecondition(
            f"service '{current.name}' has no earlier version to roll back to "
            "(`shoal service history` lists its versions)"
        )

    async def remove(self, name: str) -> None:
        """Remove the service; a record of the wrong types, or one that does not read at all
        (not JSON, a spec this build does not know), goes by its key's name too: apply and
        stack deploy refuse over it and name this as the way out."""
        kv = await self.store.get(self.keys.service(name))
        if kv is None:
            raise NotFound(f"service '{name}' not found; `shoal service ls` lists the services")
        try:
            current = ServiceRecord.from_json(kv.value)
        except UnreadableRecord as exc:
            log.warning("service '%s' removed by its key: %s", name, exc)
            compares, ops = await self.unreadable_remove_ops(name, kv.mod_revision)
        else:
            if current.name != name or not isinstance(current.uid, str):
                uid = current.uid if isinstance(current.uid, str) else ""
                current = replace(current, name=name, uid=uid)
            compares, ops = await self.remove_ops(current, kv.mod_revision)
        result = await self.store.txn(compares, ops)
        if not result.succeeded:
            raise Conflict(f"service '{name}' changed while being removed; try again")

    async def remove_ops(self, current: ServiceRecord, mod: int) -> tuple[list[Compare], list[Op]]:
        """What `remove` commits: the service, its history, rollout and binds, its port and route claims,
        its volume claims (the Docker volumes stay on their nodes: docs/volumes.md)."""
        name = current.name
        claims = await service_writes(
            self.store, self.keys, claim_kinds.ALL, name, current.uid, current.spec, None
        )
        volumes, _ = await self.store.range(self.keys.service_volumes(name))
        drop, whole = claims_to_drop((kv.key, kv.value) for kv in volumes)
        if whole:
            volume_ops = [Delete(self.keys.service_volumes(name), prefix=True)]
        else:  # a `volume rm` under way keeps its claim: its agent removes the volume, then it
            volume_ops = [Delete(key) for key in drop]
        return [Compare(self.keys.service(name), "mod", "==", mod), *claims.compares], [
            *claims.ops,
            Delete(self.keys.service(name)),
            Delete(self.keys.history(name), prefix=True),
            Delete(self.keys.rollout(name)),
            Delete(self.keys.binds(name), prefix=True),
            *volume_ops,
            Delete(self.keys.job(name)),  # issue 18: a job's progress
        ]

    async def unreadable_remove_ops(self, name: str, mod: int) -> tuple[list[Compare], list[Op]]:
        """`remove_ops` for a record that does not read: every key of the service by its
        name (`node.model.keys`); its port, route and alias claims cannot be read from its
        spec and stay, stale (no service holds them: the next claimer takes them over,
        `node.store.claims`)."""
        volumes, _ = await self.store.range(self.keys.service_volumes(name))
        drop, whole = claims_to_drop((kv.key, kv.value) for kv in volumes)
        return [Compare(self.keys.service(name), "mod", "==", mod)], [
            Delete(self.keys.service(name)),
            Delete(self.keys.history(name), prefix=True),
            Delete(self.keys.rollout(name)),
            Delete(self.keys.binds(name), prefix=True),
            *([Delete(self.keys.service_volumes(name), prefix=True)] if whole else map(Delete, drop)),
            Delete(self.keys.job(name)),
        ]


def current_record(name: str, kv: KV) -> ServiceRecord:
    """The record stored under service `name`'s key, to build a new version on: one that
    does not check, or whose own fields have the wrong types (`"version": "three"`, written
    around the API), is refused with what to fix, not a traceback (INTERNAL)."""
    try:
        ServiceRecord.from_json(kv.value)
    except UnreadableRecord as exc:  # a newer node's spec, or a record written around the API
        raise FailedPrecondition(
            f"service '{name}': {exc}; `shoal service rm {name}` removes it (a newer shoal's: "
            "upgrade this node instead), then apply it again"
        ) from None
    try:
        return readable.service(name, kv.value)
    except UnreadableRecord as exc:  # its spec reads: `remove` can take it away
        raise FailedPrecondition(
            f"service '{name}': {exc} (`shoal service rm {name}` removes it; apply it again then)"
        ) from None


def _busy(name: str) -> str:
    return f"service '{name}' is being changed concurrently; try again"
