"""Logging set-up: one line per record, as text for people or JSON for machines.

Every line goes through `redact` last: code never logs a token or a key (only token
ids), and this catches the mistake if it ever does, in messages and tracebacks alike.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_EXTRA = ("service", "task", "cause", "node")
_SECRETS = [
    (re.compile(r"(shoal_[a-z2-7]{10}_)[a-z2-7]{52}"), r"\1<redacted>"),
    (re.compile(r"SHOAL-1-[A-Za-z2-7]{52}-[A-Za-z2-7]{32}"), "SHOAL-1-<redacted>"),
    (re.compile(r"(?i)(bearer\s+)\S+"), r"\1<redacted>"),
    (
        re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S),
        "<private key redacted>",
    ),
]


def redact(text: str) -> str:
    """`text` without client tokens' secrets, join tokens, bearer values or private keys."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class _Redacting(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node,
            "msg": record.getMessage(),
        }
        for key in _EXTRA:
            value = getattr(record, key, None)
            if value:
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup(node: str, fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_Redacting(JsonFormatter(node)))
    else:
        handler.setFormatter(
            _Redacting(logging.Formatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s"))
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("etcd3aio", "docker", "urllib3", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
