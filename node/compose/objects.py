"""Compose `secrets:` and `configs:` onto shoal's (issue 13 item 2, decision 70).

- Top level: `secrets: {db_pw: {file: ./db_pw.txt}}` (a path relative to the Compose
  file), `{environment: VAR}` (the value of VAR where `stack deploy` runs) or
  `{external: true}` (an existing shoal secret of that name, or of `name:`); either name
  must be a shoal object name (`OBJECT_PATTERN`), checked here at its line. A `file:` or
  `environment:` source becomes the shoal secret (config) `<stack>_<name>`, sent with the
  stack and written in its transaction (decision 72), and only once the whole file
  translated without an error. Any other source (`content:`, `driver:` ...) is refused.
- A service's `secrets: [db_pw]` or `[{source, target, mode, uid, gid}]` becomes the
  spec's `secrets: [{source: <stack>_db_pw, target: db_pw, mode, uid, gid}]`:
  /run/secrets/db_pw as in Swarm, owned by `uid`/`gid` when given. `configs:` likewise,
  mounted at `target` (default `/<name>`, as Compose does).

The values are read here and kept only in `ObjectWrite.value`, which no repr shows.
Pure: no grpc, docker or etcd; files are read through the `read_bytes` callable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.model.spec_lifecycle import OBJECT_PATTERN

Report = Callable[[Any, Any, str, str], None]  # (node, key, path, message)
KINDS = {"secrets": "secret", "configs": "config"}
_SOURCES = ("file", "environment", "external", "name")
_ONE_OF = "file: PATH, environment: VAR or external: true"
_NAME = "1 to 63 letters, digits, '_', '.' and '-', starting and ending with a letter or digit"


@dataclass(frozen=True)
class ObjectWrite:
    """A secret or config `stack deploy` creates or updates with the stack (decision 72)."""

    kind: str  # "secret" | "config"
    name: str  # <stack>_<name>
    value: bytes = field(repr=False)


@dataclass
class Declared:
    """The top-level `secrets:` or `configs:`: compose name -> shoal name, and the values."""

    names: dict[str, str] = field(default_factory=dict)
    writes: list[ObjectWrite] = field(default_factory=list)


def declared(
    data: Any,
    top: str,
    stack: str,
    env: Mapping[str, str],
    read_bytes: Callable[[str], bytes],
    error: Report,
) -> Declared:
    """The top-level `top` ("secrets" or "configs") of a Compose file, values read."""
    out = Declared()
    section = data.get(top)
    if section is None:
        return out
    if not isinstance(section, dict):
        error(data, top, top, f"must be a mapping of names to one of {_ONE_OF}")
        return out
    kind = KINDS[top]
    for name, body in section.items():
        path = f"{top}.{name}"
        if not isinstance(body, dict):
            error(section, name, path, f"must be a mapping: {_ONE_OF}")
            continue
        external = body.get("external") is True
        out.names[str(name)] = given = str(body.get("name") or name) if external else f"{stack}_{name}"
        if len(given) > 63 or not re.fullmatch(OBJECT_PATTERN, given):  # sent, or written, as it is
            made = "" if external else " (the stack's name, '_' and the key)"
            error(section, name, path, f"{given[:80]!r}{made} is not a {kind} name: {_NAME}")
            continue
        for k in body:  # the name is known even when its source is wrong: its users are not wrong too
            if k not in _SOURCES:
                error(body, k, f"{path}.{k}", f"refused: shoal takes a {kind} from {_ONE_OF}")
        sources = [k for k in ("file", "environment", "external") if body.get(k)]
        if len(sources) != 1:
            error(section, name, path, f"give exactly one of {_ONE_OF}")
            continue
        if "name" in body and sources != ["external"]:
            error(body, "name", f"{path}.name", "refused: shoal names it <stack>_<name> itself")
            continue
        if sources == ["external"]:
            continue
        value = _value(body, sources[0], env, read_bytes, kind, path, error)
        if value is not None:
            out.writes.append(ObjectWrite(kind, f"{stack}_{name}", value))
    return out


def _value(
    body: Any,
    source: str,
    env: Mapping[str, str],
    read_bytes: Callable[[str], bytes],
    kind: str,
    path: str,
    error: Report,
) -> bytes | None:
    where = str(body[source])
    if source == "environment":
        if where not in env:
            error(body, source, f"{path}.environment", f"{where} is not set where `stack deploy` runs")
            return None
        return env[where].encode("utf-8")
    try:
        return read_bytes(where)
    except OSError as exc:
        error(body, source, f"{path}.file", f"cannot read {where}: {exc.strerror or exc}")
        return None


def service_refs(body: Any, top: str, names: Mapping[str, str], error: Report) -> list[dict[str, Any]]:
    """A service's `secrets:` or `configs:` (in its mapping `body`) as the spec's refs."""
    value = body[top]
    if not isinstance(value, list):
        error(body, top, top, "must be a list of names or of {source, target, mode}")
        return []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        sub = f"{top}[{i}]"
        if isinstance(item, str):
            item = {"source": item}
        elif not isinstance(item, dict) or "source" not in item:
            error(value, i, sub, "must be a name or a mapping with source:")
            continue
        source = str(item["source"])
        if source not in names:
            error(value, i, sub, f"{source!r} is not declared under the top-level {top}:")
            continue
        for k in item:
            if k not in ("source", "target", "mode", "uid", "gid"):
                error(item, k, f"{sub}.{k}", "unknown key; a reference has source, target, mode, uid and gid")
        ref: dict[str, Any] = {"source": names[source], "target": _target(top, item, source)}
        if "mode" in item:
            ref["mode"] = str(item["mode"])
        for k in ("uid", "gid"):  # the file's owner (the spec checks they are numeric ids)
            if k in item:
                ref[k] = str(item[k])
        out.append(ref)
    return out


def _target(top: str, item: Mapping[str, Any], source: str) -> str:
    target = str(item.get("target") or "")
    if top == "configs":
        return target or f"/{source}"
    return target.removeprefix("/run/secrets/") or source
