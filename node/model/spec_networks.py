"""The `networks` field of a service spec (issue 13, decisions 64 and 73): which networks a
service is on, and the other names (aliases) it answers by on each. Two services see
each other's names and reach each other's virtual addresses only when they share one
(`node.proxy.names.NameTable` decides it per asking container).

A network name is 1 to 63 of a-z, 0-9, '-' and '_'. In a stack (`stack:` set), a name
without '_' is the stack's own (`frontnet` in stack `app` is the network `app_frontnet`,
as Compose scopes a project's networks); a name with '_' is taken as it is, so a service
can join another stack's network (`app_backnet`). A service in no stack names networks
as they are. `None` (the field left out) is the cluster network: every service with
`None` is on it, as every service was before networks existed (decision 55).

An entry is a name (`backnet`) or a mapping (`{name: backnet, aliases: [database]}`):
the plain form keeps its meaning and its stored form, so a spec without aliases keeps
its template hash. An alias is a DNS label (1 to 63 of a-z, 0-9, '-', not at either
end): it names the service's virtual address only for containers on that network, and
only one service may hold an alias on a network (`node.store.aliases` claims it in the
service write's transaction).

Pure: imports no grpc, docker or etcd.
"""

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Discriminator, Field, Tag

from node.model.spec_resources import _STRICT, NAME_PATTERN, _fail

NETWORK_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
ALIAS_PATTERN = NAME_PATTERN
MAX_ALIASES = 16  # per service, all networks together: their claims go in the service write's transaction
CLUSTER_NETWORK = "*"  # the network of every service without `networks` (not a name one can give)


def _network(v: str) -> str:
    if not re.fullmatch(NETWORK_PATTERN, v):
        raise _fail(f"must be 1 to 63 of a-z, 0-9, '-', '_' starting with a letter or digit, got {v!r}")
    return v


def _alias(v: str) -> str:
    if not re.fullmatch(ALIAS_PATTERN, v) or len(v) > 63:
        raise _fail(
            f"an alias must be 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-' "
            f"(one DNS label: no '.', '_' or capitals), got {v!r}"
        )
    return v


NetworkName = Annotated[str, AfterValidator(_network)]
Alias = Annotated[str, AfterValidator(_alias)]


class NetworkAttachment(BaseModel):
    """One network of a service, with the aliases it answers by there."""

    model_config = _STRICT
    name: NetworkName
    aliases: Annotated[list[Alias], Field(max_length=MAX_ALIASES)] | None = None


def _form(v: object) -> str:
    return "entry" if isinstance(v, dict | NetworkAttachment) else "name"


# Tagged, so that a bad entry gets the error of its own form only (not one per form).
NetworkEntry = Annotated[
    Annotated[NetworkName, Tag("name")] | Annotated[NetworkAttachment, Tag("entry")], Discriminator(_form)
]
ENTRY_TAGS = ("name", "entry")  # in pydantic's error locations, dropped by `node.model.spec`


def _entry_name(entry: str | NetworkAttachment) -> str:
    return entry if isinstance(entry, str) else entry.name


def _aliases_fit(entries: list[str | NetworkAttachment]) -> list[str | NetworkAttachment]:
    """At most `MAX_ALIASES` in all; an alias given twice for one network is a mistake."""
    seen: dict[tuple[str, str], int] = {}
    total = 0
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            continue
        for j, alias in enumerate(entry.aliases or ()):
            total += 1
            if total > MAX_ALIASES:
                raise _fail(f"at most {MAX_ALIASES} aliases in all, over every network", (i, "aliases", j))
            if (entry.name, alias) in seen:
                where = f"networks[{seen[(entry.name, alias)]}]"
                raise _fail(
                    f"alias {alias!r} is given twice for network {entry.name!r} (and in {where})",
                    (i, "aliases", j),
                )
            seen[(entry.name, alias)] = i
    return entries


Networks = Annotated[list[NetworkEntry], Field(min_length=1, max_length=16), AfterValidator(_aliases_fit)]


def _full(name: str, stack: str | None) -> str:
    return name if "_" in name or not stack else f"{stack}_{name}"


def networks_of(networks: list[str | NetworkAttachment] | None, stack: str | None) -> frozenset[str]:
    """The networks a service is on, by their cluster-wide names."""
    if networks is None:
        return frozenset({CLUSTER_NETWORK})
    return frozenset(_full(_entry_name(n), stack) for n in networks)


def aliases_of(
    networks: list[str | NetworkAttachment] | None, stack: str | None
) -> dict[str, frozenset[str]]:
    """Cluster-wide network name -> the aliases the service holds on it (networks with none
    left out). A network listed twice holds the aliases of both entries."""
    out: dict[str, set[str]] = {}
    for entry in networks or ():
        if isinstance(entry, NetworkAttachment) and entry.aliases:
            out.setdefault(_full(entry.name, stack), set()).update(entry.aliases)
    return {net: frozenset(a) for net, a in out.items()}


def alias_paths(
    networks: list[str | NetworkAttachment] | None, stack: str | None
) -> dict[tuple[str, str], str]:
    """(network, alias) -> the field path that gives it (`networks[1].aliases[0]`), for errors."""
    out: dict[tuple[str, str], str] = {}
    for i, entry in enumerate(networks or ()):
        if isinstance(entry, NetworkAttachment):
            for j, alias in enumerate(entry.aliases or ()):
                out.setdefault((_full(entry.name, stack), alias), f"networks[{i}].aliases[{j}]")
    return out
