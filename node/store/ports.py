"""Published-port ownership: who may publish a port on every node's proxy.

A published port belongs to one service incarnation (name and uid), recorded in
`ports/<published>` (`PortClaim`), claimed and freed in the same etcd transaction as the
service write by the claim-key core (`node.store.claims`: the rules, the takeover of a
stale claim, services written before claims existed). This module says which keys a
spec needs (`PORTS`) and how a taken port is refused (`PortTaken`).

Every writer claims ports and ingress routes (`node.store.ingress_claims`) together:
`claims.service_writes(store, keys, (PORTS, ROUTES), ...)`.
"""

from __future__ import annotations

from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.store import claims
from node.store.claims import Refusal, Taken


class PortTaken(Taken):
    """A published port belongs to another service; the message names it."""

    def __init__(self, port: int, owner: str, where: str = "") -> None:
        where = f"{where}: " if where else ""
        super().__init__(
            f"{where}port {port} is already published by service '{owner}'; "
            f"choose another port, or remove '{owner}' first",
            owner,
        )
        self.port = port


def published(spec: ServiceSpec | None) -> dict[int, int]:
    """Published port -> its index in `ports` (for error paths like `ports[1].published`)."""
    out: dict[int, int] = {}
    for i, p in enumerate(spec.ports if spec is not None else ()):
        if p.published:
            out.setdefault(p.published, i)
    return out


def _refusal(port: int, index: int) -> Refusal:
    return lambda owner: PortTaken(port, owner, f"ports[{index}].published")


def _needs(keys: Keys, spec: ServiceSpec | None) -> dict[str, Refusal]:
    return {keys.port(port): _refusal(port, index) for port, index in published(spec).items()}


PORTS = claims.Kind(_needs, "published ports")
