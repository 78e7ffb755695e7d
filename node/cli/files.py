"""Files the user names on the command line (specs, Compose files, secrets, `.env`), read
with a bound: a regular file (or standard input for `-`) of at most `limit` bytes. A FIFO,
a device (`/dev/zero`) or a directory is refused before it is read, and a file over the
bound after `limit + 1` bytes, each with an error that names the file and the bound,
before anything is sent to the cluster.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from node.wire.client import ShoalError

MAX_SPEC = 1024 * 1024
"""Bytes of a spec, stack or Compose file (or `.env`): far more than any real one."""


def read_limited(path: str | Path, limit: int) -> bytes:
    """The bytes of `path` (`-`: standard input), at most `limit`; OSError (with `strerror`
    saying why) when it cannot be read, is not a regular file, or holds more."""
    if str(path) == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"over {_size(limit)}, too big to send")
    return data


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """`read_limited`, with ShoalError naming the file and why."""
    try:
        return read_limited(path, limit)
    except OSError as exc:
        name = "standard input" if str(path) == "-" else f"'{path}'"
        raise ShoalError(f"cannot read {what} {name}: {exc.strerror or exc}") from None


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
