"""Writing a file whole or not at all: a temporary created with its final mode (never
readable by others, even for an instant, when the mode says so), fsynced, renamed over
the old one. A crash leaves the old file or the new one, never half of one. Used for the
node's TLS material (`node.security.files`) and its node id (`node.model.config`)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by umask; a reused tmp keeps its own
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
