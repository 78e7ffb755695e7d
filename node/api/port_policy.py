"""Which ports a service may publish: never one of shoal's own, and below 1024 only by an admin.

A published port is bound on every node's address, so a deployer could otherwise take
port 22 or 80 on every host, or shoal's own ports (a node's gRPC and metrics ports,
etcd's client and peer ports): a service bound there would cut the cluster off from
itself. Checked on apply and rollback, before the write, for the ports the write adds
(a port the current version already publishes stays allowed, so a deployer can still
change the image of a service an admin published on port 80):

- reserved: the gRPC port of every registered node, this node's `grpc_port` and
  `metrics_port`, each etcd endpoint's port and the next one (etcd's peer port by
  convention, 2379/2380), and `reserved_ports` of the config → INVALID_ARGUMENT;
- below 1024 (`PRIVILEGED`): the admin role → PERMISSION_DENIED naming the rule.

The role is the authenticated caller's (`node.security.auth.current_caller`); a call
made in the process without the API (tests, tools: no caller) is not role-checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.model import readable
from node.model.domain import UnreadableRecord
from node.model.errors import InvalidArgument, PermissionDenied
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.security.auth import current_caller
from node.security.tokens import Role
from node.store import Store
from node.store.ports import published

PRIVILEGED = 1024  # ports below it need the admin role


@dataclass(frozen=True)
class PortPolicy:
    reserved: frozenset[int] = frozenset()  # this node's own ports (config); nodes' gRPC ports are read

    @classmethod
    def of(
        cls, grpc_port: int, metrics_port: int, etcd: Iterable[str], extra: Iterable[int] = ()
    ) -> PortPolicy:
        ports = {grpc_port, *extra}
        if metrics_port:
            ports.add(metrics_port)
        for endpoint in etcd:
            port = int(endpoint.rpartition(":")[2])
            ports |= {port, port + 1}
        return cls(frozenset(ports))

    async def check(self, store: Store, keys: Keys, spec: ServiceSpec, current: ServiceSpec | None) -> None:
        """Refuse a spec that adds a reserved port, or a port below 1024 without the admin role."""
        added = {port: i for port, i in published(spec).items() if port not in published(current)}
        if not added:
            return
        reserved = dict.fromkeys(self.reserved, "shoal's own ports (gRPC, metrics, etcd)")
        for kv in (await store.range(keys.nodes))[0]:
            try:
                node = readable.node(keys.tail(kv.key, keys.nodes), kv.value)
            except UnreadableRecord:  # not judged (the leader places nothing there either)
                continue
            reserved[node.grpc_port] = f"node {node.id}'s gRPC port"
        for port, i in sorted(added.items(), key=lambda item: item[1]):
            if port in reserved:
                raise InvalidArgument(
                    f"ports[{i}].published: port {port} is reserved ({reserved[port]}); choose another port"
                )
        caller = current_caller()
        low = [(i, port) for port, i in added.items() if port < PRIVILEGED]
        if low and caller is not None and caller.role is not Role.ADMIN:
            i, port = min(low)
            raise PermissionDenied(
                f"ports[{i}].published: port {port} is below {PRIVILEGED}: publishing a port below "
                f"{PRIVILEGED} needs the admin role, and {caller.token_id or 'this caller'} has role "
                f"{caller.role}; choose a port of {PRIVILEGED} or more, or ask an admin"
            )
