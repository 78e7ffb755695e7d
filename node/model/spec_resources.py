"""The field types of a service spec that are about one replica's shape: ports,
resources (reservations and limits), placement, and the checks and units they share
with the rest of the spec (memory sizes, bounds, names, env values).

Split from `node.model.spec`, which composes them into `ServiceSpec` and re-exports the
public names; the errors raised here are `PydanticCustomError`s that `spec.py` turns
into `SpecError` with the field path, line and column.

Pure: imports no grpc, docker or etcd.
"""

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from node.model.constraints import ConstraintError, parse_constraint, parse_label_attribute

MIN_MEMORY = 6 * 2**20
MAX_MEMORY = 2**40
NAME_PATTERN = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"
ENV_KEY_PATTERN = "[A-Za-z_][A-Za-z0-9_]*"
_UNITS = {"Ti": 2**40, "Gi": 2**30, "Mi": 2**20, "Ki": 2**10, "T": 10**12, "G": 10**9, "M": 10**6}
_UNITS |= {"k": 10**3, "K": 10**3, "": 1}
_MEMORY_RE = re.compile(r"(\d{1,20}(?:\.\d{1,20})?)\s*([KMGT]i|[kKMGT])?")


def _fail(message: str, at: tuple[Any, ...] = ()) -> PydanticCustomError:
    # The message goes in as context, so braces in user input are never read as a template.
    return PydanticCustomError("spec", "{msg}", {"msg": message, "at": at})


def _describe(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "null" if v is None else f"boolean {str(v).lower()}"
    if isinstance(v, int | float):
        return f"number {v!r}" if abs(v) < 10**30 else "a very large number"
    if isinstance(v, str):
        return f"string {v[:60]!r}" + ("..." if len(v) > 60 else "")
    return "a list" if isinstance(v, list) else "a mapping" if isinstance(v, dict) else type(v).__name__


def _between(lo: float, hi: float, show: Callable[[Any], str] = str) -> AfterValidator:
    def check(v: Any) -> Any:
        if not lo <= v <= hi:
            got = "a very large number" if abs(v) >= 10**30 else show(v)
            raise _fail(f"must be between {show(lo)} and {show(hi)}, got {got}")
        return v

    return AfterValidator(check)


def _matches(pattern: str, what: str, longest: int = 255) -> AfterValidator:
    def check(v: str) -> str:
        if not re.fullmatch(pattern, v) or len(v) > longest:
            raise _fail(f"must be {what} (pattern ^{pattern}$), got {_describe(v)}")
        return v

    return AfterValidator(check)


def _image(v: str) -> str:
    if not v or len(v) > 255 or re.search(r"\s", v):
        raise _fail(f"must be an image reference, 1 to 255 characters, no whitespace; got {_describe(v)}")
    return v


def _env_value(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if not isinstance(v, str):
        raise _fail(f"must be a string, number or boolean, got {_describe(v)}")
    return v


def parse_memory(text: str) -> int:
    """ "32Mi" -> 33554432, "1G" -> 10**9, "4096" -> 4096; ValueError saying what is allowed."""
    m = _MEMORY_RE.fullmatch(text.strip())
    if m is None:
        units = "Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000), e.g. 32Mi or 1G"
        raise ValueError(f"must be a number of bytes or a number with a unit: {units}; got {_describe(text)}")
    n = Decimal(m[1]) * _UNITS[m[2] or ""]
    if n != n.to_integral_value():
        raise ValueError(f"must be a whole number of bytes, got {_describe(text)}")
    return int(n)


def _memory(v: Any) -> Any:
    if not isinstance(v, str):
        return v  # ints go on to the strict int check, which also rejects bools
    try:
        return parse_memory(v)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def format_memory(n: int) -> str:
    """Bytes in the largest unit that divides them exactly: 33554432 -> "32Mi"; parses back."""
    for unit, size in _UNITS.items():
        if n and size > 1 and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _no_conflicts(ports: list["PortSpec"]) -> list["PortSpec"]:
    published: dict[int, int] = {}
    bound: dict[tuple[int, str], int] = {}
    for i, p in enumerate(ports):
        if p.published in published:
            raise _fail(
                f"published port {p.published} is already used by ports[{published[p.published]}]",
                (i, "published"),
            )
        if (j := bound.get((p.container, p.protocol))) is not None:
            raise _fail(
                f"container port {p.container}/{p.protocol} is already in ports[{j}]", (i, "container")
            )
        if p.published is not None:
            published[p.published] = i
        bound[(p.container, p.protocol)] = i
    return ports


_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
_Port = Annotated[int, _between(1, 65535)]
_Cpu = Annotated[float, _between(0.01, 1024)]
_Memory = Annotated[int, BeforeValidator(_memory), _between(MIN_MEMORY, MAX_MEMORY, format_memory)]
_Name = Annotated[
    str, _matches(NAME_PATTERN, "1 to 63 lowercase letters, digits and '-', not at either end", 63)
]
_EnvKey = Annotated[str, _matches(ENV_KEY_PATTERN, "letters, digits and '_', not starting with a digit")]
_Env = Annotated[dict[_EnvKey, Annotated[str, BeforeValidator(_env_value)]], Field(max_length=256)]


class PortSpec(BaseModel):
    """A container port, optionally published on every node's proxy (L4 `tcp`, L7 `http`,
    or HTTP/2 over cleartext balanced per stream: `grpc`, `http2`; decision 61)."""

    model_config = _STRICT
    container: _Port
    published: _Port | None = None
    protocol: Literal["tcp", "http", "grpc", "http2"] = "tcp"
    # issue 17 item 4 (decision 75): `kernel`, each node DNATs new connections to its own
    # replicas in nftables (node.proxy.kernel_rules); None: the userland mesh only
    fast_path: Literal["kernel"] | None = None

    @model_validator(mode="after")
    def _fast_path_fits(self) -> "PortSpec":
        if self.fast_path is None:
            return self
        if self.protocol != "tcp":
            raise _fail(
                f"the kernel fast path carries tcp ports only (connections, not requests); this port is "
                f"{self.protocol}: remove fast_path, or make it protocol: tcp",
                ("fast_path",),
            )
        if self.published is None:
            raise _fail(
                "the kernel fast path works on a published port: add published: <port>, or remove fast_path",
                ("fast_path",),
            )
        return self


class Limits(BaseModel):
    """What Docker enforces on a replica (`nano_cpus`, `mem_limit`), at least the reservation."""

    model_config = _STRICT
    cpu: _Cpu | None = None  # cores
    memory: _Memory | None = None  # bytes


class Resources(BaseModel):
    """Per replica: `cpu` and `memory` are reserved on the node (the scheduler never
    overcommits them) and are also the Docker limits unless `limits` sets higher ones."""

    model_config = _STRICT
    cpu: _Cpu | None = None  # cores
    memory: _Memory | None = None  # bytes; YAML may say "32Mi", "1G", ...
    limits: Limits | None = None

    @model_validator(mode="after")
    def _limits_cover_the_reservation(self) -> "Resources":
        for name, show in (("cpu", str), ("memory", format_memory)):
            reserved, limit = getattr(self, name), getattr(self.limits, name, None)
            if reserved is not None and limit is not None and limit < reserved:
                at_least = f"must be at least the reservation resources.{name} ({show(reserved)})"
                raise _fail(f"{at_least}, got {show(limit)}", ("limits", name))
        return self


def _constraint(v: str) -> str:
    try:
        parse_constraint(v)
    except ConstraintError as exc:
        raise _fail(str(exc)) from None
    return v


def _spread(v: str) -> str:
    try:
        parse_label_attribute(v)
    except ConstraintError as exc:
        raise _fail(str(exc)) from None
    return v


class Placement(BaseModel):
    """Where replicas may go and how they are spread. See `node.model.constraints` for the syntax."""

    model_config = _STRICT
    constraints: Annotated[list[Annotated[str, AfterValidator(_constraint)]], Field(max_length=32)] = []
    spread: Annotated[str, AfterValidator(_spread)] | None = None  # node.labels.<key>: even over values
    max_per_node: Annotated[int, _between(1, 10000)] | None = None
    strategy: Literal["spread", "binpack"] | None = None  # None: the cluster default, spread
