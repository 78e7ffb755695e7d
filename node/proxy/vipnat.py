"""Service VIPs in the kernel: the nftables table that sends a container's new connection
to `<VIP>:<port>` straight to a replica (decision 74, docs/names.md "The kernel path").

The userland VIP listener (`node.proxy.vips`) costs a proxy hop per connection; here, for
every VIP port this node serves, a rule in the `nat` prerouting hook rewrites the
destination of a container's first packet (DNAT) to the next replica, round robin per
connection (`numgen inc mod N map {...}`), and conntrack carries the rest of the
connection, both ways, with no process in the path. A VIP port gets a rule only when:

- its protocol is `tcp` or `http` (per connection, as Swarm's IPVS balances); `grpc` and
  `http2` ports keep the mesh, which balances per stream (one connection would pin one
  replica), and so do ports with `proxy_protocol` (the header is written by the proxy);
- every routable replica runs in this host's engine, on a network on-link here (its
  container address is reachable without a gateway), and publishes the port: a VIP with
  a replica on another host keeps the listener, which reaches it through the mesh
  (balanced over all replicas, retried);
- some container may reach the service (decision 64): the rule matches only sources in
  the set of container addresses that share a network with the service. Anything else
  (a container on another network, one started since the engine was last listed, the
  host itself, whose packets take the output hook) reaches the listener, which judges
  it as before;
- and never from the service's own replicas: a connection DNATed back to the container
  it came from would have to leave the bridge by the port it entered (hairpin, off on
  Docker's ports), and is dropped. A replica calling its own service goes through the
  listener.

Every other VIP port is left to the listener: no rule, nothing rewritten.

The table is named per cluster and node (`table_name`): several `shoal dev` nodes on one
host each replace only their own. `script` is one `nft -f` transaction that creates,
deletes and defines the table again, so the kernel switches from the old rules to the
new ones at once, with no moment without rules and no rule left from before.

Every address, port and name put in the text is checked here (IPv4, 1-65535, a safe
identifier): what etcd or the engine hold never becomes nft syntax.

Pure: no subprocess, no sockets, no etcd.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from node.model.domain import EndpointRecord

KERNEL_PROTOCOLS = frozenset({"tcp", "http"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_MAX_TABLE = 64  # characters of a table name (nft allows 256; shorter reads better)


@dataclass(frozen=True)
class VipPort:
    """One port of a service's VIP that this node serves (its listener is bound here)."""

    service: str
    vip: str
    port: int  # the container port, which is also the VIP's port
    protocol: str = "tcp"
    proxy_v2: bool = False


@dataclass(frozen=True)
class Rule:
    """DNAT new connections from `sources` to `vip:port`, in turn, to `targets` (container
    addresses, sorted) on the same port."""

    service: str
    vip: str
    port: int
    targets: tuple[str, ...]
    sources: frozenset[str]


def table_name(cluster: str, node: str) -> str:
    """`shoal_vip_<cluster>_<node>`, made safe for nft; a long one ends in a hash of both."""
    name = "shoal_vip_" + _UNSAFE.sub("_", f"{cluster}_{node}")
    if len(name) <= _MAX_TABLE:
        return name
    digest = hashlib.sha256(f"{cluster}\0{node}".encode()).hexdigest()[:12]
    return f"{name[: _MAX_TABLE - 13]}_{digest}"


def _ipv4(text: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return None


def choose(
    vp: VipPort,
    endpoints: Iterable[EndpointRecord],
    local: Mapping[str, str],
    sources: Collection[str],
) -> Rule | str:
    """The rule for `vp`, or why it stays with the listener.

    `endpoints`: the routable replicas (any service; `vp.service`'s are taken);
    `local`: task id -> container address of the running containers of this host's engine
    whose address is on-link here; `sources`: addresses of containers that may reach
    `vp.service` (its own replicas among them are left out: no hairpin)."""
    if vp.protocol not in KERNEL_PROTOCOLS:
        return f"{vp.protocol} port: balanced per stream by the mesh"
    if vp.proxy_v2:
        return "proxy_protocol port: the header is written by the mesh"
    if _ipv4(vp.vip) is None or not 0 < vp.port < 65536:
        return f"not a VIP port: {vp.vip}:{vp.port}"
    targets: set[str] = set()
    for e in endpoints:
        if e.service != vp.service or not e.host_port(vp.port):
            continue
        address = local.get(e.task_id)
        if address is None or address != e.container_address or _ipv4(address) is None:
            return f"replica {e.task_id} is not reachable here by container address (on {e.node})"
        targets.add(address)
    if not targets:
        return "no routable replica"
    allowed = frozenset(a for s in sources if (a := _ipv4(s)) is not None) - targets
    if not allowed:
        return "no container may reach it"
    return Rule(vp.service, vp.vip, vp.port, tuple(sorted(targets, key=ipaddress.IPv4Address)), allowed)


def _comment(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", text)[:100]


def _elements(addresses: Iterable[str]) -> str:
    return ", ".join(sorted(addresses, key=ipaddress.IPv4Address))


def body(table: str, rules: Iterable[Rule]) -> str:
    """The table's definition: one source set per distinct set of allowed sources, one
    chain hooked at prerouting (dstnat priority), one rule per VIP port."""
    rules = sorted(rules, key=lambda r: (ipaddress.IPv4Address(r.vip), r.port))
    sets: dict[frozenset[str], str] = {}
    lines = [f"table ip {table} {{"]
    for r in rules:
        if r.sources not in sets:
            name = sets[r.sources] = f"src_{len(sets)}"
            lines += [
                f"\tset {name} {{",
                "\t\ttype ipv4_addr",
                f"\t\telements = {{ {_elements(r.sources)} }}",
                "\t}",
            ]
    lines += ["\tchain prerouting {", "\t\ttype nat hook prerouting priority dstnat; policy accept;"]
    for r in rules:
        slots = ", ".join(f"{i} : {t} . {r.port}" for i, t in enumerate(r.targets))
        lines.append(
            f"\t\tip daddr {r.vip} tcp dport {r.port} ip saddr @{sets[r.sources]} "
            f"counter dnat to numgen inc mod {len(r.targets)} map {{ {slots} }} "
            f'comment "{_comment(r.service)}"'
        )
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def _checked(table: str) -> str:
    if not table or _UNSAFE.search(table):
        raise ValueError(f"not a safe nft table name: {table!r}")
    return table


def script(table: str, rules: Iterable[Rule]) -> str:
    """One `nft -f` transaction: the table as `rules` say, whatever it held before."""
    table = _checked(table)
    return f"table ip {table} {{}}\ndelete table ip {table}\n" + body(table, rules)


def removal(table: str) -> str:
    """One `nft -f` transaction deleting the table (and nothing when it is absent)."""
    table = _checked(table)
    return f"table ip {table} {{}}\ndelete table ip {table}\n"
