"""The lifecycle sections of a service spec: `health`, `restart`, `update`, `stop_grace`,
`on_disconnect`, `depends_on`; and `secrets` / `configs`, the files a replica starts with (issue 13).

Why a module of its own: `node.model.spec` owns loading, paths and error reporting; this one
owns what a replica's life looks like once it runs (how it is checked, restarted,
replaced in a rollout, stopped), and the duration syntax those sections use. The
models here are fields of `node.model.spec.ServiceSpec` and are checked with the same strict
rules (unknown fields refused, no coercion, errors naming the field path).

Durations are written as a number of seconds (`2`, `0.5`) or a string with units
(`500ms`, `2s`, `1m30s`, `1.5h`) and are stored normalized as float seconds, so the
stored JSON round-trips and every reader sees one unit. Negative durations are refused.

Pure: imports no grpc, docker or etcd.
"""

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

HOUR = 3600.0
DAY = 24 * HOUR
_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_PART = r"(\d{1,12}(?:\.\d{1,9})?)(ms|s|m|h)"
_DURATION_RE = re.compile(f"(?:{_PART})+")
_SYNTAX = "a number of seconds or a number with a unit (ms, s, m, h), e.g. 2s, 500ms or 1m30s"


def _fail(message: str) -> PydanticCustomError:
    # Same shape as node.model.spec's errors: the message goes in as context, never as a template.
    return PydanticCustomError("spec", "{msg}", {"msg": message, "at": ()})


def parse_duration(text: str) -> float:
    """ "2s" -> 2.0, "500ms" -> 0.5, "1m30s" -> 90.0, "-1s" -> -1.0 (the caller refuses it)."""
    s = text.strip()
    sign, body = (-1, s[1:].lstrip()) if s.startswith("-") else (1, s)
    if not _DURATION_RE.fullmatch(body):
        raise ValueError(f"must be a duration: {_SYNTAX}; got string {text[:60]!r}")
    total = sum((Decimal(n) * _UNITS[unit] for n, unit in re.findall(_PART, body)), Decimal(0))
    return sign * float(total)


def format_duration(seconds: float) -> str:
    """The shortest way to write `seconds` back: 0.5 -> "500ms", 90 -> "90s", 7200 -> "2h"."""
    if not math.isfinite(seconds) or abs(seconds) >= 1e12:
        return "a very large number"
    if seconds and seconds % HOUR == 0:
        return f"{seconds / HOUR:g}h"
    if seconds and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    if 0 < abs(seconds) < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _duration(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        got = (
            f"boolean {str(v).lower()}"
            if isinstance(v, bool)
            else "a list"
            if isinstance(v, list)
            else ("a mapping" if isinstance(v, dict) else "null" if v is None else type(v).__name__)
        )
        raise _fail(f"must be a duration: {_SYNTAX}; got {got}")
    if isinstance(v, str):
        try:
            return parse_duration(v)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    if not math.isfinite(v):
        raise _fail(f"must be a finite duration, got {v}")
    return float(v)


def _duration_within(lo: float, hi: float) -> AfterValidator:
    def check(v: float) -> float:
        if v < 0:
            raise _fail(f"must not be negative, got {format_duration(v)}")
        if v < lo:
            raise _fail(f"must be at least {format_duration(lo)}, got {format_duration(v)}")
        if v > hi:
            raise _fail(f"must be at most {format_duration(hi)}, got {format_duration(v)}")
        return v

    return AfterValidator(check)


def _within(lo: int, hi: int) -> AfterValidator:
    def check(v: int) -> int:
        got = v if abs(v) < 10**30 else "a very large number"
        if v < lo:
            raise _fail(f"must be at least {lo}, got {got}")
        if v > hi:
            raise _fail(f"must be at most {hi}, got {got}")
        return v

    return AfterValidator(check)


def _ratio(v: float) -> float:
    if not 0 <= v <= 1:
        raise _fail(f"must be between 0 and 1 (a fraction of the replicas), got {v:g}")
    return v


def _http_path(v: str) -> str:
    if not v.startswith("/") or len(v) > 1024 or re.search(r"[\s\x00-\x1f\x7f]", v):
        raise _fail(
            "must be a URL path starting with '/', without spaces or control characters, "
            f"at most 1024 characters; got string {v[:60]!r}"
        )
    return v


# Duration fields: float seconds, parsed by `_duration`, bounded.
Duration = Annotated[float, BeforeValidator(_duration), _duration_within(0, DAY)]
ShortDuration = Annotated[float, BeforeValidator(_duration), _duration_within(0, HOUR)]
_Interval = Annotated[float, BeforeValidator(_duration), _duration_within(0.1, DAY)]
_Timeout = Annotated[float, BeforeValidator(_duration), _duration_within(0.01, HOUR)]
_Port = Annotated[int, _within(1, 65535)]


_HOST_RE = re.compile(r"(?:[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")


def _host_header(v: str) -> str:
    if not _HOST_RE.fullmatch(v):
        raise _fail(
            "must be a host name or address with an optional :port (letters, digits, '.', '-', "
            f"'_', or an [IPv6] address; at most 253 characters before the port); got string {v[:60]!r}"
        )
    return v


class HttpCheck(BaseModel):
    """GET `path` on the replica's container `port` over `scheme` (http or https); healthy
    when the answer's status is `status`, or without `status` any 2xx or 3xx (as
    Kubernetes; a redirect is not followed). `host`: the Host header (and, for https, the
    TLS server name); by default the address probed. `tls_verify` (https only; off by
    default, for self-signed certificates) checks the certificate against the system's
    trusted CAs and `host`, which it then requires (the replica is reached by address)."""

    model_config = _STRICT
    port: _Port
    path: Annotated[str, AfterValidator(_http_path)] = "/"
    # New fields default to None, which the agent reads as the default named here, so the
    # stored form (and `template_hash`) of a spec that leaves them out stays the same.
    status: Annotated[int, _within(100, 599)] | None = None  # None: any 2xx or 3xx
    scheme: Literal["http", "https"] | None = None  # None: http
    tls_verify: bool | None = None  # None: false
    host: Annotated[str, AfterValidator(_host_header)] | None = None  # None: address:port

    @model_validator(mode="after")
    def _tls_settings(self) -> "HttpCheck":
        if self.tls_verify and self.scheme != "https":
            raise _fail("tls_verify applies only to scheme https (this check uses http: add scheme: https)")
        if self.tls_verify and self.host is None:
            raise _fail(
                "tls_verify needs `host`: the name the certificate is checked against "
                "(the replica is probed at its container address)"
            )
        return self


class TcpCheck(BaseModel):
    """Healthy when a TCP connection to the replica's container `port` is accepted."""

    model_config = _STRICT
    port: _Port


_GRPC_SERVICE_RE = re.compile(r"[A-Za-z0-9_.-]{0,200}")


def _grpc_service(v: str) -> str:
    if not _GRPC_SERVICE_RE.fullmatch(v):
        raise _fail(
            "must be a gRPC service name (letters, digits, '.', '_', '-'; at most 200 characters), "
            f"or empty for the server as a whole; got string {v[:60]!r}"
        )
    return v


class GrpcCheck(BaseModel):
    """The standard gRPC health protocol (`grpc.health.v1.Health/Check`) on the replica's
    container `port`, over h2c: healthy when the answer is SERVING for `service` (None or
    "": the server as a whole). Decision 61."""

    model_config = _STRICT
    port: _Port
    service: Annotated[str, AfterValidator(_grpc_service)] | None = None  # None: ""


class HealthCheck(BaseModel):
    """How the agent checks a replica: exactly one of `http`, `tcp`, `exec`, `grpc`.

    A replica is published (routable) only once a check passed; `retries` consecutive
    failures make it unhealthy (withdrawn from every proxy); 2 x `retries` replace it.
    Failures during `start_period` do not count until the first success.
    """

    model_config = _STRICT
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    exec: Annotated[list[str], Field(min_length=1, max_length=256)] | None = None  # argv, no shell
    interval: _Interval = 2.0
    timeout: _Timeout = 1.0
    retries: Annotated[int, _within(1, 100)] = 3
    start_period: Duration = 0.0
    grpc: GrpcCheck | None = None  # gRPC health protocol (decision 61); None keeps the stored form

    @model_validator(mode="after")
    def _exactly_one(self) -> "HealthCheck":
        given = [k for k in ("http", "tcp", "exec", "grpc") if getattr(self, k) is not None]
        if len(given) != 1:
            got = f", got {' and '.join(given)}" if given else ", got none"
            raise _fail(f"must have exactly one of http, tcp, exec or grpc{got}")
        return self


class RestartPolicy(BaseModel):
    """When the agent starts a replica's container again after it exited (or was replaced
    for being unhealthy): `always`, `on-failure` (exit code not 0, or unhealthy), `never`.
    At most `max_attempts` restarts within `window` (0: no limit / every restart counts);
    consecutive restarts wait `delay`, doubling up to 30 s (reset once a replica stays up 10 s)."""

    model_config = _STRICT
    condition: Literal["always", "on-failure", "never"] = "always"
    max_attempts: Annotated[int, _within(0, 1_000_000)] = 0
    window: Duration = 0.0
    delay: ShortDuration = 0.5


class UpdateConfig(BaseModel):
    """How a new version rolls out (the leader's rollout reads it) and how long an old
    replica drains (the agent reads `drain`; None: the node's `drain`, 2 s)."""

    model_config = _STRICT
    parallelism: Annotated[int, _within(1, 10000)] = 1  # replicas replaced at a time
    delay: Duration = 0.0  # between batches
    order: Literal["start-first", "stop-first"] = "start-first"  # the leader's default too
    monitor: Duration = 5.0  # a new replica must stay healthy this long
    failure_action: Literal["rollback", "pause", "continue"] = "rollback"
    max_failure_ratio: Annotated[float, AfterValidator(_ratio)] = 0.0  # failures tolerated, 0..1
    drain: ShortDuration | None = None


StopGrace = ShortDuration  # SIGTERM, then SIGKILL after this many seconds


class OnDisconnect(BaseModel):
    """What a node cut off from etcd does with this service's replicas (Nomad's
    `max_client_disconnect` idea). Once the node could not renew its etcd lease for longer
    than the lease TTL + `stop_after` (its lease is then certainly expired, and the leader
    has had the time to place the replicas elsewhere), its agent stops them locally,
    so a partitioned node does not run them twice. Without this section (the default,
    as Swarm does) a cut-off node keeps running them: no downtime when only etcd is
    unreachable, at the price of duplicates during a partition. Back in touch with
    etcd, the node reconciles as usual."""

    model_config = _STRICT
    stop_after: Duration


# -- logging (issue 14) ----------------------------------------------------------------

LOG_DRIVERS = ("json-file", "local")  # drivers `shoal service logs` can read back
_LOG_OPTIONS = {
    "max-size": (re.compile(r"[1-9]\d{0,8}[kmg]?"), "a size such as 10m, 500k or 1g"),
    "max-file": (re.compile(r"[1-9]\d{0,3}"), "a number of files, 1 to 9999"),
    "compress": (re.compile(r"true|false"), "true or false"),
}


def _log_options(options: dict[str, str]) -> dict[str, str]:
    for key, value in options.items():
        if key not in _LOG_OPTIONS:
            raise _fail(f"unknown log option {key!r}: use {', '.join(sorted(_LOG_OPTIONS))}")
        pattern, wanted = _LOG_OPTIONS[key]
        if not pattern.fullmatch(value):
            raise _fail(f"log option {key}: {value[:40]!r} is not {wanted}")
    return options


class LogConfig(BaseModel):
    """`logging`: the Compose form, passed to Docker as the containers' log config. Only
    drivers whose logs Docker can read back (`shoal service logs`) are taken; sizes bound
    what each container keeps on its node (json-file default: unbounded)."""

    model_config = _STRICT
    driver: Literal["json-file", "local"] = "json-file"
    options: Annotated[dict[str, str], Field(max_length=8), AfterValidator(_log_options)] = {}


# ---------------------------------------------------------------- secrets and configs


def _pattern(pattern: str, what: str, longest: int) -> AfterValidator:
    def check(v: str) -> str:
        if not re.fullmatch(pattern, v) or len(v) > longest:
            raise _fail(f"must be {what} (pattern ^{pattern}$), got {v!r:.80}")
        return v

    return AfterValidator(check)


OBJECT_PATTERN = "[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?"
_ObjectName = Annotated[
    str, _pattern(OBJECT_PATTERN, "1 to 63 letters, digits, '_', '.' and '-', not '_.-' at either end", 63)
]


def _mode(v: Any) -> Any:
    """File mode in chmod's octal digits: "0400", "400", "0o400" or 400 -> "0400"."""
    text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    if isinstance(text, str):
        digits = text[2:] if text.startswith("0o") else text
        if re.fullmatch("0?[0-7]{3}", digits):
            return "0" + digits[-3:]
    raise _fail(f'must be a file mode in octal digits, e.g. "0400" or "0444"; got {v!r:.80}')


def _abs_path(v: str) -> str:
    parts = v.split("/")
    # "." and ".." both: /etc/./x is /etc/x, so two mounts (or the secrets rule) compared apart
    if not v.startswith("/") or v == "/" or {".", ".."} & set(parts) or "" in parts[1:] or len(v) > 1024:
        raise _fail(
            "must be an absolute file path such as /etc/app/app.conf (no '.' or '..' segment, "
            f"no '//'), got {v!r:.80}"
        )
    if v == "/run/secrets" or v.startswith("/run/secrets/"):
        raise _fail("/run/secrets is where secrets are mounted: choose another path for a config")
    return v


_Mode = Annotated[str, BeforeValidator(_mode)]
MAX_ID = 2**31 - 1


def _owner_id(v: Any) -> Any:
    """A uid or gid as Swarm's and Compose's long syntax write it: "103" or 103 -> "103"."""
    text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    if isinstance(text, str) and re.fullmatch("[0-9]{1,10}", text) and int(text) <= MAX_ID:
        return str(int(text))
    raise _fail(f'must be a numeric user or group id from 0 to {MAX_ID}, e.g. "103"; got {v!r:.80}')


_OwnerId = Annotated[str, BeforeValidator(_owner_id)]


class SecretRef(BaseModel):
    """A secret (`shoal secret create`) mounted at /run/secrets/<target>, tmpfs, read-only."""

    model_config = _STRICT
    source: _ObjectName
    target: _ObjectName | None = None  # file name under /run/secrets; None: the source's name
    mode: _Mode = "0400"
    uid: _OwnerId | None = None  # the file's owner in the container (numeric); None: root
    gid: _OwnerId | None = None  # its group (numeric); None: root's group
    revision: str | None = None  # set by shoal at apply: which write of the secret; a new one rolls


class ConfigRef(BaseModel):
    """A config (`shoal config create`) mounted read-only at `target`."""

    model_config = _STRICT
    source: _ObjectName
    target: Annotated[str, AfterValidator(_abs_path)]
    mode: _Mode = "0444"
    uid: _OwnerId | None = None  # the file's owner in the container (numeric); None: root
    gid: _OwnerId | None = None  # its group (numeric); None: root's group
    revision: str | None = None  # set by shoal at apply, as for secrets


def distinct_targets(refs: list[Any]) -> list[Any]:
    seen: dict[str, int] = {}
    for i, ref in enumerate(refs):
        target = ref.target or ref.source
        if target in seen:
            raise PydanticCustomError(
                "spec",
                "{msg}",
                {"msg": f"target {target!r} is already used by [{seen[target]}]", "at": (i, "target")},
            )
        seen[target] = i
    return refs


_LABEL = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"  # node.model.spec.NAME_PATTERN
SERVICE_NAME_PATTERN = f"{_LABEL}(_{_LABEL})?"  # <stack>_<service>


def _service_name(v: str) -> str:
    if not re.fullmatch(SERVICE_NAME_PATTERN, v) or len(v) > 63:
        what = "1 to 63 lowercase letters, digits and '-', not at either end"
        raise _fail(
            f"must be {what} (pattern ^{_LABEL}$; <stack>_<service> in a stack), got string {v[:60]!r}"
        )
    return v


ServiceName = Annotated[str, AfterValidator(_service_name)]


# depends_on: service -> the condition the leader waits for before placing this service's
# first tasks (`leader.dependencies`): "started" (a task runs) or "healthy" (a task serves);
# "completed" (issue 18): the dependency is a `kind: job` whose current record succeeded.
DependsOn = Annotated[dict[ServiceName, Literal["started", "healthy", "completed"]], Field(max_length=64)]


def stack_problem(
    name: str, stack: str | None, depends_on: Mapping[str, str] | None
) -> tuple[str, tuple[str, ...]] | None:
    """What is wrong with a service's stack membership (message, field path), or None."""
    if stack is not None and not name.startswith(stack + "_"):
        return f"a service of stack {stack!r} is named {stack}_<service>, got {name!r}", ("name",)
    if stack is None and "_" in name:
        return "'_' is for services of a stack (<stack>_<service>, named by `shoal stack deploy`)", ("name",)
    if name in (depends_on or {}):
        return "a service cannot depend on itself", ("depends_on", name)
    return None
