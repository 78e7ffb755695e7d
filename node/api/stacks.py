"""Stack writes from the client API: deploy, remove, list (docs/stacks.md).

A stack is the set of services whose spec says `stack: <name>`; there is no other record
of it. `deploy` writes every service of the file, and removes the stack's services the
file no longer has (like `docker stack deploy --prune`, always), in ONE etcd transaction:
each service's part is what `service apply` would commit for it (`ServiceWriter.write_ops`:
record, history entry, history prune, port, route and alias claims) and each removal what `service rm`
would (`ServiceWriter.remove_ops`), all compared on the mod revisions read. So a crash or a
lost answer leaves either the old stack or the new one, never a mix; a concurrent change
to any of its services makes the transaction fail, and it is planned again from a fresh
read (`Conflict` after a few tries). An unchanged service is compared but not rewritten
(no new version, no rollout). Two services of the file that publish one port or route one
ingress (host, path) are refused before anything is written (their claims, in one
transaction, cannot race each other). The leader then rolls each changed service out as any
update (`leader.rollout`), and gates first placements on `depends_on` (`leader.dependencies`).

The stack's own secrets and configs (decision 72: sent with the stack by `stack deploy
-c`, owned by it) go into the same transaction (`node.api.stack_objects`): created or
updated with the services that use them, or nothing is written; the stack's objects the
file dropped and no service uses any more are deleted with it, and `remove` deletes the
stack's objects with its services. Objects of no stack (`shoal secret create`, `external:`)
are never touched.

A service record of the stack that does not read (written around the API, or by a newer
shoal) is removed by its key with the others, by `rm` and by a deploy whose file no longer
has it, and named in the answer: `<stack>_<service>` is provably the stack's (only a
stack's services have a '_' in their name). Its claims stay, stale, for the next claimer.

The whole stack goes in one transaction, so it is bounded by etcd's operation limit
(`MAX_TXN_OPS`): a stack that would need more is refused with the count of its services
and objects, before anything is written.

The stack file is parsed and checked in a worker thread, at most `PARSES` at once with
the service specs (`ServiceWriter.parse_off_loop`): a 256 KiB file (one flow mapping of
25,000 keys) takes seconds of pure-Python YAML, which on the event loop would stall the
daemon's lease keep-alives, gossip and every other call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from node.api.services import ServiceWriter
from node.api.stack_objects import ObjectChange, StackObject, check_objects, plan_writes, prune, roll_outside
from node.compose.stackfile import check_stack_name, parse_stack
from node.model.domain import ServiceRecord, new_cause, readable_services
from node.model.errors import InvalidArgument, NotFound
from node.model.spec import SpecError
from node.store import Compare, Put
from node.store.aliases import file_conflicts
from node.store.base import MAX_TXN_OPS, Op
from node.store.claims import shared_in
from node.store.ingress_claims import ROUTES
from node.store.ports import PORTS
from node.store.retry import compare_and_swap


@dataclass(frozen=True)
class Change:
    service: str
    version: int  # 0: removed
    action: str  # created | updated | unchanged | removed
    cause: str = ""  # issue 14: the new version's cause id (one per deploy); "" when none was made


class StackWriter:
    def __init__(self, writer: ServiceWriter) -> None:
        self.writer = writer
        self.store, self.keys = writer.store, writer.keys

    async def every(self) -> list[tuple[ServiceRecord, int]]:
        """Every readable service and its mod revision."""
        return (await self._read())[0]

    async def _read(self) -> tuple[list[tuple[ServiceRecord, int]], dict[str, int]]:
        """Every readable service and its mod revision; the name and mod revision of each
        record that does not read (logged by `readable_services`)."""
        kvs, _ = await self.store.range(self.keys.services)
        mods = {kv.key.removeprefix(self.keys.services): kv.mod_revision for kv in kvs}
        records = [(r, mods.pop(r.name)) for r in readable_services(kv.value for kv in kvs) if r.name in mods]
        return records, mods

    async def members(self, stack: str = "") -> dict[str, list[tuple[ServiceRecord, int]]]:
        """Stack name -> its services' records and mod revisions (one stack, or all)."""
        out: dict[str, list[tuple[ServiceRecord, int]]] = {}
        for record, mod in await self.every():
            name = record.spec.stack
            if name and (not stack or name == stack):
                out.setdefault(name, []).append((record, mod))
        return out

    async def deploy(self, text: str, source: str, name: str = "") -> tuple[str, list[Change]]:
        """`deploy_with_objects` without objects: the stack's name and its services' changes."""
        stack, changes, _ = await self.deploy_with_objects(text, source, name)
        return stack, changes

    async def deploy_with_objects(
        self, text: str, source: str, name: str = "", objects: Sequence[StackObject] = ()
    ) -> tuple[str, list[Change], list[ObjectChange]]:
        """Write the stack file's services and `objects` (the stack's own secrets and
        configs, `<stack>_<name>`) in one transaction; what changed, service and object."""
        if name and (problem := check_stack_name(name)) is not None:
            raise InvalidArgument(problem)
        try:
            # off the event loop: seconds for a large file
            stack, specs = await self.writer.parse_off_loop(parse_stack, text, source or "<stack>", name)
        except SpecError as exc:
            raise InvalidArgument(str(exc)) from exc
        for kind in (PORTS, ROUTES):  # two of the file's services on one port or route
            if (shared := shared_in(self.keys, kind, specs)) is not None:
                raise InvalidArgument(
                    f"{source or '<stack>'}: service '{shared[0]}': {shared[1]} (both in this file)"
                )
        check_objects(stack, objects)
        if conflicts := file_conflicts(specs):  # one transaction: two puts of one claim would not conflict
            raise InvalidArgument(f"{source or '<stack>'}: " + "; ".join(conflicts))
        specs = [await self.writer.pin(spec) for spec in specs]  # tags to digests, before any write

        cause = new_cause()  # one for every version this deploy makes (issue 14)

        async def attempt() -> tuple[str, list[Change], list[ObjectChange]] | None:
            every, unread = await self._read()
            plan = await plan_writes(self.writer.objects, stack, objects, (r for r, _ in every))
            compares, ops = list(plan.compares), list(plan.ops)
            changes: list[Change] = []
            wanted = {spec.name for spec in specs}
            for spec in specs:
                kv = await self.store.get(self.keys.service(spec.name))
                record, current, bound = await self.writer.bound_version(spec, kv, plan.pending)
                if current is not None and current.spec.stack != stack:
                    raise InvalidArgument(
                        f"service '{spec.name}' exists outside stack '{stack}'; remove it first"
                    )
                if record is current:
                    compares.append(
                        Compare(self.keys.service(spec.name), "mod", "==", kv.mod_revision if kv else 0)
                    )
                    changes.append(Change(spec.name, record.version, "unchanged"))
                    continue
                record = replace(record, cause=cause)
                c, o = await self.writer.write_ops(record, kv.mod_revision if kv else 0, current, bound)
                compares += c
                ops += o
                changes.append(Change(spec.name, record.version, "updated" if current else "created", cause))
            for record, mod in every:
                if record.spec.stack == stack and record.name not in wanted:
                    c, o = await self.writer.remove_ops(record, mod)
                    compares += c
                    ops += o
                    changes.append(Change(record.name, 0, "removed"))
            for gone, mod in _own_unreadable(stack, unread).items():
                if gone not in wanted:  # one the file has: its write reads it, and says why not
                    c, o = await self.writer.unreadable_remove_ops(gone, mod)
                    compares += c
                    ops += o
                    changes.append(Change(gone, 0, "removed"))
            outside = [(r, m) for r, m in every if r.spec.stack != stack]
            c, o, rolled = roll_outside(self.writer, self.keys, stack, plan, outside, cause)
            compares += c
            ops += o
            changes += [Change(n, v, "updated", cause) for n, v in rolled]
            after = [*specs, *(r.spec for r, _ in outside)]
            c, o, dropped = await prune(self.writer.objects, stack, set(plan.pending), after)
            compares += c
            ops += o
            done = [*plan.changes, *(d for d in dropped if d.action == "removed")]
            ops = _one_put_per_key(ops)  # two services naming one secret touch its use key once
            compares = list(dict.fromkeys(compares))
            _bounded(stack, compares, ops, len(specs), len(objects))
            if not ops:
                return stack, changes, done
            return (stack, changes, done) if (await self.store.txn(compares, ops)).succeeded else None

        return await compare_and_swap(attempt, f"stack '{stack}' is being changed concurrently; try again")

    async def remove(self, stack: str) -> list[str]:
        """`remove_with_objects`: the services removed."""
        return (await self.remove_with_objects(stack))[0]

    async def remove_with_objects(self, stack: str) -> tuple[list[str], list[ObjectChange]]:
        """Remove the stack's services and the objects it owns that no other service uses,
        in one transaction: the services removed, and what became of each object."""
        if (problem := check_stack_name(stack)) is not None:
            raise InvalidArgument(problem)

        async def attempt() -> tuple[list[str], list[ObjectChange]] | None:
            every, unread = await self._read()
            members = [(r, m) for r, m in every if r.spec.stack == stack]
            lost = _own_unreadable(stack, unread)
            after = [r.spec for r, _ in every if r.spec.stack != stack]
            compares, ops, objects = await prune(self.writer.objects, stack, set(), after)
            if not members and not lost and not ops:
                raise NotFound(f"stack '{stack}' not found; `shoal stack ls` lists the stacks")
            for record, mod in members:
                c, o = await self.writer.remove_ops(record, mod)
                compares += c
                ops += o
            for name, mod in lost.items():
                c, o = await self.writer.unreadable_remove_ops(name, mod)
                compares += c
                ops += o
            removed = len(members) + len(lost)
            _bounded(stack, compares, ops, removed, sum(o.action == "removed" for o in objects))
            if (await self.store.txn(compares, ops)).succeeded:
                return sorted([*(r.name for r, _ in members), *lost]), objects
            return None

        return await compare_and_swap(attempt, f"stack '{stack}' is being changed concurrently; try again")


def _own_unreadable(stack: str, unread: dict[str, int]) -> dict[str, int]:
    """The unreadable service records that are provably `stack`'s, by their key: only a
    stack's services have a '_' in their name (`stack_problem`), `<stack>_<service>`, and
    a stack's name has none, so the part before the first '_' is the owner."""
    return {name: mod for name, mod in unread.items() if name.partition("_")[0] == stack and "_" in name}


def _one_put_per_key(ops: list[Op]) -> list[Op]:
    """etcd refuses a transaction that puts one key twice; the last put of a key wins."""
    last = {op.key: i for i, op in enumerate(ops) if isinstance(op, Put)}
    return [op for i, op in enumerate(ops) if not isinstance(op, Put) or last[op.key] == i]


def _bounded(stack: str, compares: list[Compare], ops: list[Op], services: int, objects: int) -> None:
    n = max(len(compares), len(ops))
    if n > MAX_TXN_OPS:
        raise InvalidArgument(
            f"stack '{stack}': this change of {services} services and {objects} secrets/configs needs "
            f"{n} operations in one etcd transaction and the limit is {MAX_TXN_OPS}; split the stack "
            "in two, or change fewer services (ports, secrets, configs) at once"
        )
