"""The API's check of a spec's `ingress` rules against the other services (issue 17 item 3).

A (host, path) another service routes, or another TLS secret for a host another service
serves, is refused before the write (FAILED_PRECONDITION naming the other service:
`node.proxy.ingress_routes.conflict`). The check reads `services/` and is not part of
the write's transaction: two applies racing for one (host, path) may both pass; then
every node routes it to the service first by name (`node.proxy.ingress_routes.build`),
and the next apply of the other is refused.
"""

from __future__ import annotations

from node.model.domain import readable_services
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.proxy.ingress_routes import conflict
from node.store import Store


async def check_ingress(store: Store, keys: Keys, spec: ServiceSpec) -> None:
    """Refuse `spec` when its ingress rules collide with another service's."""
    if not spec.ingress:
        return
    kvs, _ = await store.range(keys.services)
    problem = conflict(spec, readable_services(kv.value for kv in kvs))
    if problem is not None:
        raise FailedPrecondition(f"{spec.name}: {problem}")
