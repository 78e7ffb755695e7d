"""The gRPC target for etcd's endpoints: host names, IPv4 and IPv6 addresses.

etcd3aio puts every endpoint in one `ipv4:` target, which gRPC refuses for a host name
(`etcd.example.test:2379`) or an IPv6 address (`[::1]:2379`): such an etcd was never
reached. `grpc_target` builds the target instead:
- one endpoint that is a host name: `dns:///name:port`. gRPC looks the name up (again
  when its connections fail) and balances over its addresses; TLS checks that name;
- addresses only: `ipv4:a:p,b:p`, or `ipv6:[a]:p,...` as soon as one is IPv6 (IPv4
  ones then IPv4-mapped, `[::ffff:a]:p`, which gRPC still dials over IPv4);
- several endpoints, some of them host names: gRPC takes one name per target, so the
  store looks the names (`host_names`) up when it connects and passes their addresses
  (`resolved`). A name that does not resolve then is left out (the other members
  serve); when no endpoint is left, the target is the first name as `dns:///`, so each
  call fails with "the host name does not resolve" and gRPC keeps looking it up.
  The store looks them up again from time to time and after failed calls, and moves
  to a new target when they changed (`node.store.etcd`): a member that moved is found.
  With TLS, such a target names no one host: the store checks one name on every
  member (`node.store.etcd`).
`localhost` stays 127.0.0.1, as etcd3aio made it (etcd's default listens there only).
Pure: no gRPC and no look-up here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

Address = IPv4Address | IPv6Address


def split(endpoint: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (an unbracketed IPv6 address before `:port` too)."""
    host, sep, port = endpoint.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"etcd endpoint {endpoint!r} is not host:port (IPv6 in brackets: [::1]:2379)")
    return host, int(port)


def literal(host: str) -> Address | None:
    """`host` as an address, or None for a host name."""
    if host == "localhost":
        return IPv4Address("127.0.0.1")
    try:
        return ip_address(host)
    except ValueError:
        return None


def host_names(endpoints: Sequence[str]) -> list[tuple[str, int]]:
    """The (name, port) pairs to look up before `grpc_target`: several endpoints only."""
    if len(endpoints) < 2:
        return []
    return [(host, port) for host, port in map(split, endpoints) if literal(host) is None]


def grpc_target(endpoints: Sequence[str], resolved: Mapping[str, Sequence[str]] | None = None) -> str:
    """The gRPC target for `endpoints`; `resolved`: the addresses each host name has."""
    parts = [split(endpoint) for endpoint in endpoints]
    if not parts:
        raise ValueError("at least one etcd endpoint is needed")
    if len(parts) == 1 and literal(parts[0][0]) is None:
        return f"dns:///{parts[0][0]}:{parts[0][1]}"
    addresses: list[tuple[Address, int]] = []
    for host, port in parts:
        found = literal(host)
        named = [found] if found is not None else [ip_address(a) for a in (resolved or {}).get(host, ())]
        addresses += [(a, port) for a in named if (a, port) not in addresses]
    if not addresses:  # host names only, none resolves
        return f"dns:///{parts[0][0]}:{parts[0][1]}"
    if all(isinstance(a, IPv4Address) for a, _ in addresses):
        return "ipv4:" + ",".join(f"{a}:{port}" for a, port in addresses)
    return "ipv6:" + ",".join(
        f"[{a if isinstance(a, IPv6Address) else f'::ffff:{a}'}]:{port}" for a, port in addresses
    )
