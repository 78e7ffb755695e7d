"""Files the user names on the command line (specs, Compose files, secrets, `.env`), read
with a bound: a regular file (or standard input for `-`) of at most `limit` bytes. A FIFO,
a device (`/dev/zero`) or a directory is refused before it is read, and a file over the
bound after `limit + 1` bytes, each with an error that names the file and the bound,
before anything is sent to the cluster.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from node.wire.client import ShoalError

MAX_SPEC = 1024 * 1024
"""Bytes of a spec, stack or Compose file (or `.env`): far more than any real one."""


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of `path` (`-`: standard input); ShoalError when it cannot be read, is not
    a regular file, or holds more than `limit` bytes."""
    if str(path) == "-":
        data = sys.stdin.buffer.read(limit + 1)
        name = "standard input"
    else:
        name = f"'{path}'"
        try:
            with open(path, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ShoalError(f"cannot read {what} {name}: not a regular file")
                data = f.read(limit + 1)
        except OSError as exc:
            raise ShoalError(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ShoalError(f"{what} {name} is over {_size(limit)}: too big to send")
    return data


def read_text(path: str | Path, limit: int, what: str) -> str:
    """`read_bounded`, as UTF-8 text (ShoalError when it is not)."""
    data = read_bounded(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = "standard input" if str(path) == "-" else f"'{path}'"
        raise ShoalError(f"cannot read {what} {where}: not UTF-8 text (byte {exc.start})") from None


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n // 1024} KiB"
