"""Network alias ownership (decision 73): one service per alias on each network.

A service's `networks: [{name: backnet, aliases: [database]}]` makes `database` name its
virtual address for the containers on `backnet`. Two services holding one alias on one
network would make the name mean whichever the name server met first, so an alias is
claimed like a published port (`node.store.ports`): `netaliases/<network>/<alias>` holds
the service incarnation (name and uid, a `PortClaim` record), and every write of a
service record carries its alias claims in the same etcd transaction (`alias_writes`):

- an alias nobody holds: `Put` the claim, compared absent (create revision 0), so of two
  concurrent applies exactly one gets it, the other is refused on its retry;
- an alias this incarnation holds: nothing;
- an alias another service holds: refused (`AliasTaken` names it), unless the claim is
  stale (its service is gone or was re-created), then taken over, compared on the
  claim's and the old owner's service key's mod revisions;
- an alias the old spec held and the new one does not: its claim is deleted; `rm`
  deletes them all.

The same path for every writer: apply, scale, rollback and `stack deploy` / `stack rm`
(`node.api.services`, `node.api.stacks`) and the leader's automatic rollback
(`leader.rollback`). Aliases are new with this module, so no service holds one without
a claim (unlike ports, there is no unclaimed legacy to look for).

`alias_writes` does the reads; `plan` is the pure decision over what was read;
`file_conflicts` is the check of one stack file (its services' claims go in one
transaction, where two puts of one key would not conflict).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from node.model.domain import PortClaim, ServiceRecord
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.model.spec_networks import alias_paths
from node.store.base import MAX_TXN_OPS, Compare, Delete, Put, Store
from node.store.ports import Owner, PortWrites, Seen

Claim = tuple[str, str]  # (network, alias), the network by its cluster-wide name


class AliasTaken(FailedPrecondition):
    """An alias on a network belongs to another service; the message names it."""

    def __init__(self, alias: str, network: str, owner: str, where: str = "") -> None:
        where = f"{where}: " if where else ""
        super().__init__(
            f"{where}alias {alias!r} on network {network!r} is already held by service '{owner}'; "
            f"choose another alias, or remove it from '{owner}' first"
        )
        self.alias = alias
        self.network = network
        self.owner = owner


def claims(spec: ServiceSpec | None) -> dict[Claim, str]:
    """(network, alias) -> the field path that asks for it."""
    return alias_paths(spec.networks, spec.stack) if spec is not None else {}


def _held_by(claim: PortClaim, name: str, uid: str) -> bool:
    return claim.service == name and claim.uid == uid


def plan(
    keys: Keys,
    name: str,
    uid: str,
    old_spec: ServiceSpec | None,
    new_spec: ServiceSpec | None,
    seen: Mapping[Claim, Seen],
    owners: Mapping[str, Owner],
    now: float = 0.0,
) -> PortWrites:
    """The compares and ops that move the alias claims of service `name` (incarnation
    `uid`) from `old_spec` to `new_spec` (None: create or remove). `seen`: the claims read;
    `owners`: the services of claims held by another. Raises `AliasTaken`. Pure."""
    out = PortWrites()
    want, had = claims(new_spec), claims(old_spec)
    record = PortClaim(name, uid, now).to_json()
    for (network, alias), path in sorted(want.items()):
        s = seen.get((network, alias), Seen())
        key = keys.netalias(network, alias)
        if s.claim is None:
            out.compares.append(Compare(key, "create", "==", 0))
            out.ops.append(Put(key, record))
            continue
        if _held_by(s.claim, name, uid):
            continue
        owner = owners.get(s.claim.service, Owner())
        stale = owner.uid is None or owner.uid != s.claim.uid
        if not stale and s.claim.service != name:
            raise AliasTaken(alias, network, s.claim.service, path)
        out.compares.append(Compare(key, "mod", "==", s.mod))
        if s.claim.service != name:
            out.compares.append(Compare(keys.service(s.claim.service), "mod", "==", owner.mod))
        out.ops.append(Put(key, record))
    for network, alias in sorted(set(had) - set(want)):
        dropped = seen.get((network, alias))
        if dropped is not None and dropped.claim is not None and _held_by(dropped.claim, name, uid):
            out.ops.append(Delete(keys.netalias(network, alias)))
    if len(out.ops) + 3 > MAX_TXN_OPS:  # cannot happen within MAX_ALIASES; kept as the ports' guard
        raise FailedPrecondition(
            f"service '{name}': this change claims or frees {len(out.ops)} aliases at once"
        )
    return out


async def alias_writes(
    store: Store,
    keys: Keys,
    name: str,
    uid: str,
    old_spec: ServiceSpec | None,
    new_spec: ServiceSpec | None,
    now: float = 0.0,
) -> PortWrites:
    """Read what `plan` needs (one get per alias asked or dropped, one per other owner) and
    return its compares and ops, to go into the same transaction as the service write."""
    want, had = claims(new_spec), claims(old_spec)
    seen: dict[Claim, Seen] = {}
    for network, alias in sorted(set(want) | set(had)):
        kv = await store.get(keys.netalias(network, alias))
        seen[(network, alias)] = Seen(PortClaim.from_json(kv.value), kv.mod_revision) if kv else Seen()
    owners: dict[str, Owner] = {}
    for c in (seen[w].claim for w in want):
        if c is not None and not _held_by(c, name, uid) and c.service not in owners:
            kv = await store.get(keys.service(c.service))
            owners[c.service] = (
                Owner(ServiceRecord.from_json(kv.value).uid, kv.mod_revision) if kv else Owner()
            )
    return plan(keys, name, uid, old_spec, new_spec, seen, owners, now)


def file_conflicts(specs: Iterable[ServiceSpec]) -> list[str]:
    """Two services of one stack file asking for one alias on one network, each said once."""
    first: dict[Claim, str] = {}
    out = []
    for spec in specs:
        for (network, alias), path in sorted(claims(spec).items()):
            other = first.setdefault((network, alias), spec.name)
            if other != spec.name:
                out.append(
                    f"{spec.name}: {path}: alias {alias!r} on network {network!r} is asked for by "
                    f"service '{other}' too; an alias names one service on a network"
                )
    return out
