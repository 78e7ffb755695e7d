"""shoal's stack file: a top-level `services:` map of service specs as `service apply`
takes them, the key being the service's name within the stack.

    name: shop              # optional; `stack deploy -f FILE NAME` overrides it
    services:
      db:
        image: shoal/demo
        health: {tcp: {port: 6379}}
      web:
        image: shoal/demo
        ports: [{container: 8000, published: 8080}]
        depends_on: {db: healthy}      # or [db]: started

Each service is stored as `<stack>_<service>` with `stack: <stack>` and its
`depends_on` names rewritten to the full names, so the leader and every listing read
plain service records. Every problem of every service is reported at once, at its
line and column (`SpecError`); a `depends_on` naming a service that is not in the file,
or a dependency cycle (named: `a -> b -> a`), is refused. Nothing here writes.

Pure: no grpc, docker or etcd.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from node.model.spec import NAME_PATTERN, FieldError, ServiceSpec, SpecError, load_yaml, spec_from_node

_NAME = re.compile(NAME_PATTERN)
TOP_KEYS = ("name", "services")
MAX_SERVICES = 30  # one etcd transaction holds the whole stack (node.api.stacks)


def _at(node: Any, key: Any) -> tuple[int | None, int | None]:
    """1-based line and column of `key` in the ruamel mapping or list `node`."""
    data = getattr(getattr(node, "lc", None), "data", None) or {}
    if key in data:
        return data[key][0] + 1, data[key][1] + 1
    lc = getattr(node, "lc", None)
    return (lc.line + 1, lc.col + 1) if lc is not None and lc.line is not None else (None, None)


def check_stack_name(name: str, what: str = "stack name") -> str | None:
    """What is wrong with a stack name, or None."""
    if not _NAME.fullmatch(name) or len(name) > 40:
        return (
            f"{what} {name[:60]!r} must be 1 to 40 lowercase letters, digits and '-', "
            "not starting or ending with '-' (e.g. shop)"
        )
    return None


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle as a path that ends where it starts (["a", "b", "a"]), or None.
    Iterative depth-first search; names in sorted order, so the answer is stable."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, ())))]
        state[root] = 1
        path.append(root)
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = todo.pop(0)
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def parse_stack(text: str, source: str = "<stack>", name: str = "") -> tuple[str, list[ServiceSpec]]:
    """The stack's name and its checked specs (full names, sorted); `SpecError` naming
    every problem at its line and column."""
    data = load_yaml(text, source)
    errors: list[FieldError] = []

    def fail(path: str, message: str, where: tuple[int | None, int | None] = (None, None)) -> None:
        errors.append(FieldError(path, message, *where))

    if not isinstance(data, dict):
        raise SpecError(source, [FieldError("", "expected a mapping with a `services:` map", 1, 1)])
    for key in data:
        if key not in TOP_KEYS and not str(key).startswith("x-"):
            fail(str(key), f"unknown top-level key; a stack file has {', '.join(TOP_KEYS)}", _at(data, key))
    given = data.get("name")
    stack: str = name or (given if isinstance(given, str) else "")
    if not stack:
        fail(
            "name", "the stack has no name: give it as NAME (`shoal stack deploy -f FILE NAME`) or as `name:`"
        )
    elif (problem := check_stack_name(stack)) is not None:
        fail("" if name else "name", problem, (None, None) if name else _at(data, "name"))
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        fail("services", "must be a non-empty mapping of service name -> spec", _at(data, "services"))
        raise SpecError(source, errors)
    if len(services) > MAX_SERVICES:
        fail("services", f"at most {MAX_SERVICES} services in one stack", _at(data, "services"))
    specs: list[ServiceSpec] = []
    graph: dict[str, list[str]] = {}
    dep_at: dict[str, tuple[int | None, int | None]] = {}
    for short, body in services.items():
        path = f"services.{short}"
        where = _at(services, short)
        if not isinstance(short, str) or not _NAME.fullmatch(short):
            fail(path, "a service name is 1 to 63 lowercase letters, digits and '-' (no '_')", where)
            continue
        if len(stack) + 1 + len(short) > 63:
            fail(
                path,
                f"{stack}_{short} is longer than 63 characters; shorten the stack or service name",
                where,
            )
            continue
        if not isinstance(body, dict):
            fail(path, "must be a mapping: a service spec as `service apply` takes it", where)
            continue
        own = body.get("name")
        if own is not None and own != short:
            fail(
                f"{path}.name",
                f"must be the service's key {short!r} or left out, got {own!r}",
                _at(body, "name"),
            )
            continue
        if "stack" in body:
            fail(f"{path}.stack", "is set by `stack deploy`; leave it out", _at(body, "stack"))
            continue
        deps = body.get("depends_on")
        if isinstance(deps, list):  # [db]: started
            deps = (
                {d: "started" for d in deps if isinstance(d, str)}
                if all(isinstance(d, str) for d in deps)
                else deps
            )
        if isinstance(deps, dict):
            graph[short] = [str(d) for d in deps]
            dep_at[short] = _at(body, "depends_on")
            for dep in deps:
                if dep not in services:
                    there = ", ".join(sorted(map(str, services)))
                    fail(
                        f"{path}.depends_on",
                        f"{dep!r} is not a service of this stack ({there})",
                        _at(body, "depends_on"),
                    )
            body["depends_on"] = {f"{stack}_{dep}": cond for dep, cond in deps.items()}
        body["name"], body["stack"] = f"{stack}_{short}", stack or "x"
        try:
            specs.append(spec_from_node(body, source))
        except SpecError as exc:
            errors += [FieldError(_join(path, e.path), e.message, e.line, e.column) for e in exc.errors]
    kinds = {s.name: s.kind for s in specs}
    for s in specs:
        for dep, cond in (s.depends_on or {}).items():
            if cond == "completed" and dep in kinds and kinds[dep] != "job":
                short = s.name[len(stack) + 1 :]
                fail(
                    f"services.{short}.depends_on",
                    f"{dep[len(stack) + 1 :]!r} is not a job (kind: job), so it never completes; "
                    "use started or healthy",
                    dep_at.get(short, (None, None)),
                )
    cycle = find_cycle(graph)
    if cycle is not None:
        what = "dependency cycle: " + " -> ".join(cycle) + "; a service cannot wait for itself"
        fail(f"services.{cycle[0]}.depends_on", what, dep_at.get(cycle[0], (None, None)))
    if errors:
        raise SpecError(source, sorted(errors, key=lambda f: (f.line is None, f.line or 0, f.column or 0)))
    return stack, sorted(specs, key=lambda s: s.name)


def _join(prefix: str, path: str) -> str:
    return prefix if not path else f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"
