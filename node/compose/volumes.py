"""Compose `volumes:` onto shoal's (issue 13, item 5): named volumes only.

- Top level: `volumes: {data: {}}` declares the names a service may use. `driver` other
  than `local`, `driver_opts` and `external: true` are refused (shoal makes one local
  volume per slot itself); `labels` and `name` are ignored with a warning.
- A service's `volumes:`, short (`data:/var/lib/x`, `data:/var/lib/x:ro`) or long
  (`{type: volume, source: data, target: /var/lib/x, read_only: true}`), becomes
  `volumes: [{name, target, read_only}]`. A bind mount (a source that is a path, or
  `type: bind`) is for admins only, and the caller's role is not known when the file is
  read: it is refused, with a line saying to use a named volume. Anonymous volumes
  (`/var/lib/x` alone) and `tmpfs` are refused too.

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Report = Callable[[Any, Any, str, str], None]  # (node, key, path below the service, message)

BIND = (
    "bind mounts are for admins only and the role is not known when the file is read: "
    "use a named volume (declared under the top-level volumes:)"
)


def declared(
    data: Any, error: Callable[[Any, Any, str], None], warn: Callable[[Any, Any, str], None]
) -> set[str]:
    """The names under the top-level `volumes:` (errors and warnings through the callbacks)."""
    top = data.get("volumes")
    if top is None:
        return set()
    if not isinstance(top, dict):
        error(data, "volumes", "must be a mapping of volume names")
        return set()
    for name, body in top.items():
        for k, v in (body or {}).items() if isinstance(body, dict) else ():
            if (k == "driver" and v != "local") or k == "driver_opts" or (k == "external" and v):
                error(body, k, f"refused: shoal makes one local volume per slot; remove {k}")
            elif k in ("labels", "name"):
                warn(body, k, f"ignored: shoal names and labels the volume of each slot itself ({name})")
            elif k not in ("driver", "external"):
                error(body, k, "unknown volume key")
    return {str(name) for name in top}


def service_volumes(body: Any, names: set[str], error: Report) -> list[dict[str, Any]]:
    """A service's `volumes:` (in its mapping `body`) as shoal's, each problem through `error`."""
    value = body["volumes"]
    if not isinstance(value, list):
        error(body, "volumes", "volumes", "must be a list")
        return []
    out = []
    source: Any
    target: Any
    for i, item in enumerate(value):
        sub = f"volumes[{i}]"
        if isinstance(item, str):
            parts = item.split(":")
            if len(parts) == 1:
                error(value, i, sub, "anonymous volumes are refused: name it (name:/path) and declare it")
                continue
            source, target, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"
            kind, read_only = "volume", mode.split(",")[0] == "ro"
            if source.startswith(("/", ".", "~")):
                kind = "bind"
        elif isinstance(item, dict):
            kind, source, target = item.get("type", "volume"), item.get("source"), item.get("target")
            read_only = item.get("read_only", False) is True
        else:
            error(value, i, sub, "must be a string (name:/path) or a mapping")
            continue
        if kind == "bind":
            error(value, i, sub, f"refused: {BIND}")
        elif kind != "volume":
            error(value, i, sub, f"refused: type {kind} is not supported; use a named volume")
        elif not source:
            error(value, i, sub, "anonymous volumes are refused: give it a source and declare it")
        elif not target:
            error(value, i, sub, "missing target: the path in the container, e.g. target: /var/lib/x")
        elif str(source) not in names:
            error(value, i, sub, f"volume {source!r} is not declared under the top-level volumes:")
        else:
            out.append({"name": str(source), "target": str(target), "read_only": read_only})
    return out
