"""What the routing mesh should listen on and where each listener sends traffic.

Pure: from the records etcd holds (services, endpoints, assignments, down marks) and
this node's gossip view, compute
- `listeners(services)`: one `Route` per published port of every service;
- `backends(route, ...)`: the replicas that route may use now.

A replica is routable when its endpoint is published (the agent publishes only running
replicas, and withdraws one before stopping it), its task is still assigned to the node
that published it (a task the leader moved elsewhere is not), and its node is neither
marked down by the leader nor dead or gone in this node's gossip view (gossip leads the
leader's verdict by its grace period, so a dead host leaves the rotation at once).

No sockets, no asyncio, no etcd: the mesh (`node.proxy.mesh`) feeds it from its mirrors.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from node.domain import Assignment, EndpointRecord, ServiceRecord
from node.proxy.balancer import Backend


@dataclass(frozen=True, slots=True)
class Route:
    """One published port: every node listens on it and forwards to `service`'s replicas."""

    service: str
    published: int
    container_port: int
    protocol: str  # "tcp" (L4, per connection) or "http" (L7, per request)


def listeners(services: Iterable[ServiceRecord]) -> dict[int, Route]:
    """Published port -> route. The API refuses a port another service publishes; should
    two records still claim one (written around the API), the first by name keeps it."""
    out: dict[int, Route] = {}
    for record in sorted(services, key=lambda r: r.name):
        for p in record.spec.ports:
            if not p.published or p.published in out:
                continue
            out[p.published] = Route(record.name, p.published, p.container, p.protocol)
    return out


def routable(
    endpoints: Iterable[EndpointRecord],
    assigned: Collection[tuple[str, str]],
    gone: Collection[str],
) -> list[EndpointRecord]:
    """The endpoints traffic may go to, sorted by task id. `assigned` holds the
    (task id, node) of every current assignment; `gone` the nodes not to use."""
    out = [e for e in endpoints if (e.task_id, e.node) in assigned and e.node not in gone]
    return sorted(out, key=lambda e: e.task_id)


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


def assignments(tasks: Iterable[Assignment]) -> set[tuple[str, str]]:
    """(task id, node) of every assigned task, and of every old task a handoff keeps
    serving its slot until the new one is ready (a start-first update)."""
    out = set()
    for t in tasks:
        out.add((t.task_id, t.node))
        if t.handoff:
            out.add((str(t.handoff.get("task_id")), str(t.handoff.get("node"))))
    return out
