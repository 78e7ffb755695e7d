"""Compose entrypoint, user, working_dir, read_only and logging onto shoal's spec
(issue 13 item 2, decision 70), and `labels` / `deploy.labels` onto `labels` /
`service_labels` (decision 73): a list of `KEY=VALUE` (`KEY` alone: an empty value) or a
mapping, its numbers and booleans taken as their text, as Compose does.

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
COMPOSE_KEY |= {"labels": "labels", "service_labels": "deploy"}
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
    if body.get("labels") is not None:
        _labels(body, "labels", "labels", out, "labels", error)
    deploy = body.get("deploy")
    if isinstance(deploy, dict) and deploy.get("labels") is not None:
        _labels(deploy, "labels", "deploy.labels", out, "service_labels", error)


def _labels(node: Any, key: str, path: str, out: dict[str, Any], field: str, error: Report) -> None:
    value = node[key]
    labels: dict[str, str] = {}
    if isinstance(value, list):
        for item in value:
            k, _, v = str(item).partition("=")
            labels[k] = v
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list):
                error(value, k, f"{path}.{k}", "a label's value must be a string")
                return
            labels[str(k)] = "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    else:
        error(node, key, path, "must be a list of KEY=VALUE or a mapping")
        return
    out[field] = labels


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
