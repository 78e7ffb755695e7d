"""Running `nft -f -` from the daemon, for the VIP table (decision 74) and the kernel
fast path's table (decision 75): one runner, one set of errors.

Why a worker thread and Python's `subprocess`, never `asyncio.create_subprocess_exec`:
under uvloop the latter spawns with libuv's `fork()`, which runs the `pthread_atfork`
handlers gRPC's core installs, and uvloop's spawn waits, on the event loop, until the
child has exec'ed. With gRPC threads busy the child can hang in those handlers (gRPC
prints "Other threads are currently calling into gRPC, skipping fork() handlers"), and
then the whole daemon stops: seen in the integration suite as a node dead to its peers
within a second and silent for 30 s, its main thread in `create_subprocess_exec`.
CPython's `subprocess` starts the child with `vfork()` (no atfork handlers) and here
runs in a thread, so the loop never waits on a spawn and a slow `nft` is killed at
`timeout`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Sequence
from typing import Any

TIMEOUT = 5.0  # s one run of nft may take


class NftError(Exception):
    """`nft` refused the table, timed out or could not be run; the message says which."""


class NftMissing(NftError):
    """The `nft` program is not there (not worth trying again)."""


def _nft(program: str, args: Sequence[str], timeout: float, text: str | None = None) -> bytes:
    """`program <args>` (fed `text` on stdin when given), its standard output; `NftError`
    (or `NftMissing`) with nft's own first line of error."""
    what = " ".join([program, *args])
    try:
        done = subprocess.run(
            [program, *args],
            input=None if text is None else text.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise NftMissing(f"cannot run {program}: not found") from exc
    except subprocess.TimeoutExpired:
        raise NftError(f"{what}: no answer within {timeout:g}s (killed)") from None
    except OSError as exc:
        raise NftError(f"cannot run {program}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
        raise NftError(f"{what} exited with {done.returncode}: {lines[0][:300]}")
    return done.stdout


def _run(program: str, text: str, timeout: float) -> None:
    _nft(program, ["-f", "-"], timeout, text)


async def run_nft(program: str, text: str, timeout: float | None = None) -> None:
    """`program -f -` fed `text`, off the event loop; `NftError` with nft's own words."""
    await asyncio.to_thread(_run, program, text, TIMEOUT if timeout is None else timeout)


def query_nft(program: str, args: Sequence[str], timeout: float | None = None) -> Any:
    """`program -j <args>` (a `list` command), its JSON; blocking, so for a thread that
    may wait (the `/metrics` scrape's, never the event loop). `NftError` as `run_nft`."""
    out = _nft(program, ["-j", *args], TIMEOUT if timeout is None else timeout)
    try:
        return json.loads(out or b"{}")
    except ValueError as exc:
        raise NftError(f"{program} -j {' '.join(args)}: not JSON ({exc})") from None
