"""Service specs: the one place where a user's YAML becomes a validated `ServiceSpec`.

Why: `shoal service apply -f web.yaml` must either store a spec that every node can run
or refuse it, before anything is written to etcd, with an error a person can act on:
the file, line and column, the field path (`ports[1].published`), what is wrong and
what is allowed. ruamel.yaml loads the text (it keeps line and column of every key);
pydantic v2 checks the values; this module turns both kinds of failure into `SpecError`.

Guarantees:
- `parse_spec` returns a frozen, fully checked `ServiceSpec` or raises `SpecError`,
  whatever the text: size, nesting depth and alias expansion are bounded.
- Unknown fields are rejected and named, with a "did you mean" when one is close.
- Bounds follow what Docker accepts, so a stored spec does not fail at `docker run`:
  memory 6 MiB..1 TiB (Docker refuses less than 6 MB), cpu 0.01..1024 cores (Docker's
  `--cpus` granularity), strings without NUL (execve cannot pass it) or DEL.
- `resources` are reservations (limits to Docker unless `resources.limits`, which must
  be at least them); `placement.constraints` are parsed here with the scheduler's own
  parser (`node.model.constraints`), so what `apply` accepts is what the scheduler reads.
- `spec_to_dict` is plain JSON (memory in bytes, None fields omitted) and round-trips:
  `parse_spec(json.dumps(spec_to_dict(s))) == s`; `spec_from_dict` applies the same checks.
- The frozen `ServiceSpec` is what every module reads (leader, agent, proxy, API), with
  each default in one place: the models' fields. Its JSON form exists only at the store
  boundary (`node.model.domain.ServiceRecord.to_json` / `from_json`, `spec_from_stored`).

Pure: imports no grpc, docker or etcd.
"""

import difflib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from node.model.spec_autoscale import Autoscale, AutoscaleTarget, autoscale_fits
from node.model.spec_errors import FieldError, SpecError
from node.model.spec_errors import fatal as _fatal
from node.model.spec_ingress import Ingress, IngressRule, IngressTLS, ProxyProtocolPorts, ingress_fits
from node.model.spec_job import JobSpec, check_job_fields
from node.model.spec_labels import Labels
from node.model.spec_launch import Dedicated, Launch, LaunchSpec, launch_fits
from node.model.spec_lifecycle import (
    OBJECT_PATTERN,
    ConfigRef,
    DependsOn,
    HealthCheck,
    HttpCheck,
    LogConfig,
    OnDisconnect,
    RestartPolicy,
    SecretRef,
    ServiceName,
    StopGrace,
    TcpCheck,
    UpdateConfig,
    distinct_targets,
)
from node.model.spec_networks import ENTRY_TAGS, NetworkAttachment, Networks
from node.model.spec_process import Entrypoint, User, WorkingDir
from node.model.spec_resources import (
    _STRICT,
    Limits,
    Placement,
    PortSpec,
    Resources,
    _between,
    _describe,
    _Env,
    _fail,
    _image,
    _matches,
    _Name,
    _no_conflicts,
)
from node.model.spec_resources import (
    ENV_KEY_PATTERN as ENV_KEY_PATTERN,
)
from node.model.spec_resources import (
    MAX_MEMORY as MAX_MEMORY,
)
from node.model.spec_resources import (
    MIN_MEMORY as MIN_MEMORY,
)
from node.model.spec_resources import (
    NAME_PATTERN as NAME_PATTERN,
)
from node.model.spec_resources import (
    format_memory as format_memory,
)
from node.model.spec_resources import (
    parse_memory as parse_memory,
)
from node.model.spec_schedule import ScheduleSpec, check_schedule
from node.model.spec_volumes import VolumeMount, Volumes, volumes_fit

MAX_SPEC_BYTES = 256 * 1024
_MAX_VALUES = 10_000  # YAML values in one spec, an alias counted each time it is used
_MAX_DEPTH = 16
# Characters of strings (keys too) in one spec, an alias counted each time it is used: the
# spec is stored twice in one etcd write (node.store.base.MAX_REQUEST_BYTES, 1.5 MiB).
_MAX_TEXT = 512 * 1024
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_EMPTY = "the spec is empty: expected a mapping with at least name and image"


class ServiceSpec(BaseModel):
    """What the user asked for; stored as `spec_to_dict` JSON under `services/<name>`."""

    model_config = _STRICT
    name: ServiceName  # 1 to 63 of a-z, 0-9, '-'; <stack>_<service> in a stack
    image: Annotated[str, AfterValidator(_image)]
    command: Annotated[list[str], Field(min_length=1, max_length=256)] | None = None
    env: _Env = {}
    secret_env: _Env | None = None  # as env, but API answers and `inspect` show the values masked

    @model_validator(mode="after")
    def _secret_env_apart_from_env(self) -> "ServiceSpec":
        for key in self.secret_env or {}:
            if key in self.env:
                raise _fail(f"{key} is in env too: a variable is in env or secret_env", ("secret_env", key))
        return self

    replicas: Annotated[int, _between(0, 10000)] = 1
    ports: Annotated[list[PortSpec], Field(max_length=64), AfterValidator(_no_conflicts)] = []
    resources: Resources | None = None
    placement: Placement | None = None
    mode: Literal["replicated", "global"] | None = None  # None: replicated; global: one per eligible node
    # Lifecycle (node.model.spec_lifecycle); None: the defaults there, or the node's settings.
    health: HealthCheck | None = None  # None: routable once running (or the image's HEALTHCHECK)
    restart: RestartPolicy | None = None
    update: UpdateConfig | None = None
    stop_grace: StopGrace | None = None  # seconds from SIGTERM to SIGKILL; None: the node's stop_timeout
    on_disconnect: OnDisconnect | None = None  # None: a node cut off from etcd keeps running it
    logging: LogConfig | None = None  # None: the engine's default log driver and options

    # Issue 13: secrets and configs by name; files in the container (node.agent.secretfiles).
    # None, not []: a field added with its default left unset keeps every stored spec's template hash.
    secrets: Annotated[list[SecretRef], Field(max_length=64), AfterValidator(distinct_targets)] | None = None
    configs: Annotated[list[ConfigRef], Field(max_length=64), AfterValidator(distinct_targets)] | None = None

    stack: _Name | None = None  # set by `stack deploy`: the name is then <stack>_<service>
    depends_on: DependsOn | None = None  # the leader places no first task before they hold

    # Issue 13 item 5: named volumes per slot, the slot kept on their node (node.model.spec_volumes)
    volumes: Volumes | None = None
    reschedule: bool | None = None  # True: a slot whose volumes' node is lost starts empty elsewhere
    _volumes_fit = model_validator(mode="after")(volumes_fit)

    # Issue 13: images from registries (node.model.images, node.api.registry).
    pull: Literal["always", "missing", "never"] | None = None  # None: missing
    # image_pull_secret: a secret holding a Docker config JSON or user:password for the image's registry
    image_pull_secret: Annotated[str, _matches(OBJECT_PATTERN, "a secret name", 63)] | None = None
    image_digest: Annotated[str, _matches(r"sha256:[0-9a-f]{64}", "a sha256 digest", 71)] | None = None
    # ^ set by shoal at apply (the tag resolved at the registry); None: not pinned

    # Issue 18: jobs (node.model.spec_job): `kind: job` runs to completion, never restarted.
    kind: Literal["service", "job"] | None = None  # None: a service
    job: JobSpec | None = None  # kind job: completions, parallelism, retries; None: the defaults

    @model_validator(mode="after")
    def _job_fields(self) -> "ServiceSpec":
        check_job_fields(self)
        return self

    # Issue 17 item 3: ingress, routes from the node's shared HTTP(S) entrance (node.model.spec_ingress)
    ingress: Ingress | None = None  # None: not routed by host name
    # tcp container ports whose connections from the mesh and the VIPs begin with a PROXY v2 header
    proxy_protocol: ProxyProtocolPorts | None = None
    _ingress_fits = model_validator(mode="after")(ingress_fits)
    # Issue 13: networks scope who resolves and reaches whom (node.proxy.netscope, decision 64).
    # None: the cluster network (every service with None, as before networks existed).
    # An entry is a name or {name, aliases} (decision 73): aliases name its VIP on that network.
    networks: Networks | None = None

    # Issue 18 item 3: schedules (node.model.spec_schedule): a job run at each tick of a cron.
    schedule: ScheduleSpec | None = None

    @model_validator(mode="after")
    def _schedule_fields(self) -> "ServiceSpec":
        check_schedule(self)
        return self

    # Issue 15: the leader keeps `replicas` between min and max from the load (node.model.spec_autoscale).
    autoscale: Autoscale | None = None
    _autoscale_fits = model_validator(mode="after")(autoscale_fits)

    # Issue 15 item 3: launch: dedicated, a node of its own per task (node.model.spec_launch, decision 68)
    launch: Launch | None = None
    _launch_fits = model_validator(mode="after")(launch_fits)

    # Issue 13 item 2 (decision 70): the process, as Compose says it (node.model.spec_process).
    entrypoint: Entrypoint | None = None  # None: the image's ENTRYPOINT
    user: User | None = None  # None: the image's USER
    working_dir: WorkingDir | None = None  # None: the image's WORKDIR
    read_only: bool | None = None  # True: a read-only root filesystem

    # Decision 73 (node.model.spec_labels): labels on every container (template hash), and the
    # service's own metadata (Compose deploy.labels; not in the template hash).
    labels: Labels | None = None
    service_labels: Labels | None = None


_FIELDS: dict[tuple[str, ...], type[BaseModel]] = {(): ServiceSpec, ("ports",): PortSpec}
_FIELDS |= {("resources",): Resources, ("resources", "limits"): Limits, ("placement",): Placement}
_FIELDS |= {("health",): HealthCheck, ("health", "http"): HttpCheck, ("health", "tcp"): TcpCheck}
_FIELDS |= {("restart",): RestartPolicy, ("update",): UpdateConfig}
_FIELDS |= {("on_disconnect",): OnDisconnect, ("logging",): LogConfig}
_FIELDS |= {("secrets",): SecretRef, ("configs",): ConfigRef, ("volumes",): VolumeMount, ("job",): JobSpec}
_FIELDS |= {("ingress",): IngressRule, ("ingress", "tls"): IngressTLS, ("networks",): NetworkAttachment}

_FIELDS |= {("schedule",): ScheduleSpec}

_FIELDS |= {("autoscale",): Autoscale, ("autoscale", "target"): AutoscaleTarget}  # issue 15
_FIELDS |= {("launch",): LaunchSpec, ("launch", "dedicated"): Dedicated}
_EXPECTED = {"int_type": "an integer", "float_type": "a number", "string_type": "a string"}
_EXPECTED |= {"list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping"}
_HINTS = {("command", "list_type"): ' of strings, e.g. ["httpd", "-f"]'}
_HINTS |= {("health.exec", "list_type"): ' of strings (run without a shell), e.g. ["test", "-f", "/tmp/ok"]'}


def parse_spec(text: str, source: str = "<spec>") -> ServiceSpec:
    """Load and check a YAML (or JSON) spec; raise `SpecError` with every problem found."""
    data = load_yaml(text, source)
    if data is None:
        raise _fatal(source, _EMPTY, 1, 1)
    return _build(data, source)


def load_yaml(text: str, source: str = "<spec>") -> Any:  # ruamel's objects: lines and columns kept
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise _fatal(source, f"the spec is {size} bytes; the limit is {MAX_SPEC_BYTES}")
    try:
        data = YAML(typ="rt").load(text)  # one YAML object per call: they are not thread-safe
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = "not valid YAML: " + ", ".join(x for x in (e.context, e.problem) if x)
        what += " (indent with spaces, not tabs)" if "'\\t'" in (e.problem or "") else ""
        if isinstance(e, DuplicateKeyError) and (key := re.search(r'key "(.*?)" with', e.problem or "")):
            what = f"duplicate key {key[1]!r}: each key may appear only once in a mapping"
        where = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        raise _fatal(source, what, *where) from None
    except ReaderError as e:
        line, col = text.count("\n", 0, e.position) + 1, e.position - text.rfind("\n", 0, e.position)
        raise _fatal(source, f"not valid YAML: {e.reason} (#x{e.character:04x})", line, col) from None
    except RecursionError:
        raise _fatal(source, "not valid YAML: nested too deeply") from None
    except Exception as e:  # the parser is fed untrusted text: any failure of it is a bad spec
        raise _fatal(source, f"not valid YAML: {e}") from None
    return data


def spec_from_dict(data: dict[str, Any]) -> ServiceSpec:
    """Rebuild a spec from `spec_to_dict` output (as stored in etcd), with the same checks."""
    return _build(data, "<stored spec>")


def spec_from_stored(data: Any) -> ServiceSpec:
    """A spec as etcd holds it (`spec_to_dict` JSON, parsed) -> `ServiceSpec`, checked by the
    models alone: stored specs were written by `parse_spec`, so no positions are needed, and
    every record the leader reads in a pass goes through here. A `ServiceSpec` is returned
    as it is. ValueError (pydantic's ValidationError) when the data is not a valid spec."""
    if isinstance(data, ServiceSpec):
        return data
    return ServiceSpec.model_validate(data)


def spec_to_dict(spec: ServiceSpec) -> dict[str, Any]:
    """Plain JSON-ready dict: memory as int bytes, fields that are None left out."""
    return spec.model_dump(mode="json", exclude_none=True)


def _build(data: Any, source: str) -> ServiceSpec:
    walk = _Walk()
    try:
        plain = walk.plain(data, ())
    except _Limit:
        raise SpecError(source, walk.errors) from None
    if not isinstance(plain, dict):
        message = f"expected a mapping with at least name and image, got {_describe(plain)}"
        raise _fatal(source, message, *walk.near(()))
    try:
        spec = ServiceSpec.model_validate(plain)
    except ValidationError as e:
        seen = {w.path for w in walk.errors}  # a value the walk refused reaches pydantic as null
        walk.errors += [f for f in map(walk.field_error, e.errors(include_url=False)) if f.path not in seen]
    if walk.errors:
        errors = sorted(walk.errors, key=lambda f: (f.line is None, f.line or 0, f.column or 0))
        raise SpecError(source, errors)
    return spec


spec_from_node = _build  # (data, source): parse_spec of a mapping within what load_yaml returned


class _Limit(Exception):
    pass


class _Walk:
    """Turns ruamel's objects into plain JSON-like values and notes where each key and item was."""

    def __init__(self) -> None:
        self.pos: dict[tuple[Any, ...], tuple[int, int]] = {}
        self.errors: list[FieldError] = []
        self.count = 0
        self.text = 0

    def near(self, loc: tuple[Any, ...]) -> tuple[int | None, int | None]:
        """The line and column of `loc`, or of its nearest enclosing key or item."""
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.pos:
                return self.pos[loc[:n]]
        return None, None

    def error(self, loc: tuple[Any, ...], message: str) -> None:
        self.errors.append(FieldError(_path(loc), message, *self.near(loc)))

    def plain(self, v: Any, path: tuple[Any, ...]) -> Any:
        self.count += 1
        if self.count > _MAX_VALUES:
            self.error(path, f"too big: at most {_MAX_VALUES} values (an alias counts each time it is used)")
            raise _Limit
        if len(path) > _MAX_DEPTH:
            self.error(path, f"nested more than {_MAX_DEPTH} levels deep")
            raise _Limit
        lc = getattr(v, "lc", None)
        if lc is not None and lc.line is not None:
            self.pos.setdefault(path, (lc.line + 1, lc.col + 1))
        places = getattr(lc, "data", None) or {}  # key or index -> [line, col, ...], 0-based
        if isinstance(v, dict):
            out = {}
            for k, item in v.items():
                if at := places.get(k):
                    self.pos[(*path, k)] = (at[0] + 1, at[1] + 1)
                if not isinstance(k, str | int | float | None):
                    self.error(path, f"keys must be strings, got {type(k).__name__}")
                    continue
                key = self.plain(k, (*path, k))
                out[key] = self.plain(item, (*path, key))
            return out
        if isinstance(v, list):
            for i, at in places.items():
                self.pos[(*path, i)] = (at[0] + 1, at[1] + 1)
            return [self.plain(item, (*path, i)) for i, item in enumerate(v)]
        if isinstance(v, bool | ScalarBoolean) or v is None:
            return None if v is None else bool(v)
        if isinstance(v, int | float):
            return int(v) if isinstance(v, int) else float(v)  # ruamel's ScalarInt, ScalarFloat
        if not isinstance(v, str):
            self.error(path, f"unsupported YAML value ({type(v).__name__}); quote it if it is a string")
            return None
        s = str(v)
        self.text += len(s)
        if self.text > _MAX_TEXT:
            self.error(path, f"too big: at most {_MAX_TEXT} characters of text (an alias counts each use)")
            raise _Limit
        if _SURROGATE_RE.search(s):  # JSON escapes a character beyond U+FFFF as a surrogate pair
            try:
                s = s.encode("utf-16", "surrogatepass").decode("utf-16")
            except UnicodeDecodeError:
                self.error(path, "contains an unpaired surrogate (\\ud800-\\udfff)")
        if "\x00" in s or "\x7f" in s:
            self.error(path, "must not contain NUL or DEL characters")
        return s

    def field_error(self, err: Any) -> FieldError:
        """One pydantic error as a FieldError with an actionable message."""
        loc, kind, got, ctx = tuple(err["loc"]), err["type"], err["input"], err.get("ctx", {})
        if loc[:1] == ("networks",) and len(loc) > 2 and loc[2] in ENTRY_TAGS:
            loc = loc[:2] + loc[3:]  # the form of a `networks` entry (name or mapping) is no field
        is_key = bool(loc) and loc[-1] == "[key]"
        loc = loc[:-1] if is_key else (*loc, *ctx.get("at", ()))
        message = err["msg"]
        if kind == "missing":
            message = f"missing required field {loc[-1]!r}"
        elif kind == "extra_forbidden":
            fields = list(
                _FIELDS.get(tuple(p for p in loc[:-1] if isinstance(p, str)), ServiceSpec).model_fields
            )
            close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "allowed fields: " + ", ".join(fields)
            message = f"unknown field {loc[-1]!r}; {hint}"
        elif kind in _EXPECTED:
            hint = _HINTS.get((_path(p for p in loc if not isinstance(p, int)), kind), "")
            quote = kind == "string_type" and isinstance(got, int | float)
            message = f"must be {_EXPECTED[kind]}{hint}, got {_describe(got)}" + " (quote it)" * quote
        elif kind == "literal_error":
            message = f"must be {ctx['expected']}, got {_describe(got)}"
        elif kind in ("too_long", "string_too_long"):
            message = f"must have at most {ctx['max_length']} {'characters' if kind[0] == 's' else 'entries'}"
        elif kind == "too_short":
            message = "must not be empty"
        return FieldError(_path(loc), "invalid key: " * is_key + message, *self.near(loc))


def _path(loc: Any) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        elif isinstance(p, str) and _IDENT_RE.fullmatch(p):
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p)}]"
    return out
