"""Ingress-route ownership: who may route an ingress (host, path prefix) (decision 77).

An ingress route belongs to one service incarnation, recorded in `ingress/<host>/<path>`
(`Keys.route`: the host lowercased without a trailing dot, the path without a trailing
`/`, `/` by default; the same route the entrance matches) and claimed and freed in the
same etcd transaction as the service write by the claim-key core (`node.store.claims`),
as published ports are. So of two applies racing for one route through two nodes
exactly one is written; the other gets FAILED_PRECONDITION naming the owner.

The API still reads `services/` before the write (`node.api.ingress_check`): that check
gives the early answer and refuses another TLS secret for a host; the claim is what
makes a route exclusive. Services written before route claims existed claim their
routes on their next write; until then another service's claim of one is refused by
reading their records (`node.store.claims`).
"""

from __future__ import annotations

from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.model.spec_ingress import IngressRule, route_taken
from node.store import claims
from node.store.claims import Refusal, Taken


class RouteTaken(Taken):
    """An ingress route belongs to another service; the message names it."""


def _refusal(index: int, rule: IngressRule) -> Refusal:
    return lambda owner: RouteTaken(route_taken(index, rule, owner), owner)


def _needs(keys: Keys, spec: ServiceSpec | None) -> dict[str, Refusal]:
    out: dict[str, Refusal] = {}
    for i, rule in enumerate(spec.ingress or () if spec is not None else ()):
        out.setdefault(keys.route(rule.host, rule.path), _refusal(i, rule))
    return out


ROUTES = claims.Kind(_needs, "ingress routes")
