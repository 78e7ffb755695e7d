"""Which stored specs a build of shoal can read: the rule of a rolling upgrade.

A spec is stored as `spec_to_dict` JSON and read back with `extra="forbid"`: a build
that meets a field (or a value of a closed set) it does not know cannot read the spec,
and leaves that service alone (`node.model.domain.UnreadableRecord`). So during a
rolling upgrade a spec may use only what *every* live build knows. Each node publishes
what its build knows (`known_paths`, in `NodeInfo.spec_paths`); the API refuses a
write that uses a path some live node does not know (`unknown_to`), naming the field
and the nodes to upgrade first.

A path is the dotted field path (`health.http.path`); a mapping of models adds `*` for
its keys (`depends_on.*`); a field whose values are a closed set adds one
`path=value` per value (`mode=global`), since a new value is as unreadable as a new
field. User data (env, labels) is a leaf: its keys are not paths.

Pure: no grpc, docker or etcd.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from node.model.spec import ServiceSpec


def _parts(annotation: Any) -> Iterator[Any]:
    """The annotation and the type arguments inside it, depth first, through Annotated,
    unions and lists, but not into a mapping (`_mapping` handles those)."""
    yield annotation
    if _is_mapping(annotation):
        return
    for arg in get_args(annotation):
        if isinstance(arg, type) or get_origin(arg) is not None:
            yield from _parts(arg)


def _is_mapping(annotation: Any) -> bool:
    return get_origin(annotation) in (dict, Mapping, typing.Mapping)


def _mapping_value(annotation: Any) -> Any | None:
    """The value type of the mapping an annotation is (maybe optional), or None."""
    for part in _parts(annotation):
        if _is_mapping(part):
            return get_args(part)[1]
    return None


def _models(annotation: Any) -> list[type[BaseModel]]:
    return [p for p in _parts(annotation) if isinstance(p, type) and issubclass(p, BaseModel)]


def _literals(annotation: Any) -> list[str]:
    return [str(v) for p in _parts(annotation) if get_origin(p) is Literal for v in get_args(p)]


def _shape(path: str, annotation: Any) -> tuple[str, Any]:
    """(the path of a field's values, their annotation): `path.*` for a mapping's."""
    value = _mapping_value(annotation)
    return (f"{path}.*", value) if value is not None else (path, annotation)


def _walk_class(model: type[BaseModel], prefix: str, seen: frozenset[type]) -> Iterator[str]:
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        inner_path, inner = _shape(path, info.annotation)
        if inner_path != path and (_models(inner) or _literals(inner)):
            yield inner_path
        yield from (f"{inner_path}={value}" for value in _literals(inner))
        for sub in _models(inner):
            if sub not in seen:
                yield from _walk_class(sub, f"{inner_path}.", seen | {sub})


@cache
def known_paths(model: type[BaseModel] = ServiceSpec) -> frozenset[str]:
    """Every field path (and closed-set value) this build's spec reads."""
    return frozenset(_walk_class(model, "", frozenset({model})))


def _value_paths(path: str, annotation: Any, value: Any) -> Iterator[str]:
    if isinstance(value, BaseModel):
        yield from _instance_paths(value, f"{path}.")
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _value_paths(path, annotation, item)
    elif isinstance(value, str) and value in _literals(annotation):
        yield f"{path}={value}"


def _instance_paths(spec: BaseModel, prefix: str) -> Iterator[str]:
    for name, info in type(spec).model_fields.items():
        value = getattr(spec, name)
        if value is None:  # left out of the stored form (`spec_to_dict`: exclude_none)
            continue
        path = f"{prefix}{name}"
        yield path
        inner_path, inner = _shape(path, info.annotation)
        if inner_path == path:
            yield from _value_paths(path, inner, value)
        elif _models(inner) or _literals(inner):
            for item in value.values():
                yield inner_path
                yield from _value_paths(inner_path, inner, item)


def used_paths(spec: BaseModel) -> frozenset[str]:
    """The paths (and closed-set values) `spec`'s stored form holds."""
    return frozenset(_instance_paths(spec, ""))


def unknown_to(spec: BaseModel, builds: Iterable[tuple[str, Iterable[str]]]) -> dict[str, list[str]]:
    """path -> the nodes (of `builds`: node id, its known paths) that could not read
    `spec`; a node that publishes no paths (a build before this rule) is not judged."""
    used = used_paths(spec)
    out: dict[str, list[str]] = {}
    for node, paths in builds:
        known = frozenset(paths)
        if not known:
            continue
        for path in sorted(used - known):
            out.setdefault(path, []).append(node)
    return out


__all__ = ["known_paths", "unknown_to", "used_paths"]
