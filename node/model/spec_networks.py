"""The `networks` field of a service spec (issue 13, decision 64): which networks a
service is on. Two services see each other's names and reach each other's virtual
addresses only when they share one (`node.proxy.netscope` decides it per asking
container).

A name is 1 to 63 of a-z, 0-9, '-' and '_'. In a stack (`stack:` set), a name without
'_' is the stack's own (`frontnet` in stack `app` is the network `app_frontnet`, as
Compose scopes a project's networks); a name with '_' is taken as it is, so a service
can join another stack's network (`app_backnet`). A service in no stack names networks
as they are. `None` (the field left out) is the cluster network: every service with
`None` is on it, as every service was before networks existed (decision 55).

Pure: imports no grpc, docker or etcd.
"""

import re
from typing import Annotated

from pydantic import AfterValidator

from node.model.spec_resources import _fail

NETWORK_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
CLUSTER_NETWORK = "*"  # the network of every service without `networks` (not a name one can give)


def _network(v: str) -> str:
    if not re.fullmatch(NETWORK_PATTERN, v):
        raise _fail(f"must be 1 to 63 of a-z, 0-9, '-', '_' starting with a letter or digit, got {v!r}")
    return v


NetworkName = Annotated[str, AfterValidator(_network)]


def networks_of(networks: list[str] | None, stack: str | None) -> frozenset[str]:
    """The networks a service is on, by their cluster-wide names."""
    if networks is None:
        return frozenset({CLUSTER_NETWORK})
    return frozenset(n if "_" in n or not stack else f"{stack}_{n}" for n in networks)
