"""Compose `networks:` onto shoal's (issue 13, decision 64): which networks each service
is on, so that a service sees and reaches only those that share one with it.

- Top level: `networks: {frontnet: {}, backnet: {}}` declares the names a service may
  use (each becomes the stack's `<stack>_<name>`). `external: true` joins a network of
  another stack: its `name:` (or the key) must then be that network's full name,
  `<stack>_<network>`. `driver` (bridge, overlay), `attachable`, `internal`, `labels`,
  `ipam`, `driver_opts`, `enable_ipv6` are ignored with a warning: shoal's networks are
  scopes enforced by its name server and VIP listeners, not Docker networks.
- A service's `networks:` (a list of names, or a mapping whose values may carry
  `aliases`, kept (decision 73), and `ipv4_address`, `priority`, ... : ignored with a
  warning) becomes `networks: [...]`, an entry with aliases `{name, aliases}`; `default`
  needs no declaration. A name not declared is an error, as in Compose.
- A service without `networks:` is left on the cluster network (every service without
  networks), not on a `<stack>_default` of its own: see docs/names.md.

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from node.model.spec_networks import NETWORK_PATTERN

Report = Callable[[Any, Any, str, str], None]  # (node, key, path, message)

_IGNORED = ("driver", "attachable", "internal", "labels", "ipam", "driver_opts", "enable_ipv6")
_IGNORED_SERVICE = ("ipv4_address", "ipv6_address", "link_local_ips", "priority", "mac_address")
_WHY = "shoal's networks are scopes kept by its name server and VIP listeners, not Docker networks"


def declared(data: Any, run: Any, at: Callable[[Any, Any], Any]) -> dict[str, str]:
    """The top-level `networks:`: Compose name -> the name a service spec gives. `run`
    reports (`error(where, path, message)`, `warn(...)`); `at(node, key)` is a key's place."""

    def error(node: Any, key: Any, path: str, message: str) -> None:
        run.error(at(node, key), path, message)

    def warn(node: Any, key: Any, path: str, message: str) -> None:
        run.warn(at(node, key), path, message)

    top = data.get("networks")
    out = {"default": "default"}
    if top is None:
        return out
    if not isinstance(top, dict):
        error(data, "networks", "networks", "must be a mapping of network names")
        return out
    for name, body in top.items():
        key = str(name)
        path = f"networks.{key}"
        if not re.fullmatch(NETWORK_PATTERN, key):
            error(top, name, path, "a network name is 1 to 63 of a-z, 0-9, '-', '_'")
            continue
        body = body if isinstance(body, dict) else {}
        given = key
        for k, v in body.items():
            if k in _IGNORED:
                warn(body, k, f"{path}.{k}", f"ignored: {_WHY}")
            elif k == "name":
                given = str(v)
            elif k != "external":
                error(body, k, f"{path}.{k}", "unknown network key")
        if body.get("external"):
            if "_" not in given or not re.fullmatch(NETWORK_PATTERN, given):
                why = f"an external network is another stack's: name it <stack>_<network>, not {given!r}"
                error(body, "external", f"{path}.external", why)
                continue
        elif "name" in body:
            warn(body, "name", f"{path}.name", f"ignored: the network is the stack's {key}")
            given = key
        out[key] = given
    return out


def service_networks(body: Any, names: dict[str, str], error: Report, warn: Report) -> list[Any]:
    """A service's `networks:` (in its mapping `body`) as shoal's, each problem reported:
    a name, or `{name, aliases}` for a network whose entry gives `aliases` (decision 73)."""
    value = body["networks"]
    if isinstance(value, list):
        items: list[tuple[Any, Any]] = [(n, None) for n in value]
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        error(body, "networks", "networks", "must be a list of network names or a mapping")
        return []
    out: list[Any] = []
    aliases: dict[str, list[Any]] = {}
    for name, extra in items:
        key = str(name)
        if key not in names:
            why = f"undefined network {key!r}: declare it under the top-level networks:"
            error(body, "networks", f"networks.{key}", why)
            continue
        for k, v in extra.items() if isinstance(extra, dict) else ():
            if k == "aliases":
                if isinstance(v, list):
                    aliases.setdefault(names[key], []).extend(v)
                else:
                    error(extra, k, f"networks.{key}.aliases", "must be a list of names")
            elif k in _IGNORED_SERVICE:
                warn(extra, k, f"networks.{key}.{k}", f"ignored: {_WHY}")
            else:
                error(extra, k, f"networks.{key}.{k}", "unknown key")
        if names[key] not in out:
            out.append(names[key])
    return [{"name": n, "aliases": aliases[n]} if aliases.get(n) else n for n in out]
