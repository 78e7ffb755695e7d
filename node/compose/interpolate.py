"""Compose variable interpolation and its value syntaxes (sizes, durations).

Interpolation, as the Compose specification says: `$VAR` and `${VAR}`; `${VAR:-default}`
(unset or empty -> default), `${VAR-default}` (unset -> default); `${VAR:?message}` and
`${VAR?message}` (an error naming the variable); `${VAR:+alt}` / `${VAR+alt}`; `$$` is a
literal `$`. Variables come from the caller's environment (the CLI: the shell's, over the
project's `.env` file). A default may itself hold `${OTHER}`.

Sizes are Compose's: a number of bytes or `<n><unit>` with b, k, m, g (1024-based:
`512m` is 512 MiB, unlike shoal's own `512M`). Durations are Go's: `1m30s`, `10s`,
`500ms`, `1.5h`, also `us` and `ns`; a bare number is seconds.

Pure: no grpc, docker or etcd.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SIMPLE = re.compile(rf"\$({_NAME})")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class InterpolationError(ValueError):
    pass


def interpolate(text: str, env: Mapping[str, str], depth: int = 0) -> str:
    """`text` with every variable replaced; `InterpolationError` saying what to fix."""
    if depth > 5:
        raise InterpolationError("variables nested more than 5 levels deep")
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing(text, i + 2)
            if end < 0:
                raise InterpolationError(f"unclosed '${{' in {text[:80]!r}: write $$ for a literal $")
            out.append(_braced(text[i + 2 : end], env, depth))
            i = end + 1
        elif m := _SIMPLE.match(text, i):
            out.append(env.get(m[1], ""))
            i = m.end()
        else:
            raise InterpolationError(f"a lone '$' in {text[:80]!r}: write $$ for a literal $")
    return "".join(out)


def _closing(text: str, start: int) -> int:
    level = 1
    for j in range(start, len(text)):
        if text.startswith("${", j):
            level += 1
        elif text[j] == "}":
            level -= 1
            if level == 0:
                return j
    return -1


def _braced(body: str, env: Mapping[str, str], depth: int) -> str:
    m = re.fullmatch(rf"({_NAME})(?:(:?[-?+])(.*))?", body, re.DOTALL)
    if m is None:
        raise InterpolationError(f"'${{{body[:60]}}}' is not a variable: use ${{NAME}} or ${{NAME:-default}}")
    name, op, arg = m[1], m[2], m[3] or ""
    value = env.get(name)
    unset = value is None or (op is not None and op.startswith(":") and value == "")
    if op is None:
        return value or ""
    kind = op[-1]
    if kind == "-":
        return interpolate(arg, env, depth + 1) if unset else str(value)
    if kind == "+":
        return "" if unset else interpolate(arg, env, depth + 1)
    if unset:  # "?"
        why = interpolate(arg, env, depth + 1) or "is required"
        raise InterpolationError(f"variable {name} is not set: {why}")
    return str(value)


def parse_size(value: object) -> int:
    """Compose sizes -> bytes: 512 -> 512, "512m" -> 536870912, "1g", "100kb"."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size like 512m or 1g, got {value!r}")
    if isinstance(value, int):
        return value
    m = _SIZE.fullmatch(str(value).strip())
    if m is None:
        raise ValueError(f"must be a size: bytes, or a number with b, k, m or g (1024-based), got {value!r}")
    return int(float(m[1]) * _SIZE_UNITS[m[2].lower()])


def parse_duration(value: object) -> float:
    """Go durations -> seconds: "1m30s" -> 90.0, "500ms" -> 0.5; a number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 10s or 1m30s, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"must be a duration like 10s, 500ms or 1m30s, got {value!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
