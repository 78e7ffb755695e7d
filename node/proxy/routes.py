"""What the routing mesh should listen on and where each listener sends traffic.

Pure: from the records etcd holds (services, endpoints, assignments, down marks) and
this node's gossip view, compute
- `listeners(services)`: one `Route` per published port of every service;
- `backends(route, ...)`: the replicas that route may use now.

Which replicas are routable is decided by the one rule in `node.model.domain` (`routable`,
`serving`, `routable_endpoints`), re-exported here for the mesh: the endpoint is
published, its task still assigned to that node for the service's current incarnation,
and its node neither marked down by the leader nor dead or gone in this node's gossip
view (gossip leads the leader's verdict by its grace period, so a dead host leaves the
rotation at once).

No sockets, no asyncio, no etcd: the mesh (`node.proxy.mesh`) feeds it from its mirrors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.model.domain import EndpointRecord, ServiceRecord, routable_endpoints, serving
from node.proxy.balancer import Backend

routable = routable_endpoints  # the one rule, in node.model.domain; kept under the mesh's names
assignments = serving


@dataclass(frozen=True, slots=True)
class Route:
    """One published port: every node listens on it and forwards to `service`'s replicas."""

    service: str
    published: int
    container_port: int
    protocol: str  # "tcp" (L4, per connection), "http" (L7, per request), "grpc"/"http2" (per stream)
    proxy_v2: bool = False  # tcp: a PROXY protocol v2 header ahead of each connection (spec proxy_protocol)


def listeners(services: Iterable[ServiceRecord]) -> dict[int, Route]:
    """Published port -> route. The API refuses a port another service publishes; should
    two records still claim one (written around the API), the first by name keeps it."""
    out: dict[int, Route] = {}
    for record in sorted(services, key=lambda r: r.name):
        for p in record.spec.ports:
            if not p.published or p.published in out:
                continue
            out[p.published] = Route(
                record.name, p.published, p.container, p.protocol, sends_proxy_v2(record, p.container)
            )
    return out


def kernel_ports(services: Iterable[ServiceRecord]) -> dict[int, str]:
    """Published port -> service, for every port with `fast_path: kernel` (decision 75;
    `node.proxy.kernel_rules.plan` keeps those whose route is that service's)."""
    out: dict[int, str] = {}
    for record in sorted(services, key=lambda r: r.name):
        for p in record.spec.ports:
            if p.published and p.fast_path == "kernel":
                out.setdefault(p.published, record.name)
    return out


def sends_proxy_v2(record: ServiceRecord, container_port: int) -> bool:
    """Whether connections to `container_port` begin with a PROXY v2 header (spec `proxy_protocol`)."""
    return container_port in (record.spec.proxy_protocol or ())


def backends(route: Route, endpoints: Iterable[EndpointRecord]) -> list[Backend]:
    """The balancer's view of `route`: one backend per routable replica publishing its port."""
    out = []
    for e in endpoints:
        if e.service != route.service:
            continue
        port = e.host_port(route.container_port)
        if port:
            out.append(Backend(e.task_id, e.address, port, e.node))
    return out
