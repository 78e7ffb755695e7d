"""Published-port ownership: who may publish a port on every node's proxy.

A published port belongs to one service incarnation (name and uid), recorded in
`ports/<published>` (`PortClaim`). Every write of a service record that changes which
ports it publishes, or that may publish a port it does not hold yet, carries the port
claims in the same etcd transaction (`port_writes`):

- a port the new spec publishes and nobody holds: `Put` the claim, compared absent
  (create revision 0), so of two concurrent writers exactly one gets it;
- a port this incarnation holds already: nothing (only a write of this service, which
  compares its own key, or a takeover after this service is gone can change it);
- a port another service holds: refused, `PortTaken` names the owner; unless that
  claim is stale (its service was removed, or re-created with another uid, by a daemon
  that did not know about claims), then it is taken over, compared on the claim's and on
  the old owner's service key's mod revisions;
- a port the old spec published and the new one does not: its claim is deleted.

One path for every writer: apply, scale and rollback (API, `node.api.services`) and the
leader's automatic rollback (`leader.loop`).

Services written before claims existed hold no `ports/` key: they claim their ports on
their next write (apply, scale, rollback). Until then a new claim on such a port is
refused too: a claim for a port nobody holds first looks for a service record that
publishes it (one range of `services/`, only when a port is new to its writer).

`port_writes` does the reads; `plan` is the pure decision over what was read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from node.model.domain import PortClaim, ServiceRecord
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.store.base import MAX_TXN_OPS, Compare, Delete, Op, Put, Store


class PortTaken(FailedPrecondition):
    """A published port belongs to another service; the message names it."""

    def __init__(self, port: int, owner: str, where: str = "") -> None:
        where = f"{where}: " if where else ""
        super().__init__(
            f"{where}port {port} is already published by service '{owner}'; "
            f"choose another port, or remove '{owner}' first"
        )
        self.port = port
        self.owner = owner


def published(spec: ServiceSpec | None) -> dict[int, int]:
    """Published port -> its index in `ports` (for error paths like `ports[1].published`)."""
    out: dict[int, int] = {}
    for i, p in enumerate(spec.ports if spec is not None else ()):
        if p.published:
            out.setdefault(p.published, i)
    return out


@dataclass(frozen=True)
class Seen:
    """What was read of one port: its claim (None: no key) and the key's mod revision."""

    claim: PortClaim | None = None
    mod: int = 0


@dataclass(frozen=True)
class Owner:
    """What was read of a claim's owning service: its uid (None: no such service) and the
    service key's mod revision (0: absent)."""

    uid: str | None = None
    mod: int = 0


@dataclass
class PortWrites:
    compares: list[Compare] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)


def _held_by(claim: PortClaim, name: str, uid: str) -> bool:
    return claim.service == name and claim.uid == uid


def plan(
    keys: Keys,
    name: str,
    uid: str,
    old_spec: ServiceSpec | None,
    new_spec: ServiceSpec | None,
    seen: Mapping[int, Seen],
    owners: Mapping[str, Owner],
    unclaimed_owners: Mapping[int, str],
    now: float = 0.0,
) -> PortWrites:
    """The compares and ops that move the claims of service `name` (incarnation `uid`)
    from `old_spec` to `new_spec` (None: no such spec, i.e. create or remove).

    `seen` holds the claims read for the ports of `new_spec`; `owners` the services of
    the claims held by another; `unclaimed_owners` a service (other than `name`) that
    publishes a port nobody claims (written before claims existed). Raises `PortTaken`.
    Pure.
    """
    out = PortWrites()
    want, had = published(new_spec), published(old_spec)
    claim = PortClaim(name, uid, now).to_json()
    for port, index in sorted(want.items()):
        s = seen.get(port, Seen())
        key = keys.port(port)
        if s.claim is None:
            legacy = unclaimed_owners.get(port)
            if legacy is not None and legacy != name:
                raise PortTaken(port, legacy, f"ports[{index}].published")
            out.compares.append(Compare(key, "create", "==", 0))
            out.ops.append(Put(key, claim))
            continue
        if _held_by(s.claim, name, uid):
            continue
        owner = owners.get(s.claim.service, Owner())
        stale = owner.uid is None or owner.uid != s.claim.uid
        if not stale and s.claim.service != name:
            raise PortTaken(port, s.claim.service, f"ports[{index}].published")
        # a stale claim (its owner is gone or was re-created), or our own from another
        # incarnation or written before uids: take it over, if nothing moved meanwhile
        out.compares.append(Compare(key, "mod", "==", s.mod))
        if s.claim.service != name:
            out.compares.append(Compare(keys.service(s.claim.service), "mod", "==", owner.mod))
        out.ops.append(Put(key, claim))
    for port in sorted(set(had) - set(want)):
        had_claim = seen.get(port)
        if had_claim is not None and had_claim.claim is not None and _held_by(had_claim.claim, name, uid):
            out.ops.append(Delete(keys.port(port)))
    if len(out.ops) + 3 > MAX_TXN_OPS:  # with the service and history writes and the history prune
        raise FailedPrecondition(
            f"service '{name}': this change claims or frees {len(out.ops)} published ports at once; "
            f"change at most {MAX_TXN_OPS - 3} in one apply"
        )
    return out


async def port_writes(
    store: Store,
    keys: Keys,
    name: str,
    uid: str,
    old_spec: ServiceSpec | None,
    new_spec: ServiceSpec | None,
    now: float = 0.0,
    services: list[ServiceRecord] | None = None,
) -> PortWrites:
    """Read what `plan` needs and return its compares and ops, to go into the same
    transaction as the service write. `services`: the service records when the caller
    has them (a mirror); else they are ranged, only when a port is new to its writer."""
    want, had = published(new_spec), published(old_spec)
    seen: dict[int, Seen] = {}
    for port in sorted(set(want) | set(had)):
        kv = await store.get(keys.port(port))
        seen[port] = Seen(PortClaim.from_json(kv.value), kv.mod_revision) if kv else Seen()
    owners: dict[str, Owner] = {}
    for port in want:
        c = seen[port].claim
        if c is not None and not _held_by(c, name, uid) and c.service not in owners:
            kv = await store.get(keys.service(c.service))
            owners[c.service] = (
                Owner(ServiceRecord.from_json(kv.value).uid, kv.mod_revision) if kv else Owner()
            )
    unclaimed_owners: dict[int, str] = {}
    unclaimed = {port for port in want if seen[port].claim is None}
    if unclaimed:
        if services is None:
            kvs, _ = await store.range(keys.services)
            services = [ServiceRecord.from_json(kv.value) for kv in kvs]
        for record in sorted(services, key=lambda r: r.name):
            if record.name == name:
                continue
            for port in unclaimed.intersection(published(record.spec)):
                unclaimed_owners.setdefault(port, record.name)
    return plan(keys, name, uid, old_spec, new_spec, seen, owners, unclaimed_owners, now)
