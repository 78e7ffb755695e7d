"""The kernel fast path for `tcp` ports (issue 17 item 4, decision 75): the nftables text.

A published `tcp` port with `fast_path: kernel` is DNATed by the node's kernel, one
choice per new connection, round robin (`numgen inc`), to the node's own routable
replicas at their container address and port (as the mesh reaches them, decision 63).
Only the first packet of a connection meets the nat chains; conntrack carries the rest,
so an established connection keeps its replica when the table changes.

Which replicas: this node's only (a "local" traffic policy). A remote replica would be
reached by forwarding the packet to another host, which needs masquerading on the way
back and forwarding through Docker's FORWARD policy (drop); the userland mesh already
does that job with retries. So a port gets a rule only on the nodes that run one of its
replicas; elsewhere (and while a node has none healthy) no rule matches and the
userland listener, bound on the same port all along, serves it over the remote
replicas. Where both exist the rule wins: nat prerouting/output rewrite the SYN before
any socket sees it.

The text is one transaction for `nft -f -`: the table (created if absent), `flush
table`, then every chain and rule. Applied whole on every change, never as a delta, so a
daemon restarted after a crash needs no history, and a packet sees the old rules or the
new ones, never a mix. Tables are per cluster and node (`table_name`): several `shoal
dev` nodes share one kernel, and one node's flush must not wipe another's rules.

Counters: each port's rules (prerouting for other hosts' clients, output for this
host's) share one named counter object, `conn_<port>`, declared in the table. `flush
table` empties the chains but keeps named objects, and declaring one that exists keeps
its value, so a count survives every swap of the rules (endpoint changes) and a daemon
restart; it starts again from 0 only when the table is removed (no port left, a
fallback). A nat chain sees the first packet of each connection only, so the count is
of connections DNATed (its bytes are the SYNs', not exported). A port that stops being
served here keeps its counter object until the table goes, and counts on if it comes
back. Read back with `nft -j list counters` (`counts`).

Loopback clients (a node address in 127.0.0.0/8, as on a dev cluster): a connection
from 127.0.0.1 DNATed to a container would leave with a loopback source, which the
kernel drops as a martian and the container could not answer. Two rules fix it, as
kube-proxy's do: the bridge towards the replicas gets `route_localnet` (set by the
shell, `node.proxy.kernel_path`, on those interfaces only), and those connections are
masqueraded (`ct original` daddr and port match this table's own ports only).
`route_localnet` also lets a neighbour on that bridge send to 127.0.0.0/8 (the
CVE-2020-8558 of kube-proxy): the `input` chain drops new connections to 127.0.0.0/8
arriving on those interfaces.

Clients the prerouting rules leave to the listener (the `output` chain, the host's own
clients, has neither concern):
- containers on the host's bridges (`iifname != { … }`: every bridge a target of any
  port is reached through, `interfaces(..., containers_only=True)`, and every other
  container bridge the shell finds, `node.proxy.kernel_path`: one on another Docker
  network is dropped by Docker's isolation once DNATed to docker0). Such a client DNATed
  to a replica on its own bridge gets the reply straight over the bridge, untranslated
  unless br_netfilter is loaded, and a replica DNATed back to itself needs hairpin mode on
  Docker's port and is dropped (decision 74, which keeps a VIP's own replicas off its rule
  for the same reason). Docker, with its userland proxy (the default), skips its own
  published-port DNAT for traffic from its bridges too;
- with node address 0.0.0.0, the VIPs: `fib daddr type local` also matches the whole
  `vip_range`, routed local to the host (`node.proxy.vips.prepare_host`), so a VIP port
  equal to a fast-path port would be taken from the VIP's listener and rules. The rule
  matches `ip daddr != { <vip_range> }` too (`vips`), in both chains.

A local replica reached at its publish address rather than its container address (not
on-link here, or `proxy_direct = false`) is DNATed there: the kernel delivers it to the
host's published port. Published on every address (0.0.0.0) it cannot be a DNAT target:
`plan` leaves the port to the userland listener (which connects there as before), as a
port with no local replica; leaving that one replica out of the rule would starve it.

Hostile records: addresses and ports come from etcd (endpoint records any agent
writes); a target that is not an IPv4 address and a port is left out, so nothing but
numbers ever reaches the text.

Pure: no I/O, no clock; `node.proxy.kernel_path` applies the text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from node.model.domain import EndpointRecord
from node.proxy import routes
from node.proxy.routes import Route

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_IFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_WORD = re.compile(r"[^a-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class KernelPort:
    """One published port served by the kernel: its local replicas, in rotation order."""

    service: str
    published: int
    targets: tuple[tuple[str, int], ...]  # (IPv4 address, port), at least one
    containers: frozenset[str] = frozenset()  # the targets' addresses that are container
    #   addresses (reached over a bridge), not the host's own published ports


def table_name(cluster: str, node: str) -> str:
    """This node's own table: `shoal_ports_<cluster>_<node>` (both `[a-z0-9-]`, checked by
    the config; anything else is replaced, never passed through)."""
    return table_prefix(cluster) + _name(node)


def table_prefix(cluster: str) -> str:
    """What every table of `cluster`'s nodes begins with."""
    return f"shoal_ports_{_name(cluster)}_"


def is_table_of(table: str, cluster: str) -> bool:
    """Whether `table` is a node's table of `cluster` (no other cluster's, no other tool's)."""
    return re.fullmatch(re.escape(table_prefix(cluster)) + r"[a-z0-9-]+", table) is not None


def _name(part: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", part.lower())[:63] or "x"


def plan(
    wanted: Mapping[int, Route], kernel: Mapping[int, str], endpoints: Iterable[EndpointRecord], node: str
) -> list[KernelPort]:
    """The ports to DNAT: each published port of `kernel` (port -> the service asking,
    `routes.kernel_ports`) whose route is that service's, `tcp` without a PROXY header,
    with at least one routable replica on `node`; by port. A port with a local replica
    published on 0.0.0.0 (no address to DNAT to) is left out: the listener serves it."""
    endpoints = list(endpoints)
    container = {e.task_id: e.container_address for e in endpoints if e.node == node}
    out = []
    for port in sorted(kernel):
        route = wanted.get(port)
        if route is None or route.service != kernel[port] or route.protocol != "tcp" or route.proxy_v2:
            continue
        local = [
            b for b in routes.backends(route, endpoints) if b.node == node and _target(b.address, b.port)
        ]
        if any(ipaddress.IPv4Address(b.address).is_unspecified for b in local):
            continue
        if local:
            containers = frozenset(b.address for b in local if b.address == container.get(b.key))
            out.append(KernelPort(route.service, port, tuple((b.address, b.port) for b in local), containers))
    return out


def _target(address: str, port: int) -> bool:
    return ipv4(address) and isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535


def ipv4(address: str) -> bool:
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return True


def interface_name(name: str) -> bool:
    """Whether `name` may be written into the text as an interface name."""
    return _IFACE.fullmatch(name) is not None


def loopback_clients(address: str) -> bool:
    """Whether clients on this host reach the node's ports from 127.0.0.0/8."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return ip in LOOPBACK or ip.is_unspecified


def interfaces(
    ports: Iterable[KernelPort],
    on_link: Sequence[tuple[ipaddress.IPv4Network, str]],
    containers_only: bool = False,
) -> list[str]:
    """The interfaces the targets are reached through (the longest on-link prefix of
    each), sorted: where loopback clients need `route_localnet`. `containers_only`: of
    the container addresses among them only, the bridges whose clients the prerouting
    rules leave to the listener (a host address is on-link through the uplink)."""
    out: set[str] = set()
    for p in ports:
        for address, _ in p.targets:
            if containers_only and address not in p.containers:
                continue
            ip = ipaddress.IPv4Address(address)
            nets = [(net, iface) for net, iface in on_link if ip in net and _IFACE.fullmatch(iface)]
            if nets:
                out.add(max(nets, key=lambda n: n[0].prefixlen)[1])
    return sorted(out)


def ruleset(
    table: str,
    address: str,
    ports: Sequence[KernelPort],
    localnet: Sequence[str] = (),
    bridges: Sequence[str] = (),
    vips: Sequence[ipaddress.IPv4Network] = (),
) -> str:
    """The whole table as one `nft -f -` transaction; with no port, the table's removal.
    `address` is the node's (0.0.0.0: every local address but `vips`, the VIP ranges);
    `localnet` the interfaces given `route_localnet` (`interfaces`), guarded in the
    `input` chain; `bridges` those whose clients prerouting leaves to the listener
    (module doc)."""
    if not ports:
        return removal(table)
    ip = ipaddress.IPv4Address(address)
    match_dst = f"ip daddr {ip}"
    if ip.is_unspecified:
        nets = ", ".join(str(ipaddress.IPv4Network(n)) for n in vips)
        match_dst = "fib daddr type local" + (f" ip daddr != {{ {nets} }}" if nets else "")
    rules = [
        f'{match_dst} tcp dport {p.published} counter name "{counter_name(p.published)}" '
        f"{_dnat(p)} comment {_quote(p.service)}"
        for p in ports
    ]
    bridged = ", ".join(f'"{i}"' for i in bridges if _IFACE.fullmatch(i))
    skip = f"iifname != {{ {bridged} }} " if bridged else ""
    lines = [f"table ip {table}", f"flush table ip {table}", f"table ip {table} {{"]
    for p in ports:  # named: `flush table` empties chains, not objects, so a count outlives swaps
        lines += [f"  counter {counter_name(p.published)} {{", "  }"]
    prerouting = [skip + r for r in rules]
    lines += _chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", prerouting)
    lines += _chain("output", "type nat hook output priority -100; policy accept;", rules)
    if loopback_clients(address):
        orig_dst = "" if ip.is_unspecified else f"ct original ip daddr {ip} "
        published = ", ".join(str(p.published) for p in ports)
        masq = (
            f"ip saddr {LOOPBACK} ct status dnat {orig_dst}meta l4proto tcp "
            f"ct original proto-dst {{ {published} }} masquerade"
        )
        lines += _chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;", [masq])
        guard = []
        if localnet:
            names = ", ".join(f'"{i}"' for i in localnet if _IFACE.fullmatch(i))
            guard = [f"iifname {{ {names} }} ip daddr {LOOPBACK} ct state != {{ established, related }} drop"]
        lines += _chain("input", "type filter hook input priority filter; policy accept;", guard)
    lines.append("}")
    return "\n".join(lines) + "\n"


def counter_name(published: int) -> str:
    """The named counter of a published port's rules (prerouting and output share it)."""
    return f"conn_{published}"


def counts(listing: object) -> dict[int, int]:
    """`nft -j list counters table ip T` read back: published port -> connections its
    rules DNATed (a counter in the nat chains sees a connection's first packet only).
    Whatever is not one of this module's counters is ignored."""
    out: dict[int, int] = {}
    items = listing.get("nftables", []) if isinstance(listing, dict) else []
    for item in items if isinstance(items, list) else []:
        counter = item.get("counter") if isinstance(item, dict) else None
        if not isinstance(counter, dict):
            continue
        name, packets = counter.get("name"), counter.get("packets")
        match = re.fullmatch(r"conn_(\d{1,5})", name) if isinstance(name, str) else None
        if match and isinstance(packets, int) and not isinstance(packets, bool):
            out[int(match[1])] = packets
    return out


def removal(table: str) -> str:
    """The table's removal; a no-op when it is absent (it is declared first)."""
    return f"table ip {table}\ndelete table ip {table}\n"


def _dnat(p: KernelPort) -> str:
    if len(p.targets) == 1:
        address, port = p.targets[0]
        return f"dnat to {address}:{port}"
    entries = ", ".join(f"{i} : {a} . {port}" for i, (a, port) in enumerate(p.targets))
    return f"dnat to numgen inc mod {len(p.targets)} map {{ {entries} }}"


def _chain(name: str, head: str, rules: Sequence[str]) -> list[str]:
    return [f"  chain {name} {{", f"    {head}", *(f"    {r}" for r in rules), "  }"]


def _quote(text: str) -> str:
    return '"' + _WORD.sub("_", text.lower())[:64] + '"'
