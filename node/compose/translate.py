"""A Compose file -> shoal's stack document (`node.compose.stackfile`).

`translate` reads the file with line and column kept, refuses it when its aliases expand
too far (`node.compose.bounds`), interpolates variables (`node.compose.interpolate`) and
maps each service onto shoal's spec (`node.compose.keys` SUPPORTED; secrets, configs, the
process, logging: `node.compose.full`). A key shoal cannot
honour is refused or ignored with a warning (`node.compose.keys`), one line each, at its
line; an unknown key is refused with a "did you mean". Every spec is checked as shoal checks
a spec, and cycles are named: what `translate` returns deploys; nothing is written here (the
caller writes `objects` first). Pure: no grpc, docker or etcd; files are read through `read`.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.compose import keys
from node.compose import networks as compose_networks
from node.compose import volumes as compose_volumes
from node.compose.bounds import too_big
from node.compose.deploy import deploy, healthcheck, ports
from node.compose.full import extra_keys
from node.compose.interpolate import InterpolationError, interpolate, parse_duration, parse_size
from node.compose.stackfile import check_stack_name, find_cycle
from node.model.spec import NAME_PATTERN, SpecError, load_yaml, spec_from_dict

_SERVICE_KEYS = keys.SUPPORTED
_SIMPLE = ("command", "environment", "env_file", "ports", "expose", "deploy", "restart", "healthcheck")
_KNOWN = set(_SERVICE_KEYS) | set(keys.REFUSED) | set(keys.IGNORED)
_DEPLOY_KEYS = ("replicas", "mode", "resources", "placement", "update_config", "restart_policy")
_CONDITIONS = {"service_started": "started", "service_healthy": "healthy"}
_CONDITIONS |= {"service_completed_successfully": "completed"}  # a job that succeeded (issue 18)
_RESTART = keys.RESTART
_Where = tuple[int | None, int | None]


@dataclass(frozen=True)
class Notice:
    line: int | None
    column: int | None
    path: str  # services.web.build
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}:{self.column}" if self.line is not None else source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ComposeError(ValueError):
    """The file cannot be deployed; `errors` name every key to fix, at its line."""

    def __init__(self, source: str, errors: list[Notice]) -> None:
        super().__init__(source, errors)
        self.source, self.errors = source, errors

    def __str__(self) -> str:
        return "\n".join(e.render(self.source) for e in self.errors)


@dataclass
class Translation:
    name: str  # the stack's name: the caller's, else the file's `name:`
    document: dict[str, Any]  # shoal's stack file: {"name": ..., "services": {short: spec}}
    warnings: list[Notice] = field(default_factory=list)
    objects: list[Any] = field(default_factory=list)  # node.compose.objects.ObjectWrite: write first


def _at(node: Any, key: Any) -> _Where:
    data = getattr(getattr(node, "lc", None), "data", None) or {}
    if key in data:
        return data[key][0] + 1, data[key][1] + 1
    lc = getattr(node, "lc", None)
    return (lc.line + 1, lc.col + 1) if lc is not None and lc.line is not None else (None, None)


class _Run:
    def __init__(self, source: str, env: Mapping[str, str], read: Callable[[str], str]) -> None:
        self.source, self.env, self.read = source, env, read
        self.errors: list[Notice] = []
        self.warnings: list[Notice] = []
        self.volumes: set[str] = set()  # declared at the top level (node.compose.volumes)
        self.networks: dict[str, str] = {}  # declared at the top level (node.compose.networks)
        self.seen: set[int] = set()  # ids of the mappings and lists interpolated already

    def error_at(self, node: Any, key: Any, message: str) -> None:
        self.error(_at(node, key), f"volumes.{key}", message)

    def warn_at(self, node: Any, key: Any, message: str) -> None:
        self.warn(_at(node, key), f"volumes.{key}", message)

    def error(self, where: _Where, path: str, message: str) -> None:
        self.errors.append(Notice(*where, path, message))

    def warn(self, where: _Where, path: str, message: str) -> None:
        self.warnings.append(Notice(*where, path, message))

    def interpolate(self, node: Any, path: str) -> Any:
        """Variables replaced in every string value, in place (keys keep their positions); a
        node an alias reaches again is done once (twice, `$$HOME` -> `$HOME` -> a value)."""
        if id(node) in self.seen:
            return node
        self.seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in list(items):
            if isinstance(v, str):
                try:
                    node[k] = interpolate(v, self.env)
                except InterpolationError as exc:
                    self.error(_at(node, k), f"{path}.{k}" if path else str(k), str(exc))
            else:
                self.interpolate(v, f"{path}.{k}" if path else str(k))
        return node


def translate(
    text: str,
    source: str = "compose.yaml",
    name: str = "",
    env: Mapping[str, str] | None = None,
    read: Callable[[str], str] | None = None,
) -> Translation:
    """The stack document for a Compose file, or `ComposeError` listing every problem.
    `env`: the variables for interpolation; `read(path)`: an env_file's text."""
    try:
        data = load_yaml(text, source)
    except SpecError as exc:
        raise ComposeError(
            source, [Notice(e.line, e.column, e.path, e.message) for e in exc.errors]
        ) from None
    if (problem := too_big(data)) is not None:  # a YAML alias bomb: refused before any walk
        raise ComposeError(source, [Notice(None, None, "", problem)])
    run = _Run(source, env or {}, read or _no_files)
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict) or not data["services"]:
        raise ComposeError(source, [Notice(1, 1, "services", "a Compose file needs a `services:` mapping")])
    run.interpolate(data, "")
    for key in data:
        where, k = _at(data, key), str(key)
        if k.startswith("x-") or k in keys.TOP_LEVEL:
            continue
        if k in keys.TOP_IGNORED:
            run.warn(where, k, f"ignored: {keys.TOP_IGNORED[k]}")
        else:
            run.error(where, k, f"unknown top-level key; a Compose file has {', '.join(keys.TOP_LEVEL)}")
    stack = name or (data["name"] if isinstance(data.get("name"), str) else "")
    if not stack:
        run.error(
            (None, None), "name", "give the stack a NAME (`shoal stack deploy -c FILE NAME`) or set name:"
        )
    elif (problem := check_stack_name(stack)) is not None:
        run.error(_at(data, "name") if not name else (None, None), "name", problem)
    run.volumes = compose_volumes.declared(data, run.error_at, run.warn_at)
    run.networks = compose_networks.declared(data, run, _at)
    services: dict[str, dict[str, Any]] = {}
    lines: dict[str, dict[str, _Where]] = {}
    for short, body in data["services"].items():
        where = _at(data["services"], short)
        if not isinstance(body, dict):
            run.error(where, f"services.{short}", "must be a mapping")
            continue
        if body.get("profiles"):
            run.warn(
                where,
                f"services.{short}",
                "skipped: it has profiles, and shoal starts the default services only",
            )
            continue
        if not isinstance(short, str) or not _fullmatch(NAME_PATTERN, short):
            run.error(where, f"services.{short}", "shoal service names are lowercase letters, digits and '-'")
            continue
        spec, at = _Service(run, short, body, where).spec()
        services[short], lines[short] = spec, at
    writes = extra_keys(run, data, stack, services, lines, _at)  # decision 70
    _dependencies(run, data["services"], services)
    if not run.errors:
        _check(run, stack, services, lines)
    if run.errors:
        raise ComposeError(
            source, sorted(run.errors, key=lambda e: (e.line is None, e.line or 0, e.column or 0))
        )
    return Translation(stack, {"name": stack, "services": services}, run.warnings, writes)


def _pair(item: str) -> tuple[str, str | None]:
    name, eq, value = item.partition("=")
    return name, value if eq else None


def _no_files(path: str) -> str:
    raise OSError(f"cannot read {path}: no files here")


def _fullmatch(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def _dependencies(run: _Run, raw: Mapping[str, Any], services: dict[str, dict[str, Any]]) -> None:
    graph = {short: list(spec.get("depends_on", {})) for short, spec in services.items()}
    for short, deps in graph.items():
        for dep in deps:
            if dep not in raw:
                body = raw[short]
                run.error(
                    _at(body, "depends_on"),
                    f"services.{short}.depends_on",
                    f"{dep!r} is not a service of this file",
                )
            elif dep not in services:
                del services[short]["depends_on"][dep]  # skipped (profiles): not waited for
    cycle = find_cycle(graph)
    if cycle is not None:
        run.error(
            _at(raw[cycle[0]], "depends_on"),
            f"services.{cycle[0]}.depends_on",
            "dependency cycle: " + " -> ".join(cycle) + "; a service cannot wait for itself",
        )


def _check(
    run: _Run, stack: str, services: dict[str, dict[str, Any]], lines: dict[str, dict[str, _Where]]
) -> None:
    """Each translated spec through shoal's own checks; an error at the Compose key it came from."""
    for short, spec in services.items():
        full = {**spec, "name": f"{stack}_{short}", "stack": stack}
        if "depends_on" in spec:
            full["depends_on"] = {f"{stack}_{d}": c for d, c in spec["depends_on"].items()}
        try:
            spec_from_dict(full)
        except SpecError as exc:
            for e in exc.errors:
                top = e.path.split(".")[0].split("[")[0]
                where = lines[short].get(top, lines[short][""])
                run.error(where, f"services.{short}", f"{e.path}: {e.message}" if e.path else e.message)


class _Service:
    """One Compose service -> one shoal spec (plain dict) and where each field came from."""

    def __init__(self, run: _Run, short: str, body: Any, where: _Where) -> None:
        self.run, self.short, self.body = run, short, body
        self.path = f"services.{short}"
        self.out: dict[str, Any] = {}
        self.at: dict[str, _Where] = {"": where}

    def error(self, node: Any, key: Any, sub: str, message: str) -> None:
        self.run.error(_at(node, key), f"{self.path}.{sub}", message)

    def warn(self, node: Any, key: Any, sub: str, message: str) -> None:
        self.run.warn(_at(node, key), f"{self.path}.{sub}", message)

    def note(self, field_name: str, node: Any, key: Any) -> None:
        self.at.setdefault(field_name, _at(node, key))

    def spec(self) -> tuple[dict[str, Any], dict[str, _Where]]:
        b = self.body
        for key, value in b.items():
            k = str(key)
            if k.startswith("x-") or k in _SERVICE_KEYS:
                continue
            if k in keys.REFUSED:
                if k in keys.REFUSED_WHEN_TRUE and value is not True:
                    continue
                self.error(b, key, k, f"refused: {keys.REFUSED[k]}")
            elif k in keys.IGNORED:
                self.warn(b, key, k, f"ignored: {keys.IGNORED[k]}")
            else:
                close = difflib.get_close_matches(k, sorted(_KNOWN), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.error(b, key, k, f"unknown Compose key{hint}")
        if "image" not in b:
            if "build" not in b:
                self.error(b, None, "image", "missing: shoal runs an image (image: registry/name:tag)")
        else:
            self.out["image"] = str(b["image"])
        for k in _SIMPLE:
            if k in b and b[k] is not None:
                getattr(self, "_" + k)(b[k])
        if "depends_on" in b:
            self._depends_on(b["depends_on"])
        if b.get("volumes") is not None:
            self.note("volumes", b, "volumes")
            self.out["volumes"] = compose_volumes.service_volumes(b, self.run.volumes, self.error)
        if b.get("networks") is not None:  # decision 64
            self.note("networks", b, "networks")
            self.out["networks"] = compose_networks.service_networks(
                b, self.run.networks, self.error, self.warn
            )
        if "stop_grace_period" in b:
            self.note("stop_grace", b, "stop_grace_period")
            self._duration(b, "stop_grace_period", self.out, "stop_grace")
        if "scale" in b and "replicas" not in self.out:
            self.note("replicas", b, "scale")
            self.out["replicas"] = b["scale"]
        if "pull_policy" in b:  # issue 13: images from registries
            self._pull_policy(b)
        self._legacy_resources(b)
        _as_job(self.out, b)  # issue 18
        return self.out, self.at

    def _pull_policy(self, b: Any) -> None:
        value = keys.PULL_POLICIES.get(str(b["pull_policy"]))
        if value is None:
            allowed = ", ".join(keys.PULL_POLICIES)
            self.error(b, "pull_policy", "pull_policy", f"must be one of {allowed}, got {b['pull_policy']!r}")
            return
        self.note("pull", b, "pull_policy")
        self.out["pull"] = value

    def _duration(self, node: Any, key: str, into: dict[str, Any], as_: str) -> None:
        try:
            into[as_] = parse_duration(node[key])
        except ValueError as exc:
            self.error(node, key, key, str(exc))

    def _size(self, node: Any, key: str) -> int | None:
        try:
            return parse_size(node[key])
        except ValueError as exc:
            self.error(node, key, key, str(exc))
            return None

    def _cpus(self, node: Any, key: str) -> float | None:
        try:
            return float(node[key])
        except (TypeError, ValueError):
            self.error(node, key, key, f"must be a number of cores like 0.5, got {node[key]!r}")
            return None

    def _command(self, value: Any) -> None:
        self.note("command", self.body, "command")
        if isinstance(value, str):
            try:
                self.out["command"] = shlex.split(value)
            except ValueError as exc:
                self.error(self.body, "command", "command", f"cannot be split into words: {exc}")
        elif isinstance(value, list):
            self.out["command"] = [str(v) for v in value]
        else:
            self.error(self.body, "command", "command", "must be a string or a list of strings")

    def _environment(self, value: Any) -> None:
        env = self.out.setdefault("env", {})
        self.note("env", self.body, "environment")
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list):
            items = [_pair(str(v)) for v in value]
        else:
            self.error(self.body, "environment", "environment", "must be a list of NAME=value or a mapping")
            return
        for k, v in items:
            if v is None:  # NAME alone: the value from the environment, left out when unset
                if str(k) in self.run.env:
                    env[str(k)] = self.run.env[str(k)]
                continue
            env[str(k)] = ("true" if v else "false") if isinstance(v, bool) else str(v)

    def _env_file(self, value: Any) -> None:
        files = value if isinstance(value, list) else [value]
        loaded: dict[str, str] = {}
        for i, f in enumerate(files):
            path, required = (f.get("path"), f.get("required", True)) if isinstance(f, dict) else (f, True)
            try:
                text = self.run.read(str(path))
            except OSError as exc:
                if required:
                    self.error(
                        files if isinstance(value, list) else self.body,
                        i if isinstance(value, list) else "env_file",
                        "env_file",
                        f"cannot read {path}: {exc.strerror or exc}",
                    )
                continue
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                k, eq, v = line.removeprefix("export ").partition("=")
                if not eq:
                    self.error(
                        self.body,
                        "env_file",
                        "env_file",
                        f"{path}:{n}: expected NAME=value, got {line[:60]!r}",
                    )
                    continue
                v = v.strip()
                if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
                    v = v[1:-1]
                loaded[k.strip()] = v
        self.note("env", self.body, "env_file")
        self.out["env"] = {**loaded, **self.out.get("env", {})}  # environment: wins over env_file

    def _ports(self, value: Any) -> None:
        self.note("ports", self.body, "ports")
        self.out.setdefault("ports", [])
        ports(self, value)

    def _expose(self, value: Any) -> None:
        self.note("ports", self.body, "expose")
        have = {p["container"] for p in self.out.get("ports", [])}
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            text = str(v)
            number, _, proto = text.partition("/")
            if proto and proto != "tcp":
                self.error(value, i, "expose", f"refused: {proto} ports are {keys.NO_UDP}")
                continue
            if not (number.isascii() and number.isdigit()):
                self.error(value, i, "expose", f"must be a port number, got {text!r}")
            elif int(number) not in have:
                self.out.setdefault("ports", []).append({"container": int(number)})

    def _restart(self, value: Any) -> None:
        if "restart" in self.out:
            return  # deploy.restart_policy wins
        self.note("restart", self.body, "restart")
        text = str(value)
        kind, _, count = text.partition(":")
        if kind == "unless-stopped":
            kind = "always"
        if kind not in _RESTART or (
            count and (kind != "on-failure" or not (count.isascii() and count.isdigit()))
        ):
            self.error(
                self.body,
                "restart",
                "restart",
                f"must be no, always, on-failure[:N] or unless-stopped, got {text!r}",
            )
            return
        self.out["restart"] = {"condition": _RESTART[kind], **({"max_attempts": int(count)} if count else {})}

    def _healthcheck(self, value: Any) -> None:
        self.note("health", self.body, "healthcheck")
        healthcheck(self, value)

    def _deploy(self, value: Any) -> None:
        deploy(self, value)

    def _depends_on(self, value: Any) -> None:
        self.note("depends_on", self.body, "depends_on")
        deps: dict[str, str] = {}
        if isinstance(value, list):
            deps = {str(d): "started" for d in value}
        elif isinstance(value, dict):
            for dep, how in value.items():
                cond = (
                    (how or {}).get("condition", "service_started")
                    if isinstance(how, dict)
                    else "service_started"
                )
                if not isinstance(cond, str) or cond not in _CONDITIONS:  # a list is unhashable
                    self.error(
                        value,
                        dep,
                        f"depends_on.{dep}",
                        f"condition must be one of {', '.join(_CONDITIONS)}, got {cond!r}",
                    )
                    continue
                for extra in ("restart", "required"):
                    if isinstance(how, dict) and extra in how:
                        self.warn(
                            how,
                            extra,
                            f"depends_on.{dep}.{extra}",
                            "ignored: shoal gates the first start only",
                        )
                deps[str(dep)] = _CONDITIONS[cond]
        else:
            self.error(self.body, "depends_on", "depends_on", "must be a list of services or a mapping")
        if deps:
            self.out["depends_on"] = deps

    def _legacy_resources(self, b: Any) -> None:
        res = self.out.get("resources", {})
        limits = res.get("limits", {})
        if "mem_limit" in b and "memory" not in limits:
            limits["memory"] = self._size(b, "mem_limit")
        if "cpus" in b and "cpu" not in limits:
            limits["cpu"] = self._cpus(b, "cpus")
        if "mem_reservation" in b and "memory" not in res:
            res["memory"] = self._size(b, "mem_reservation")
        if limits:
            res["limits"] = limits
        if res:
            self.note(
                "resources",
                b,
                "mem_limit" if "mem_limit" in b else "cpus" if "cpus" in b else "mem_reservation",
            )
            self.out["resources"] = res


def _as_job(out: dict[str, Any], body: Any) -> None:
    """`restart: "no"` with `deploy.restart_policy.condition: none` is a job (issue 18): it
    runs to completion once; `deploy.replicas: N` becomes N completions, N at once."""
    deploy: Any = body.get("deploy")
    deploy = deploy if isinstance(deploy, dict) else {}
    policy: Any = deploy.get("restart_policy")
    policy = policy if isinstance(policy, dict) else {}
    if body.get("restart") not in ("no", False) or policy.get("condition") != "none":
        return
    out["kind"] = "job"
    replicas = out.pop("replicas", 1)
    if isinstance(replicas, int) and replicas > 1:
        out["job"] = {"completions": replicas, "parallelism": replicas}
