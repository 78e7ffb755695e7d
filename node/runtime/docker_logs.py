"""A container's logs and an interactive exec, straight from dockerd's HTTP API, async.

Why not the SDK (`node.runtime.docker`): a followed log or an exec session lasts as
long as a person watches, and the SDK would hold a pool thread and a pooled connection
for all that time. Here each stream is its own connection to the engine's socket,
read by the event loop: closing it (the reader went away, Ctrl-C, the stream was
cancelled) ends it at once, TCP flow control is the back-pressure, and nothing is
buffered past one read (64 KiB) and one frame.

- `logs` yields (unix ns, "stdout"|"stderr", line) from `GET /containers/{id}/logs`
  with `timestamps=1`, so lines of several tasks can be merged in time order
  (`node.runtime.logmerge`).
- `exec` starts `POST /containers/{id}/exec` + `/exec/{id}/start` on an upgraded
  connection (stdin goes in, stdout/stderr come out: framed, or raw with a TTY),
  `resize` and the exit code after the output ends (`/exec/{id}/json`).
- `find` names the newest container of a task by its `io.shoal.task` label; `tasks`
  lists the tasks whose id starts with a prefix (`node.api.taskfind`).

Errors: an engine that cannot be reached is `RuntimeUnavailable`; anything the engine
refuses is `EngineError` with its message (a missing container says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_fixed

from node.runtime.base import LABELS, EngineError, RuntimeUnavailable
from node.runtime.logmerge import Chunked, Frames, framed_lines, split_timestamp

DEFAULT_URL = "unix:///var/run/docker.sock"
READ = 65536  # bytes per read of a stream
CONNECT_TIMEOUT = 5.0  # s to connect to the engine and get its answer's head
CALL_TIMEOUT = 10.0  # s for a short call (find, exec create, inspect, resize)
EXIT_WAIT = 5.0  # s to wait for an exec's exit code after its output ended
MAX_LINE = 64 * 1024  # bytes of a line kept (Docker splits longer ones at 16 KiB anyway)
# A followed log comes from dockerd a line per HTTP chunk: read as it comes, a stream of
# 20k lines/s would be 20k messages/s on every hop. Lines read within PACE of the last
# list sent wait for the next one (a line waits at most PACE; after a quiet spell, none).
PACE = 0.01  # s
HOLD_BYTES = 256 * 1024  # engine bytes held at most before a list goes anyway


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class DockerStreams:
    """Log streams and exec sessions of one engine (`url`: unix:// or plain tcp://)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_URL

    # -- plumbing ------------------------------------------------------------------------

    async def _connect(self) -> _Conn:
        parsed = urllib.parse.urlsplit(self.url)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if parsed.scheme in ("unix", ""):
                    reader, writer = await asyncio.open_unix_connection(parsed.path or self.url)
                elif parsed.scheme in ("tcp", "http"):
                    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 2375)
                else:
                    raise EngineError(
                        f"logs and exec need a unix:// or tcp:// engine address, not {self.url}"
                    )
        except (OSError, TimeoutError) as exc:
            raise RuntimeUnavailable(
                f"cannot reach the Docker engine at {self.url}: {exc or type(exc).__name__}; "
                "is dockerd running?"
            ) from exc
        return _Conn(reader, writer)

    async def _open(
        self, method: str, path: str, body: Any = None, upgrade: bool = False, version: str = "1.1"
    ) -> tuple[_Conn, int, dict[str, str]]:
        """Send one request on a new connection; its status and headers (the body is left
        on the connection). HTTP/1.0 (`version`) gets a body that is not chunked: it ends
        with the connection."""
        conn = await self._connect()
        data = json.dumps(body).encode() if body is not None else b""
        head = [f"{method} {path} HTTP/{version}", "Host: docker", f"Content-Length: {len(data)}"]
        if body is not None:
            head.append("Content-Type: application/json")
        head += ["Connection: Upgrade", "Upgrade: tcp"] if upgrade else ["Connection: close"]
        try:
            conn.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await conn.writer.drain()
                raw = await conn.reader.readuntil(b"\r\n\r\n")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            conn.close()
            raise RuntimeUnavailable(
                f"the Docker engine at {self.url} did not answer {method} {path.split('?')[0]}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        return conn, status, headers

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A short call: status and decoded JSON body (None when empty)."""
        async with asyncio.timeout(CALL_TIMEOUT):
            conn, status, headers = await self._open(method, path, body)
            try:
                data = b"".join([chunk async for chunk in _body(conn.reader, headers)])
            finally:
                conn.close()
        try:
            decoded = json.loads(data) if data.strip() else None
        except ValueError:
            decoded = {"message": data.decode(errors="replace")[:300]}
        if status >= 400:
            message = decoded.get("message", "") if isinstance(decoded, dict) else ""
            raise EngineError(f"Docker: {message or f'HTTP {status}'}")
        return status, decoded

    # -- the calls ---------------------------------------------------------------------------

    async def find(self, task_id: str, previous: int = 0) -> str:
        """The id of the newest container of `task_id` (running or not), or the `previous`th
        before it (an earlier run kept on this node, decision 71); EngineError if none."""
        filters = json.dumps({"label": [f"{LABELS.TASK}={task_id}"]})
        _, found = await self._call("GET", "/containers/json?all=1&filters=" + urllib.parse.quote(filters))
        if not found:
            raise EngineError(f"task {task_id} has no container on this node (removed, or not started yet)")
        newest_first = sorted(found, key=lambda c: c.get("Created", 0), reverse=True)
        if previous >= len(newest_first):
            raise EngineError(
                f"task {task_id} has {len(newest_first) - 1} earlier run(s) kept on this node, "
                f"not {previous} (a node keeps the last `task_history_limit` exited containers per slot)"
            )
        return str(newest_first[previous]["Id"])

    async def tasks(self, prefix: str, labels: dict[str, str]) -> list[dict[str, str]]:
        """The tasks whose id starts with `prefix` among the containers carrying `labels`
        (running or exited: kept ones too, decision 71), one list call: for each task, the
        labels and state of its newest container (`task`, `service`, `slot`, `state`, `id`,
        `status`: Docker's words, `created`: unix seconds as text)."""
        wanted = [f"{k}={v}" for k, v in labels.items()] + [LABELS.TASK]
        filters = json.dumps({"label": wanted})
        _, found = await self._call("GET", "/containers/json?all=1&filters=" + urllib.parse.quote(filters))
        newest: dict[str, dict[str, Any]] = {}
        for c in found or []:
            task = (c.get("Labels") or {}).get(LABELS.TASK, "")
            if task.startswith(prefix) and c.get("Created", 0) >= newest.get(task, {}).get("Created", 0):
                newest[task] = c
        return [
            {
                "task": task,
                "service": c["Labels"].get(LABELS.SERVICE, ""),
                "slot": c["Labels"].get(LABELS.SLOT, ""),
                "state": str(c.get("State", "")),
                "id": str(c.get("Id", "")),
                "status": str(c.get("Status", "")),
                "created": str(c.get("Created", 0)),
                "uid": c["Labels"].get(LABELS.UID, ""),
            }
            for task, c in sorted(newest.items())
        ]

    async def logs(
        self, container_id: str, follow: bool, tail: int | None, since: float
    ) -> AsyncIterator[list[tuple[int, str, bytes]]]:
        """(unix ns, stream, line) of the container, in its order, in lists: at most one
        list per PACE, of what the engine gave meanwhile, and the first at once (lines
        travel in batches: per-line awaits and messages cost more than the line); with
        `follow`, until the container stops or the reader stops reading (the connection
        is closed then)."""
        query = {
            "stdout": "1",
            "stderr": "1",
            "timestamps": "1",
            "follow": "1" if follow else "0",
            "tail": "all" if tail is None else str(tail),
        }
        if since > 0:
            query["since"] = f"{since:.9f}"
        path = f"/containers/{urllib.parse.quote(container_id)}/logs?{urllib.parse.urlencode(query)}"
        # HTTP/1.0: dockerd then sends the log as it is, not a chunk per line to decode
        conn, status, headers = await self._open("GET", path, version="1.0")
        try:
            if status >= 400:
                data = b"".join([c async for c in _body(conn.reader, headers)])
                raise EngineError(f"Docker: {_message(data) or f'HTTP {status}'}")
            framed: bool | None = None  # told by the first bytes: a frame header or a stamp
            frames = Frames()
            partial = b""
            body = _Body(conn.reader, headers)
            loop = asyncio.get_running_loop()
            held: list[tuple[int, str, bytes]] = []
            held_bytes, sent = 0, -PACE  # what waits to go, and when the last list went
            while True:
                if held and (held_bytes >= HOLD_BYTES or loop.time() >= sent + PACE):
                    yield held
                    held, held_bytes, sent = [], 0, loop.time()
                    continue
                if held:  # more may come before this list is due: read until then
                    try:
                        async with asyncio.timeout_at(sent + PACE):
                            chunk = await body.read()
                    except TimeoutError:
                        continue
                else:
                    chunk = await body.read()
                if not chunk:
                    break
                if framed is None:
                    framed = chunk[:1] in (b"\x01", b"\x02")  # a stamp starts with a digit
                if framed:
                    held += framed_lines(frames, chunk, MAX_LINE)
                else:  # a TTY container: one raw stream, lines across reads
                    *whole, partial = (partial + chunk).split(b"\n")
                    for line in whole:
                        stamp, text = split_timestamp(line.rstrip(b"\r"))
                        held.append((stamp, "stdout", text[:MAX_LINE]))
                    partial = partial[-MAX_LINE:]
                held_bytes += len(chunk)
            if partial:
                stamp, text = split_timestamp(partial)
                held.append((stamp, "stdout", text))
            if held:
                yield held
        finally:
            conn.close()

    async def exec(
        self,
        container_id: str,
        command: Sequence[str],
        tty: bool,
        stdin: bool,
        size: tuple[int, int] | None = None,
    ) -> ExecSession:
        """Start `command` in the running container; the session to talk to it."""
        _, made = await self._call(
            "POST",
            f"/containers/{urllib.parse.quote(container_id)}/exec",
            {
                "AttachStdin": stdin,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": tty,
                "Cmd": list(command),
            },
        )
        exec_id = str(made["Id"])
        conn, status, headers = await self._open(
            "POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": tty}, upgrade=True
        )
        if status not in (101, 200):
            data = b"".join([c async for c in _body(conn.reader, headers)])
            conn.close()
            raise EngineError(f"Docker: cannot start the command: {_message(data) or f'HTTP {status}'}")
        session = ExecSession(self, exec_id, conn, tty)
        if tty and size is not None:
            await session.resize(*size)
        return session


class ExecSession:
    """One running exec: `output()` until it ends, `write`/`close_stdin`, `resize`,
    `exit_code()` after the output ended; `close()` drops the connection."""

    def __init__(self, streams: DockerStreams, exec_id: str, conn: _Conn, tty: bool) -> None:
        self._streams = streams
        self.id = exec_id
        self._conn = conn
        self.tty = tty

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        frames = Frames()
        while True:
            chunk = await self._conn.reader.read(READ)
            if not chunk:
                return
            if self.tty:
                yield "stdout", chunk
            else:
                for stream, payload in frames.feed(chunk):
                    yield stream, payload

    async def write(self, data: bytes) -> None:
        self._conn.writer.write(data)
        await self._conn.writer.drain()

    async def close_stdin(self) -> None:
        if self._conn.writer.can_write_eof():
            with contextlib.suppress(OSError):
                self._conn.writer.write_eof()

    async def resize(self, width: int, height: int) -> None:
        if width > 0 and height > 0:
            with contextlib.suppress(EngineError):  # a session that just ended
                await self._streams._call("POST", f"/exec/{self.id}/resize?h={height}&w={width}")

    async def exit_code(self) -> int:
        """The command's exit code, once the engine has it (within EXIT_WAIT)."""
        retrying = AsyncRetrying(
            stop=stop_after_delay(EXIT_WAIT),
            wait=wait_fixed(0.05),
            retry=retry_if_result(lambda s: bool(s.get("Running"))),
            retry_error_callback=lambda rs: rs.outcome.result() if rs.outcome else {},
        )
        state: dict[str, Any] = await retrying(self._inspect)
        if state.get("Running"):
            raise EngineError(f"the command still runs {EXIT_WAIT:g}s after its output ended")
        code = state.get("ExitCode")
        return int(code) if code is not None else -1

    async def _inspect(self) -> dict[str, Any]:
        _, state = await self._streams._call("GET", f"/exec/{self.id}/json")
        return state if isinstance(state, dict) else {}

    def close(self) -> None:
        self._conn.close()


def _message(data: bytes) -> str:
    try:
        decoded = json.loads(data)
    except ValueError:
        return data.decode(errors="replace").strip()[:300]
    return str(decoded.get("message", "")) if isinstance(decoded, dict) else ""


class _Body:
    """The body of an answer, read a piece at a time: chunked, of a Content-Length, or up
    to the connection's end. `read` may be cancelled while it waits (a timeout): what
    was read is kept by the decoder, nothing is lost."""

    def __init__(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
        self.reader = reader
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.chunks = Chunked() if chunked else None
        self.left = int(headers["content-length"]) if not chunked and "content-length" in headers else None
        self.ended = False

    async def read(self) -> bytes:
        """The next payload bytes; b"" at the end of the body."""
        while not self.ended:
            if (self.chunks is not None and self.chunks.done) or (self.left is not None and self.left <= 0):
                break
            want = READ if self.left is None else min(self.left, READ)
            data = await self.reader.read(want)
            if not data:
                break
            if self.chunks is None:
                if self.left is not None:
                    self.left -= len(data)
                return data
            try:
                payload = self.chunks.feed(data)
            except ValueError as exc:  # FrameError too
                raise EngineError(f"Docker sent a malformed chunked body: {exc}") from None
            if payload:
                return payload
        self.ended = True
        return b""


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The body of an answer, piece by piece (`_Body`)."""
    body = _Body(reader, headers)
    while piece := await body.read():
        yield piece
