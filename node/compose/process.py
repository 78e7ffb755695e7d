"""Compose entrypoint, user, working_dir, read_only and logging onto shoal's spec
(issue 13 item 2, decision 70). `labels` stay ignored with a warning (`node.compose.keys`).

Pure: no grpc, docker or etcd.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

Report = Callable[[Any, Any, str, str], None]  # (node, key, path below the service, message)
# spec field -> the Compose key it came from (an error of the spec check is reported there)
COMPOSE_KEY = {"secrets": "secrets", "configs": "configs", "entrypoint": "entrypoint", "user": "user"}
COMPOSE_KEY |= {"working_dir": "working_dir", "read_only": "read_only", "logging": "logging"}
_LOG_KEYS = ("driver", "options")


def service_keys(body: Any, out: dict[str, Any], error: Report, warn: Report) -> None:
    """The keys above of one service (its mapping `body`) into `out`, the spec's fields."""
    if body.get("entrypoint") is not None:
        value = body["entrypoint"]
        if isinstance(value, str):
            try:
                out["entrypoint"] = shlex.split(value)
            except ValueError as exc:
                error(body, "entrypoint", "entrypoint", f"cannot be split into words: {exc}")
        elif isinstance(value, list):
            out["entrypoint"] = [str(v) for v in value]
        else:
            error(body, "entrypoint", "entrypoint", "must be a string or a list of strings")
    for key in ("user", "working_dir"):
        if body.get(key) is not None:
            out[key] = str(body[key])
    if "read_only" in body:
        if not isinstance(body["read_only"], bool):
            error(body, "read_only", "read_only", f"must be true or false, got {body['read_only']!r}")
        elif body["read_only"]:
            out["read_only"] = True
    if body.get("logging") is not None:
        _logging(body, out, error)


def _logging(body: Any, out: dict[str, Any], error: Report) -> None:
    value = body["logging"]
    if not isinstance(value, dict):
        error(body, "logging", "logging", "must be a mapping with driver: and options:")
        return
    for k in value:
        if k not in _LOG_KEYS:
            error(value, k, f"logging.{k}", "unknown key; logging has driver and options")
    options = value.get("options") or {}
    if not isinstance(options, dict):
        error(value, "options", "logging.options", "must be a mapping such as {max-size: 10m, max-file: '3'}")
        return
    out["logging"] = {
        "driver": str(value.get("driver") or "json-file"),
        "options": {str(k): str(v) for k, v in options.items()},
    }
