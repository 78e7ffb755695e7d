"""Stack writes from the client API: deploy, remove, list (docs/stacks.md).

A stack is the set of services whose spec says `stack: <name>`; there is no other record
of it. `deploy` writes every service of the file, and removes the stack's services the
file no longer has (like `docker stack deploy --prune`, always), in ONE etcd transaction:
each service's part is what `service apply` would commit for it (`ServiceWriter.write_ops`:
record, history entry, history prune, port and alias claims) and each removal what `service rm`
would (`ServiceWriter.remove_ops`), all compared on the mod revisions read. So a crash or a
lost answer leaves either the old stack or the new one, never a mix; a concurrent change
to any of its services makes the transaction fail, and it is planned again from a fresh
read (`Conflict` after a few tries). An unchanged service is compared but not rewritten
(no new version, no rollout). The leader then rolls each changed service out as any
update (`leader.rollout`), and gates first placements on `depends_on` (`leader.dependencies`).

The whole stack goes in one transaction, so it is bounded by etcd's operation limit
(`MAX_TXN_OPS`): a stack that would need more is refused with the count, before anything
is written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from node.api.services import ServiceWriter
from node.compose.stackfile import check_stack_name, parse_stack
from node.model.domain import ServiceRecord, new_cause, readable_services
from node.model.errors import InvalidArgument, NotFound
from node.model.spec import SpecError
from node.store import Compare, Put
from node.store.aliases import file_conflicts
from node.store.base import MAX_TXN_OPS, Op
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

    async def members(self, stack: str = "") -> dict[str, list[tuple[ServiceRecord, int]]]:
        """Stack name -> its services' records and mod revisions (one stack, or all)."""
        kvs, _ = await self.store.range(self.keys.services)
        mods = {kv.key: kv.mod_revision for kv in kvs}
        out: dict[str, list[tuple[ServiceRecord, int]]] = {}
        for record in readable_services(kv.value for kv in kvs):
            name = record.spec.stack
            if name and (not stack or name == stack):
                out.setdefault(name, []).append((record, mods[self.keys.service(record.name)]))
        return out

    async def deploy(self, text: str, source: str, name: str = "") -> tuple[str, list[Change]]:
        if name and (problem := check_stack_name(name)) is not None:
            raise InvalidArgument(problem)
        try:
            stack, specs = parse_stack(text, source or "<stack>", name)
        except SpecError as exc:
            raise InvalidArgument(str(exc)) from exc
        if conflicts := file_conflicts(specs):  # one transaction: two puts of one claim would not conflict
            raise InvalidArgument(f"{source or '<stack>'}: " + "; ".join(conflicts))
        specs = [await self.writer.pin(spec) for spec in specs]  # tags to digests, before any write

        cause = new_cause()  # one for every version this deploy makes (issue 14)

        async def attempt() -> tuple[str, list[Change]] | None:
            compares: list[Compare] = []
            ops: list[Op] = []
            changes: list[Change] = []
            wanted = {spec.name for spec in specs}
            for spec in specs:
                kv = await self.store.get(self.keys.service(spec.name))
                record, current, bound = await self.writer.bound_version(spec, kv)
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
            for record, mod in (await self.members(stack)).get(stack, []):
                if record.name not in wanted:
                    c, o = await self.writer.remove_ops(record, mod)
                    compares += c
                    ops += o
                    changes.append(Change(record.name, 0, "removed"))
            ops = _one_put_per_key(ops)  # two services naming one secret touch its use key once
            _bounded(stack, compares, ops)
            if not ops:
                return stack, changes
            return (stack, changes) if (await self.store.txn(compares, ops)).succeeded else None

        return await compare_and_swap(attempt, f"stack '{stack}' is being changed concurrently; try again")

    async def remove(self, stack: str) -> list[str]:
        if (problem := check_stack_name(stack)) is not None:
            raise InvalidArgument(problem)

        async def attempt() -> list[str] | None:
            members = (await self.members(stack)).get(stack, [])
            if not members:
                raise NotFound(f"stack '{stack}' not found; `shoal stack ls` lists the stacks")
            compares: list[Compare] = []
            ops: list[Op] = []
            for record, mod in members:
                c, o = await self.writer.remove_ops(record, mod)
                compares += c
                ops += o
            _bounded(stack, compares, ops)
            if (await self.store.txn(compares, ops)).succeeded:
                return sorted(r.name for r, _ in members)
            return None

        return await compare_and_swap(attempt, f"stack '{stack}' is being changed concurrently; try again")


def _one_put_per_key(ops: list[Op]) -> list[Op]:
    """etcd refuses a transaction that puts one key twice; the last put of a key wins."""
    last = {op.key: i for i, op in enumerate(ops) if isinstance(op, Put)}
    return [op for i, op in enumerate(ops) if not isinstance(op, Put) or last[op.key] == i]


def _bounded(stack: str, compares: list[Compare], ops: list[Op]) -> None:
    n = max(len(compares), len(ops))
    if n > MAX_TXN_OPS:
        raise InvalidArgument(
            f"stack '{stack}': this change needs {n} operations in one etcd transaction and the limit "
            f"is {MAX_TXN_OPS}; split the stack in two, or change fewer services (ports) at once"
        )
