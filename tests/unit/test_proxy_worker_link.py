"""The daemon's link to its proxy workers when things go wrong (node.proxy.worker,
node.proxy.worker_link, node.proxy.workers): tables applied at once, a worker's pid
reused by another process, a worker that keeps failing to start."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from node.proxy import worker_wire as wire
from node.proxy import workers
from node.proxy.balancer import Backend
from node.proxy.mesh import MeshSettings
from node.proxy.routes import Route
from node.proxy.worker import Worker as Process
from node.proxy.worker_link import WORKER_MODULE, WorkerError, is_worker
from node.proxy.worker_link import Worker as Link
from tests.helpers import wait_until, wait_until_sync
from tests.unit.test_proxy_mesh import HOST, free_port
from tests.unit.test_proxy_workers import WorkerWorld


async def test_two_tables_applied_at_once_leave_no_listener_behind(tmp_path: Path) -> None:
    """A table from the daemon while the rebind loop retries (or a next daemon's while the
    last one's is binding): before, both opened the port (SO_REUSEPORT), the first listener
    was dropped from `served` and served on with stale replicas, never closed."""
    port = free_port()
    entry = wire.Entry(Route("web", port, 80, "tcp"), HOST, (Backend("t1", HOST, 1, "n1"),))
    w = Process(tmp_path / "worker-0.sock")
    await asyncio.gather(w.apply(MeshSettings(), [entry]), w.rebind(), w.apply(MeshSettings(), [entry]))
    assert list(w.served) == [port] and not w.errors, w.errors
    w.retire(port)
    await asyncio.gather(*w.closing)
    with socket.socket() as s:  # no listener is left on the port (no SO_REUSE*: one would refuse)
        s.bind((HOST, port))


def test_a_dead_workers_pid_taken_by_another_process_is_not_killed(tmp_path: Path) -> None:
    """An adopted worker (not our child) died and was reaped elsewhere; its pid now is
    another process's. Before, `kill` sent that process SIGKILL (at every failed restart:
    the pid was never forgotten); now only a worker of this very socket is killed."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        w = Link(0, tmp_path)
        w.pid = other.pid  # as a hello of the dead worker had said
        w.kill()
        w.kill()
    finally:
        other.terminate()
        other.wait(10)
    assert other.returncode == -signal.SIGTERM  # alive until terminated here
    assert w.pid == 0  # forgotten: not killed again at the next restart


def test_a_worker_is_told_by_its_command_line(tmp_path: Path) -> None:
    path = tmp_path / "worker-0.sock"
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", WORKER_MODULE, "--socket", str(path)]
    )
    try:
        wait_until_sync(lambda: is_worker(fake.pid, path), 10.0, message="its command line read")
        assert not is_worker(fake.pid, tmp_path / "worker-1.sock")  # a sibling's socket
        assert not is_worker(os.getpid(), path)
        w = Link(0, tmp_path)
        w.pid = fake.pid
        w.kill()  # a hung adopted worker of this socket is killed
        assert fake.wait(10) == -signal.SIGKILL
    finally:
        fake.kill()
        fake.wait(10)


async def test_a_worker_that_keeps_dying_is_started_once_at_a_time_and_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll and a sync both find the worker gone: before, each started one (the second
    killing the first's), and one dying at start was started again at every poll and every
    sync (a python process each time). Now one start at a time, then a growing wait."""
    starts: list[float] = []

    async def spawn(self: Link) -> None:
        starts.append(time.monotonic())
        await asyncio.sleep(0)  # the other caller comes in meanwhile
        raise WorkerError(f"proxy worker {self.index} exited with 1")

    monkeypatch.setattr(Link, "spawn", spawn)
    monkeypatch.setattr(workers, "RESTART_BACKOFF", 0.2, raising=False)
    world = WorkerWorld(tmp_path / "proxy", count=1)
    try:
        mesh = world.mesh
        w = mesh.workers[0]
        await asyncio.gather(*(mesh._replace(w, "gone") for _ in range(3)))
        await mesh._replace(w, "gone at the next sync")
        assert len(starts) == 1
        await wait_until(lambda: time.monotonic() >= w.retry_at, 5.0)
        await mesh._replace(w, "gone at a later poll")
        assert len(starts) == 2
        assert w.retry_at - starts[1] > 0.3  # the wait doubled (0.2 s, then 0.4 s)
    finally:
        await world.close()


async def test_the_control_socket_is_0600_from_its_bind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, it was bound with the process's umask and served before its chmod: with a
    umask of 0, another user could connect in between, and stay connected."""
    path = tmp_path / "worker-0.sock"
    modes: list[int] = []
    real = asyncio.start_unix_server

    async def start(*args: Any, **kw: Any) -> asyncio.Server:
        server = await real(*args, **kw)
        modes.append(stat.S_IMODE(path.stat().st_mode))  # as it serves its first connection
        return server

    monkeypatch.setattr(asyncio, "start_unix_server", start)
    w = Process(path)
    umask = os.umask(0)
    try:
        task = asyncio.create_task(w.run())
        await wait_until(lambda: modes, 10.0, message="the worker listens")
    finally:
        os.umask(umask)
    w.stopping.set()
    await task
    asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
    assert modes == [0o600]


TALK_AS_NOBODY = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(10)
try:
    s.sendall(b'{"op":"table","listeners":[]}\\n')
    sys.stdout.write(repr(s.recv(100)))
except (BrokenPipeError, ConnectionResetError):  # closed before it was written to
    sys.stdout.write("b''")
"""


async def test_another_user_is_not_heard_and_does_not_take_the_daemons_place(tmp_path: Path) -> None:
    """A socket file another user could connect to (made wider by hand, or in a directory
    not 0700): before, the worker answered that user, took its tables, and closed its
    daemon's connection for it (the daemon then killed and restarted a healthy worker)."""
    directory = Path(tempfile.mkdtemp(prefix="shoal-peer-"))
    os.chmod(directory, 0o711)  # nobody may reach the socket by its path, not list the directory
    w = Link(0, directory)
    try:
        await w.spawn()
        w.path.chmod(0o666)
        said = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", TALK_AS_NOBODY, str(w.path)],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert said.returncode == 0, said.stderr
        assert said.stdout == "b''", said.stdout  # closed without a word
        assert (await w.call({"op": "state"}))["op"] == "state"  # the daemon's connection stands
    finally:
        w.kill()
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_call_cancelled_before_its_answer_does_not_hand_that_answer_to_the_next(
    tmp_path: Path,
) -> None:
    """A call whose caller is cancelled after the message went (the daemon stopping a
    sync, a caller's own timeout) leaves the worker's answer owed on the connection.
    Before, the next call read that answer as its own: a table acknowledged by the answer
    to a `state`, every later answer one behind. Now the owed answer is read and dropped
    first; the connection is kept (the worker is fine: no restart)."""
    path = tmp_path / "worker-0.sock"
    first_asked = asyncio.Event()
    release = asyncio.Event()
    asked = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal asked
        writer.write(wire.encode({"op": "hello", "pid": os.getpid()}))
        while line := await reader.readline():
            asked += 1
            number = asked
            if number == 1:
                first_asked.set()
                await release.wait()  # the first answer comes after its caller is gone
            writer.write(wire.encode({"op": "state", "answer_to": number, "asked": wire.decode(line)}))
            await writer.drain()

    server = await asyncio.start_unix_server(serve, str(path))
    link = Link(0, tmp_path)
    try:
        assert await link.dial()
        first = asyncio.ensure_future(link.call({"op": "state"}))
        await asyncio.wait_for(first_asked.wait(), 5)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        release.set()
        second = await link.call({"op": "table", "n": 2})
        assert second["answer_to"] == 2 and second["asked"] == {"op": "table", "n": 2}
        third = await link.call({"op": "state"})
        assert third["answer_to"] == 3
        assert link.connected
    finally:
        link.disconnect()
        server.close()
