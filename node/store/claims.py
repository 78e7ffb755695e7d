"""Claim keys: one etcd key per thing only one service may hold, written with the service.

Three kinds (`node.store.claim_kinds.ALL`): a published port (`ports/<published>`,
`node.store.ports`), an ingress route (`ingress/<host>/<path>`,
`node.store.ingress_claims`) and a network alias (`netaliases/<network>/<alias>`,
`node.store.aliases`). A claim names the service
incarnation (name and uid) that holds it (`PortClaim`). Every write of a service record
carries the claims of its spec in the same etcd transaction (`claim_writes`):

- a key the new spec needs and nobody holds: `Put` the claim, compared absent
  (create revision 0), so of two concurrent writers exactly one gets it;
- a key this incarnation holds already: nothing (only a write of this service, which
  compares its own key, or a takeover after this service is gone can change it);
- a key another service holds: refused (the kind's `Taken` names the owner); unless that
  claim is stale (its service was removed, or re-created with another uid, by a daemon
  that did not know about claims), then it is taken over, compared on the claim's and on
  the old owner's service key's mod revisions;
- a key the old spec needed and the new one does not: its claim is deleted.

One path for every writer: apply, scale and rollback (API, `node.api.services`), `stack
deploy` and `rm` (`node.api.stacks`) and the leader's automatic rollback (`leader.rollback`).

Services written before a kind of claim existed hold no key of it (decision 55, rolling
upgrades): they claim on their next write (apply, scale, rollback). Until then a new
claim on such a key is refused too: a claim for a key nobody holds first looks for
another service record that needs it (one range of `services/`, only when a key is new
to its writer).

`claim_writes` does the reads; `plan` is the pure decision over what was read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from node.model.domain import PortClaim, ServiceRecord
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.store.base import MAX_TXN_OPS, Compare, Delete, Op, Put, Store


class Taken(FailedPrecondition):
    """A claim key belongs to another service; the message names it (`owner`)."""

    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner


Refusal = Callable[[str], Taken]  # the owner's name -> the error that names it


@dataclass(frozen=True)
class Kind:
    """One kind of claim: `needs(keys, spec)` maps each claim key the spec needs to the
    refusal to raise when another service holds it (an empty map for None); `what` names
    the kind in the message of a change too large for one transaction."""

    needs: Callable[[Keys, ServiceSpec | None], dict[str, Refusal]]
    what: str


@dataclass(frozen=True)
class Seen:
    """What was read of one key: its claim (None: no key) and the key's mod revision."""

    claim: PortClaim | None = None
    mod: int = 0


@dataclass(frozen=True)
class Owner:
    """What was read of a claim's owning service: its uid (None: no such service) and the
    service key's mod revision (0: absent)."""

    uid: str | None = None
    mod: int = 0


@dataclass
class ClaimWrites:
    compares: list[Compare] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)


def held_by(claim: PortClaim, name: str, uid: str) -> bool:
    return claim.service == name and claim.uid == uid


def plan(
    keys: Keys,
    kind: Kind,
    name: str,
    uid: str,
    old_spec: ServiceSpec | None,
    new_spec: ServiceSpec | None,
    seen: Mapping[str, Seen],
    owners: Mapping[str, Owner],
    unclaimed_owners: Mapping[str, str],
    now: float = 0.0,
) -> ClaimWrites:
    """The compares and ops that move the claims of kind `kind` of service `name`
    (incarnation `uid`) from `old_spec` to `new_spec` (None: create or remove).

    `seen` holds the claims read, by key; `owners` the services of the claims held by
    another; `unclaimed_owners` a service (other than `name`) whose record needs a key
    nobody claims (written before claims existed). Raises `Taken`. Pure.
    """
    out = ClaimWrites()
    want, had = kind.needs(keys, new_spec), kind.needs(keys, old_spec)
    claim = PortClaim(name, uid, now).to_json()
    for key, refuse in sorted(want.items()):
        s = seen.get(key, Seen())
        if s.claim is None:
            legacy = unclaimed_owners.get(key)
            if legacy is not None and legacy != name:
                raise refuse(legacy)
            out.compares.append(Compare(key, "create", "==", 0))
            out.ops.append(Put(key, claim))
            continue
        if held_by(s.claim, name, uid):
            continue
        owner = owners.get(s.claim.service, Owner())
        stale = owner.uid is None or owner.uid != s.claim.uid
        if not stale and s.claim.service != name:
            raise refuse(s.claim.service)
        # a stale claim (its owner is gone or was re-created), or our own from another
        # incarnation or written before uids: take it over, if nothing moved meanwhile
        out.compares.append(Compare(key, "mod", "==", s.mod))
        if s.claim.service != name:
            out.compares.append(Compare(keys.service(s.claim.service), "mod", "==", owner.mod))
        out.ops.append(Put(key, claim))
    for key in sorted(set(had) - set(want)):
        had_claim = seen.get(key)
        if had_claim is not None and had_claim.claim is not None and held_by(had_claim.claim, name, uid):
            out.ops.append(Delete(key))
    if len(out.ops) + 3 > MAX_TXN_OPS:  # with the service and history writes and the history prune
        raise FailedPrecondition(
            f"service '{name}': this change claims or frees {len(out.ops)} {kind.what} at once; "
            f"change at most {MAX_TXN_OPS - 3} in one apply"
        )
    return out


async def claim_writes(
    store: Store,
    keys: Keys,
    kind: Kind,
    name: str,
    uid: str,
    old_spec: ServiceSpec | None,
    new_spec: ServiceSpec | None,
    now: float = 0.0,
    services: list[ServiceRecord] | None = None,
) -> ClaimWrites:
    """Read what `plan` needs and return its compares and ops, to go into the same
    transaction as the service write. `services`: the service records when the caller
    has them (a mirror); else they are ranged, only when a key is new to its writer."""
    want, had = kind.needs(keys, new_spec), kind.needs(keys, old_spec)
    seen: dict[str, Seen] = {}
    for key in sorted(set(want) | set(had)):
        kv = await store.get(key)
        seen[key] = Seen(PortClaim.from_json(kv.value), kv.mod_revision) if kv else Seen()
    owners: dict[str, Owner] = {}
    for key in want:
        c = seen[key].claim
        if c is not None and not held_by(c, name, uid) and c.service not in owners:
            kv = await store.get(keys.service(c.service))
            owners[c.service] = (
                Owner(ServiceRecord.from_json(kv.value).uid, kv.mod_revision) if kv else Owner()
            )
    unclaimed_owners: dict[str, str] = {}
    unclaimed = {key for key in want if seen[key].claim is None}
    if unclaimed:
        if services is None:
            kvs, _ = await store.range(keys.services)
            services = [ServiceRecord.from_json(kv.value) for kv in kvs]
        for record in sorted(services, key=lambda r: r.name):
            if record.name == name:
                continue
            for key in unclaimed.intersection(kind.needs(keys, record.spec)):
                unclaimed_owners.setdefault(key, record.name)
    return plan(keys, kind, name, uid, old_spec, new_spec, seen, owners, unclaimed_owners, now)


async def service_writes(
    store: Store,
    keys: Keys,
    kinds: Iterable[Kind],
    name: str,
    uid: str,
    old_spec: ServiceSpec | None,
    new_spec: ServiceSpec | None,
    now: float = 0.0,
) -> ClaimWrites:
    """`claim_writes` of every kind in `kinds`, together (one service write)."""
    out = ClaimWrites()
    for kind in kinds:
        more = await claim_writes(store, keys, kind, name, uid, old_spec, new_spec, now)
        out.compares += more.compares
        out.ops += more.ops
    if len(out.ops) + 3 > MAX_TXN_OPS:  # each kind is bounded alone; together too
        raise FailedPrecondition(
            f"service '{name}': this change claims or frees {len(out.ops)} published ports, ingress "
            f"routes and network aliases at once; change at most {MAX_TXN_OPS - 3} in one apply"
        )
    return out


def shared_in(keys: Keys, kind: Kind, specs: Iterable[ServiceSpec]) -> tuple[str, Taken] | None:
    """The first spec of `specs` that needs a key an earlier one needs, and the refusal
    naming that earlier one; or None. A stack's services are written in one transaction,
    where their claims cannot race each other: they are checked against each other here."""
    holder: dict[str, str] = {}
    for spec in specs:
        for key, refuse in sorted(kind.needs(keys, spec).items()):
            other = holder.setdefault(key, spec.name)
            if other != spec.name:
                return spec.name, refuse(other)
    return None
