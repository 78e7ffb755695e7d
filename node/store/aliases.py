"""Network alias ownership (decision 73): one service per alias on each network.

A service's `networks: [{name: backnet, aliases: [database]}]` makes `database` name its
virtual address for the containers on `backnet`. Two services holding one alias on one
network would make the name mean whichever the name server met first, so an alias is
claimed like a published port: `netaliases/<network>/<alias>` holds the service
incarnation (name and uid, a `PortClaim` record), and every write of a service record
carries its alias claims in the same etcd transaction: `ALIASES` is a kind of the claim
core (`node.store.claims`), beside ports and ingress routes:

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
a claim (the core's look for unclaimed holders finds none).

`plan` is the core's pure decision with claims read by (network, alias); `file_conflicts`
is the check of one stack file (its services' claims go in one transaction, where two
puts of one key would not conflict).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.model.spec_networks import alias_paths
from node.store import claims as claim_core
from node.store.claims import ClaimWrites, Owner, Refusal, Seen, Taken

Claim = tuple[str, str]  # (network, alias), the network by its cluster-wide name


class AliasTaken(Taken):
    """An alias on a network belongs to another service; the message names it."""

    def __init__(self, alias: str, network: str, owner: str, where: str = "") -> None:
        where = f"{where}: " if where else ""
        super().__init__(
            f"{where}alias {alias!r} on network {network!r} is already held by service '{owner}'; "
            f"choose another alias, or remove it from '{owner}' first",
            owner,
        )
        self.alias = alias
        self.network = network


def claims(spec: ServiceSpec | None) -> dict[Claim, str]:
    """(network, alias) -> the field path that asks for it."""
    return alias_paths(spec.networks, spec.stack) if spec is not None else {}


def _refusal(network: str, alias: str, path: str) -> Refusal:
    return lambda owner: AliasTaken(alias, network, owner, path)


def _needs(keys: Keys, spec: ServiceSpec | None) -> dict[str, Refusal]:
    return {keys.netalias(n, a): _refusal(n, a, path) for (n, a), path in claims(spec).items()}


ALIASES = claim_core.Kind(_needs, "network aliases")


def plan(
    keys: Keys,
    name: str,
    uid: str,
    old_spec: ServiceSpec | None,
    new_spec: ServiceSpec | None,
    seen: Mapping[Claim, Seen],
    owners: Mapping[str, Owner],
    now: float = 0.0,
) -> ClaimWrites:
    """`node.store.claims.plan` of the alias kind, with `seen` by (network, alias). Pure."""
    by_key = {keys.netalias(n, a): s for (n, a), s in seen.items()}
    return claim_core.plan(keys, ALIASES, name, uid, old_spec, new_spec, by_key, owners, {}, now)


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
