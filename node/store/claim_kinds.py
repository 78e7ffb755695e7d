"""Every kind of claim key a service write carries (`node.store.claims`): published ports,
ingress routes, network aliases. The writers (`node.api.services`, `node.api.stacks`,
`leader.rollback`) pass `ALL`, so a new kind is added here once."""

from __future__ import annotations

from node.store.aliases import ALIASES
from node.store.ingress_claims import ROUTES
from node.store.ports import PORTS

ALL = (PORTS, ROUTES, ALIASES)
