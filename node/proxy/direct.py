"""Local replicas by container address: no docker-proxy hop (issue 17, item 5).

The agent publishes each replica's address on its Docker network with its endpoint
(`EndpointRecord.container_address`, empty from agents that predate it). The mesh of the
node that runs the replica then connects to `<container address>:<container port>`
instead of `<node address>:<host port>`, which Docker's userland `docker-proxy` would
relay once more (client -> shoal -> docker-proxy -> container).

Only where the container's network is attached to this host: its address falls in a
network routed on-link here (a route without gateway in `/proc/net/route`, such as
docker0's 172.17.0.0/16). A daemon in its own network namespace (the netns test beds)
reaches the containers of the host only through a gateway, if at all: there, and for
every replica of another node, the published port is used as before.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from node.model.domain import EndpointRecord

log = logging.getLogger(__name__)

ROUTES = Path("/proc/net/route")
RTF_UP, RTF_GATEWAY = 0x1, 0x2
REFRESH = 5.0
"""Seconds an on-link table read from /proc is reused (networks Docker creates later
are seen within this time)."""


def direct(
    endpoints: Iterable[EndpointRecord], node: str, reachable: Callable[[str], bool]
) -> list[EndpointRecord]:
    """`endpoints` with every replica of `node` whose container address is `reachable`
    rewritten to that address and its container ports; the others unchanged."""
    out = []
    for e in endpoints:
        if e.node == node and e.container_address and reachable(e.container_address):
            ports = {k: int(k) for k in e.ports} if e.ports else {str(e.container_port): e.container_port}
            e = replace(e, address=e.container_address, port=e.container_port, ports=ports)
        out.append(e)
    return out


def parse_routes(text: str) -> list[ipaddress.IPv4Network]:
    """The networks of `/proc/net/route` reached without a gateway (up, not a default)."""
    return [net for net, _ in on_link_routes(text)]


def on_link_routes(text: str) -> list[tuple[ipaddress.IPv4Network, str]]:
    """(network, interface) of every route of `/proc/net/route` without a gateway (up, not
    a default): where a container address is reached, and through which bridge."""
    out = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            flags = int(cols[3], 16)
            dest = ipaddress.IPv4Address(int(cols[1], 16).to_bytes(4, "little"))
            mask = ipaddress.IPv4Address(int(cols[7], 16).to_bytes(4, "little"))
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except ValueError:
            continue
        if flags & RTF_UP and not flags & RTF_GATEWAY and net.prefixlen > 0:
            out.append((net, cols[0]))
    return out


def default_route_interfaces(text: str) -> set[str]:
    """The interfaces of `/proc/net/route`'s default routes (destination and mask 0): the
    host's uplinks, a bridge among them too (a host whose NIC is enslaved to `br0`)."""
    out = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
            out.add(cols[0])
    return out


class OnLink:
    """Whether an address is on a network attached to this host (see the module doc)."""

    def __init__(self, path: Path = ROUTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.clock = path, clock
        self._nets: list[ipaddress.IPv4Network] = []
        self._read_at: float | None = None

    def networks(self) -> list[ipaddress.IPv4Network]:
        now = self.clock()
        if self._read_at is None or now - self._read_at >= REFRESH:
            try:
                self._nets = parse_routes(self.path.read_text())
            except OSError as exc:
                log.warning(
                    "cannot read %s (%s): local replicas through their published ports", self.path, exc
                )
                self._nets = []
            self._read_at = now
        return self._nets

    def __call__(self, address: str) -> bool:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks())
