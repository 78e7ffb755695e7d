"""The API's check of a spec's `ingress` rules against the other services (issue 17 item 3).

A (host, path) another service routes, or another TLS secret for a host another service
serves, is refused before the write (FAILED_PRECONDITION naming the other service:
`node.proxy.ingress_routes.conflict`). This read is the early answer, not the guard: the
route itself is claimed in the write's transaction (`ingress/<host>/<path>`,
`node.store.ingress_claims`), so of two applies racing for one route exactly one is
written. The TLS secret of a host is checked by this read only.
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
