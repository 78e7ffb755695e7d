"""The daemon's end of one proxy worker process (decision 63): its socket, its connection,
its process when this daemon started it; and how a daemon tells workers to stop.

`node.proxy.workers` (`WorkerMesh`) holds one `Worker` per index; `stop_leftovers` and
`stop_all` dial every socket of a directory (a lowered setting, `shoal dev`'s stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

import node
from node.proxy import worker_wire as wire

log = logging.getLogger("node.proxy.workers")
WORKER_MODULE = "node.proxy.worker"  # what a worker runs (`python -m`); a hung one is told by it

CALL_TIMEOUT = 5.0
"""Seconds a worker has to answer one message."""
START_TIMEOUT = 15.0
"""Seconds a started worker has to answer on its socket."""


class WorkerError(Exception):
    """A worker could not be reached, started or understood."""


class Worker:
    """The daemon's end of one worker: its socket, connection, process (when started here)."""

    def __init__(self, index: int, directory: Path, orphan_exit: float = 0.0) -> None:
        self.index = index
        self.orphan_exit = orphan_exit
        self.path = directory / f"worker-{index}.sock"
        self.log_path = directory / f"worker-{index}.log"
        self.pid = 0
        self.proc: subprocess.Popen[bytes] | None = None  # None when adopted
        self.state: dict[str, Any] = {}
        self.state_at = 0.0  # time.monotonic() of `state`'s answer
        self.table = 0  # the number of the last table it answered (`WorkerMesh.tables`)
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()
        self._unread = 0  # answers owed to calls cancelled after they sent (`call`)
        self.restarting = asyncio.Lock()  # held while the mesh starts it again
        self.restarts = 0  # starts since it last answered a poll (`WorkerMesh._replace`)
        self.retry_at = 0.0  # time.monotonic() before which it is not started again

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def dial(self) -> bool:
        """Connect to a worker listening at `path`; False when none answers."""
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that
            # comes as the awaited call completes, and the daemon's poll then never stops
            # (a test's teardown hung 300 s on it)
            with wire.reachable(self.path) as name:
                async with asyncio.timeout(CALL_TIMEOUT):
                    reader, writer = await asyncio.open_unix_connection(name, limit=wire.MAX_LINE)
        except (OSError, TimeoutError, ValueError):
            return False
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                hello = wire.decode(await reader.readline())
        except (OSError, TimeoutError, ValueError):
            _stop_silent(writer)  # it took the connection and says nothing: hung (SIGSTOP, a bug)
            return False
        self._conn, self.state, self.pid = (reader, writer), hello, int(hello.get("pid") or 0)
        self.state_at, self.table = time.monotonic(), 0  # serves a table of another daemon, if any
        return True

    def prestart(self) -> None:
        """Start the process now unless a worker answers at `path` already (synchronous:
        from the daemon's construction, so it boots while the daemon does)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1.0)
            try:
                with wire.reachable(self.path) as name:
                    s.connect(name)
                return
            except OSError:
                pass
        self.proc = _popen(self.path, self.log_path, self.orphan_exit)

    async def spawn(self) -> None:
        """Start a worker process (unless `prestart` did) and dial it until it answers."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = _popen(self.path, self.log_path, self.orphan_exit)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(START_TIMEOUT), wait=wait_fixed(0.05),
                retry=retry_if_exception_type(WorkerError), reraise=True,
            ):  # fmt: skip
                with attempt:
                    if self.proc.poll() is not None:
                        raise WorkerError(f"proxy worker {self.index} exited with {self.proc.returncode}")
                    if not await self.dial():
                        raise WorkerError(f"proxy worker {self.index} does not answer on {self.path}")
                    if self.pid != self.proc.pid:  # its predecessor, still there (another build)
                        self.disconnect()
                        self.pid = 0  # not one to kill should this start fail
                        raise WorkerError(
                            f"proxy worker {self.index} (pid {self.proc.pid}) not listening yet"
                        )
        except (WorkerError, asyncio.CancelledError):
            self.kill()  # also when the daemon stops meanwhile: nothing half-started is left
            raise

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            if self._conn is None:
                raise WorkerError(f"proxy worker {self.index}: not connected")
            reader, writer = self._conn
            try:
                async with asyncio.timeout(CALL_TIMEOUT):  # not wait_for: see `dial`
                    while self._unread:  # a cancelled call's answer: not this call's
                        wire.decode(await reader.readline())
                        self._unread -= 1
                writer.write(wire.encode(message))
                try:
                    async with asyncio.timeout(CALL_TIMEOUT):
                        await writer.drain()
                        answer = wire.decode(await reader.readline())
                except asyncio.CancelledError:
                    self._unread += 1  # the caller went; the answer still comes, for nobody
                    raise
            except (OSError, TimeoutError, ValueError) as exc:
                self.disconnect()
                raise WorkerError(f"proxy worker {self.index} (pid {self.pid}): {exc!r}") from exc
            self.state, self.state_at = answer, time.monotonic()
            return answer

    def disconnect(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None
        self._unread = 0

    def kill(self) -> None:
        """End the process (it hangs or is of no use); reap it when it is our child.

        `pid` is forgotten then. A pid that is not our child's (an adopted worker) is
        killed only while it is still this socket's worker (`is_worker`): a worker that
        died was reaped by another, and its pid may be anyone's by now (before, the
        daemon, as root, sent SIGKILL to it at every failed restart)."""
        if self.pid and (self.proc is None or self.proc.pid != self.pid) and is_worker(self.pid, self.path):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # Popen's: signals no pid it has reaped already
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.pid = 0
        self.disconnect()


def is_worker(pid: int, path: Path) -> bool:
    """Is process `pid` a proxy worker listening on `path` (its command line says so)?"""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if WORKER_MODULE.encode() not in args or b"--socket" not in args[:-1]:
        return False
    given = Path(os.fsdecode(args[args.index(b"--socket") + 1]))
    return given == path or given.resolve() == path.resolve()


async def stop_worker(w: Worker) -> None:
    with contextlib.suppress(WorkerError):
        await w.call({"op": "stop"})


async def stop_leftovers(directory: Path, keep: int = 0) -> int:
    """Tell every worker whose socket is in `directory` with an index >= `keep` to stop
    (the setting was lowered, or set to 0: the daemon listens itself); how many were."""
    stopped = 0
    for index in _indexes(directory):
        if index < keep:
            continue
        w = Worker(index, directory)
        if await w.dial():
            await stop_worker(w)
            w.disconnect()
            stopped += 1
            log.info("proxy worker %d (pid %d) told to stop", w.index, w.pid)
    return stopped


async def stop_all(directory: Path) -> list[int]:
    """Tell every worker answering in `directory` to stop (drain and exit); their pids
    (`shoal dev` and the tests stop a cluster's workers with it: a graceful stop of a
    daemon leaves them serving)."""
    pids = []
    for index in _indexes(directory):
        w = Worker(index, directory)
        if await w.dial():
            await stop_worker(w)
            w.disconnect()
            pids.append(w.pid)
    return pids


def _indexes(directory: Path) -> list[int]:
    """The indexes of the worker sockets in `directory`."""
    if not directory.is_dir():
        return []
    found = (re.fullmatch(r"worker-(\d+)\.sock", p.name) for p in directory.iterdir())
    return sorted(int(m[1]) for m in found if m is not None)


def _popen(path: Path, log_path: Path, orphan_exit: float) -> subprocess.Popen[bytes]:
    """A worker on `path`, in its own session, running this very tree of shoal."""
    env = dict(os.environ)
    root = str(Path(node.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, "--socket", str(path),
             "--orphan-exit", str(orphan_exit)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, env=env,
        )  # fmt: skip


def _stop_silent(writer: asyncio.StreamWriter) -> None:
    """SIGKILL the worker behind a connection that got no hello: a hung worker keeps its
    SO_REUSEPORT listeners, so about 1/(N+1) of every port's new connections would hang
    behind it for good, and its successor takes the socket path. Only a process whose
    command line is a proxy worker's (the peer of the unix socket, SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        if (
            pid > 1
            and pid != os.getpid()
            and WORKER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        ):
            os.kill(pid, signal.SIGKILL)
            log.warning("proxy worker pid %d took a connection and said nothing: killed", pid)
    except (OSError, struct.error):
        pass
    finally:
        writer.close()
