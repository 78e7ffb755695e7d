"""Service names and virtual addresses: what the node's name server answers, and which
virtual address (VIP) each service incarnation has.

Every service incarnation (name and uid) gets one VIP from the cluster's range
(`vip_range`), recorded in `vips/<service>` (`VipRecord`) and claimed in
`vipaddrs/<address>`; `node.proxy.vipstore` writes both in one transaction. A record
whose uid is not the service's current one is stale: it is never answered, and it is
replaced (a re-created service gets a fresh address) or released (a removed service).

The names of a service `app_db` of stack `app` (and of a service `web` in no stack):

| asked                        | answers                  | from where                       |
|------------------------------|--------------------------|----------------------------------|
| `app_db`, `web`              | the service's VIP        | anywhere                         |
| `app.db`                     | `app_db`'s VIP           | anywhere (`<stack>.<service>`)   |
| `db`                         | `app_db`'s VIP           | a container of stack `app` (1)   |
| `db.app.shoal`, `web.shoal`, `app_db.shoal` | the VIP   | anywhere                         |
| `database`, `app.database`   | the alias's service's VIP | a container on its network (2) |

(1) its resolver's search domain `app.shoal` makes `db` into `db.app.shoal`. Under a
search domain, a name that is not one of that stack's services is looked up bare:
`app_web.app.shoal` or `other.cache.app.shoal` answer as `app_web` and `other.cache`,
for resolvers that stop at the first search domain's NXDOMAIN (busybox's nslookup).
Names are case-insensitive. A name under `.shoal` that is no service is NXDOMAIN
(authoritative, so a search-list resolver goes on to the next form), unless names are
below it: `shoal` itself and a stack's `app.shoal` (`has_below`), and `_tcp.web.shoal`
or `_x._tcp.web.shoal` asked another type than SRV, have no data (NOERROR, empty), as
RFC 8020 has it: a resolver may take an NXDOMAIN to deny every name below. Any other name
that is no service is not ours: the server forwards it to the host's resolver. An SRV
question (`_anything._tcp.<name>`, or `<name>` itself) answers one record per
container port of the service, its target `<name>` with the VIP as additional A record.
A known name asked for another type (AAAA, TXT) has no data (NOERROR, empty), so a
resolver that asks A and AAAA at once gets its A. A service whose VIP is not written
yet is SERVFAIL (the resolver asks again), never NXDOMAIN, which it could cache.

(2) decision 73: `networks: [{name: backnet, aliases: [database]}]` in stack `app` (also
`database.app.shoal`, `database.shoal`, and under any search domain). An alias is seen
only from its network (the host sees every one); a service name the asker
sees wins over an alias, so an alias never shadows a service.

Pure: no sockets, no etcd.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from node.model.domain import ServiceRecord
from node.model.spec_networks import CLUSTER_NETWORK, aliases_of, networks_of

ZONE = "shoal"
_NOWHERE: frozenset[str] = frozenset()
_CLUSTER = frozenset({CLUSTER_NETWORK})
OUTSIDER = "*"  # the asker of a source address that is no container of this cluster (no service is named so)
FIRST_VIP = 16  # offsets below it are kept for the name server (offset 1) and later use


def dns_address(net: ipaddress.IPv4Network) -> str:
    """Where every node's name server listens (on the host's side of the containers)."""
    return str(net.network_address + 1)


@dataclass(frozen=True)
class VipRecord:
    """`vips/<service>`: the address of one incarnation of a service."""

    service: str
    uid: str
    address: str

    def current(self, uid: str, net: ipaddress.IPv4Network | None = None) -> bool:
        """Of incarnation `uid`, and inside `net` (when given)."""
        return self.uid == uid and (net is None or ipaddress.IPv4Address(self.address) in net)

    def to_json(self) -> bytes:
        return json.dumps({"service": self.service, "uid": self.uid, "address": self.address}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VipRecord | None:
        """None for a value that cannot be read (it is then treated as absent)."""
        try:
            d = json.loads(raw)
            return cls(str(d["service"]), str(d["uid"]), str(ipaddress.IPv4Address(d["address"])))
        except (ValueError, KeyError, TypeError):
            return None


def next_free(net: ipaddress.IPv4Network, taken: set[str], cursor: str | None) -> str | None:
    """The first address after `cursor` (wrapping round) that nobody holds: addresses are
    handed out in turn, so a released one is reused only after the whole range went by."""
    first = int(net.network_address) + FIRST_VIP
    last = int(net.broadcast_address) - 1
    start = first
    if cursor is not None:
        try:
            c = int(ipaddress.IPv4Address(cursor))
        except ValueError:
            c = first - 1
        if first <= c < last:
            start = c + 1
    size = last - first + 1
    for i in range(size):
        candidate = str(ipaddress.IPv4Address(first + (start - first + i) % size))
        if candidate not in taken:
            return candidate
    return None


@dataclass(frozen=True)
class Plan:
    """What the allocator should write: services that need a VIP, records to release."""

    allocate: list[ServiceRecord] = field(default_factory=list)
    release: list[VipRecord] = field(default_factory=list)


def plan(
    services: Iterable[ServiceRecord], vips: Iterable[VipRecord], net: ipaddress.IPv4Network | None = None
) -> Plan:
    """A service without a record of its current incarnation needs one (a stale record of
    its name is replaced in the same write), and so does one whose address is outside `net`
    (`vip_range` was changed); a record whose service is gone is released."""
    current = {s.name: s for s in services}
    by_service = {v.service: v for v in vips}
    allocate = [
        s for n, s in sorted(current.items()) if (v := by_service.get(n)) is None or not v.current(s.uid, net)
    ]
    release = [v for n, v in sorted(by_service.items()) if n not in current]
    return Plan(allocate, release)


@dataclass(frozen=True)
class Target:
    service: str
    address: str | None  # None: the service exists, its VIP is not written yet
    ports: tuple[int, ...]  # container ports (SRV)
    protocols: tuple[str, ...] = ()


@dataclass
class NameTable:
    """Name (lower case, no trailing dot) -> the service it names."""

    names: dict[str, Target] = field(default_factory=dict)
    networks: dict[str, frozenset[str]] = field(default_factory=dict)  # service -> its networks
    # alias form (lower case) -> (network, target), by network: seen only from that network
    aliases: dict[str, list[tuple[str, Target]]] = field(default_factory=dict)
    # a name of the zone with names below it (`app.shoal`) -> the networks they are seen from
    above: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, services: Iterable[ServiceRecord], vips: Iterable[VipRecord]) -> NameTable:
        by_service = {v.service: v for v in vips}
        names: dict[str, Target] = {}
        networks: dict[str, frozenset[str]] = {}
        aliases: dict[str, list[tuple[str, Target]]] = {}
        for s in sorted(services, key=lambda r: r.name):
            networks[s.name] = networks_of(s.spec.networks, s.spec.stack)
            v = by_service.get(s.name)
            address = v.address if v is not None and v.uid == s.uid else None
            ports = tuple(sorted({p.container for p in s.spec.ports}))
            target = Target(s.name, address, ports)
            forms = [s.name, f"{s.name}.{ZONE}"]
            stack = s.spec.stack
            if stack and s.name.startswith(f"{stack}_"):
                short = s.name[len(stack) + 1 :]
                forms += [f"{stack}.{short}", f"{short}.{stack}.{ZONE}"]
            for form in forms:
                names.setdefault(form.lower(), target)
            for network, held in aliases_of(s.spec.networks, stack).items():
                for alias in held:
                    more = [f"{stack}.{alias}", f"{alias}.{stack}.{ZONE}"] if stack else []
                    for form in [alias, f"{alias}.{ZONE}", *more]:
                        aliases.setdefault(form, []).append((network, target))
        for entries in aliases.values():
            entries.sort(key=lambda e: (e[0], e[1].service))
        above: dict[str, set[str]] = {}
        for form, target in names.items():
            _add_above(above, form, networks[target.service])
        for form, entries in aliases.items():
            _add_above(above, form, {network for network, _ in entries})
        return cls(names, networks, aliases, {n: frozenset(nets) for n, nets in above.items()})

    def has_below(self, name: str, asker: str | None = None) -> bool:
        """Is `name` (of the zone) the zone's apex, or above a name of this table that
        `asker` sees (`app.shoal` above `db.app.shoal`)? Such a name exists without records
        of its own: no data, never NXDOMAIN (RFC 8020: that would deny every name below).
        The names that a search domain's fallback (`lookup`) answers have no such names
        above them: `web.nope.shoal` answers, `nope.shoal` is still NXDOMAIN."""
        name = name.lower().rstrip(".")
        if name == ZONE:
            return True
        networks = self.above.get(name)
        if networks is None:
            return False
        if asker is None:
            return True
        mine = _CLUSTER if asker == OUTSIDER else self.networks.get(asker, _NOWHERE)
        return not mine.isdisjoint(networks)

    def sees(self, asker: str | None, network: str) -> bool:
        """Is a container of service `asker` on `network` (None: the host, on every one)?"""
        if asker is None:
            return True
        mine = _CLUSTER if asker == OUTSIDER else self.networks.get(asker, _NOWHERE)
        return network in mine

    def resolve(self, name: str, asker: str | None = None) -> Target | None:
        """What `name` means to a container of service `asker` (None: the host): a service
        name it shares a network with (`lookup`, `shares`), else an alias held on one of its
        networks (decision 73). An alias held on two of the asker's networks by two
        services answers the service of the first network by name; a service's own name
        is never shadowed by another's alias."""
        found = self.lookup(name)
        if found is not None and self.shares(asker, found.service):
            return found
        name = name.lower().rstrip(".")
        forms = [name]
        if name.endswith(f".{ZONE}"):
            head, _, stack = name[: -len(ZONE) - 1].rpartition(".")
            if head and stack:
                forms.append(head)
        for form in forms:
            for network, target in self.aliases.get(form, ()):
                if self.sees(asker, network):
                    return target
        return None

    def srv_resolve(self, name: str, asker: str | None = None) -> tuple[str, Target] | None:
        """`_x._tcp.<name>` or `<name>` as `resolve` answers it: the name without its `_`
        labels, and its target."""
        labels = name.lower().rstrip(".").split(".")
        while labels and labels[0].startswith("_"):
            labels.pop(0)
        base = ".".join(labels)
        target = self.resolve(base, asker)
        return (base, target) if target is not None else None

    def shares(self, asker: str | None, service: str) -> bool:
        """May a container of service `asker` see and reach `service`? Only when they share a
        network (decision 64). `asker` None: the host itself, which sees every service;
        `OUTSIDER`: a container shoal did not start, on the cluster network only."""
        if asker is None:
            return True
        mine = _CLUSTER if asker == OUTSIDER else self.networks.get(asker, _NOWHERE)
        return not mine.isdisjoint(self.networks.get(service, _NOWHERE))

    def lookup(self, name: str) -> Target | None:
        """The target of `name`; a name under a stack's search domain (`<x>.<stack>.shoal`)
        that is none of that stack's services is looked up as `<x>`, as if the resolver had
        gone on down its search list (busybox's and some others stop at the first NXDOMAIN)."""
        name = name.lower().rstrip(".")
        found = self.names.get(name)
        if found is None and name.endswith(f".{ZONE}"):
            head, _, stack = name[: -len(ZONE) - 1].rpartition(".")
            if head and stack:
                found = self.names.get(head)
        return found


def _add_above(above: dict[str, set[str]], form: str, networks: Iterable[str]) -> None:
    """Record the names of the zone between `form` and the zone's apex, seen from `networks`."""
    if not form.endswith(f".{ZONE}"):
        return
    labels = form[: -len(ZONE) - 1].split(".")
    for i in range(1, len(labels)):
        above.setdefault(".".join([*labels[i:], ZONE]), set()).update(networks)


def in_zone(name: str) -> bool:
    name = name.lower().rstrip(".")
    return name == ZONE or name.endswith(f".{ZONE}")


def search_domains(stack: str | None) -> tuple[str, ...]:
    """The search list of a container of `stack`: its services answer by their short name."""
    return (f"{stack}.{ZONE}",) if stack else ()
