"""A byte relay the test controls: in front of a unix socket (dockerd's) or a TCP port
(a registry's), run in a thread of its own so that sync tests can drive it.

Modes: `open` forwards bytes both ways (at most `rate` bytes/s towards the client when
`rate` is set: a slow link); `freeze()` keeps accepting connections but forwards
nothing on any of them (an engine that hangs); `refuse()` closes the listener, so
connecting fails (an engine that is gone); `restore()` closes every connection made
before it (those have lost their place in the byte stream) and forwards again.

    relay = Relay.unix(tmp_path / "docker.sock", "/var/run/docker.sock")
    relay.freeze(); ...; relay.restore()
    relay.close()

Traffic stays on this host: a unix socket, or 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 65536
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Relay:
    def __init__(
        self,
        listen: Callable[[Callable[..., Awaitable[None]]], Awaitable[asyncio.Server]],
        connect: Callable[[], Awaitable[Streams]],
        rate: float | None = None,
    ) -> None:
        self._listen, self._connect = listen, connect
        self.rate = rate  # bytes/s towards the client; None: as fast as it goes
        self.mode = "open"
        self.port = 0  # the TCP port it listens on (`tcp`)
        self.path = ""  # the unix socket it listens on (`unix`)
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-relay", daemon=True)
        self._thread.start()
        self._open = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._do(self._start())

    @classmethod
    def unix(cls, path: Path | str, target: str, rate: float | None = None) -> Relay:
        async def listen(handle: Callable[..., Awaitable[None]]) -> asyncio.Server:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a stale socket file from an earlier listener
            return await asyncio.start_unix_server(handle, str(path))

        relay = cls(listen, lambda: asyncio.open_unix_connection(target), rate)
        relay.path = str(path)
        return relay

    @classmethod
    def tcp(
        cls, port: int, target: tuple[str, int], rate: float | None = None, host: str = "127.0.0.1"
    ) -> Relay:
        async def listen(handle: Callable[..., Awaitable[None]]) -> asyncio.Server:
            return await asyncio.start_server(handle, host, port, reuse_address=True)

        relay = cls(listen, lambda: asyncio.open_connection(*target), rate)
        relay.port = port
        return relay

    # -- control, from the test's thread -------------------------------------------------

    def freeze(self) -> None:
        self._do(self._set("frozen"))

    def refuse(self) -> None:
        self._do(self._set("refused"))

    def restore(self) -> None:
        self._do(self._set("open"))

    def set_rate(self, rate: float | None) -> None:
        self.rate = rate

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._do(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    # -- inside the relay's loop ---------------------------------------------------------

    def _do(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        self._server = await self._listen(self._handle)
        self._open.set()

    async def _shutdown(self) -> None:
        self._drop_all()
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _drop_all(self) -> None:
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _set(self, mode: str) -> None:
        old, self.mode = self.mode, mode
        if mode == "open":
            self._drop_all()  # what was said while frozen is lost: start afresh
            if self._server is None:
                self._server = await self._listen(self._handle)
            self._open.set()
            return
        self._open.clear()
        if mode == "refused":
            self._drop_all()
            if self._server is not None and old != "refused":
                self._server.close()
                self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._open.wait()
            up_reader, up_writer = await self._connect()
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, None),
            self._pump(up_reader, writer, lambda: self.rate),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rate: Callable[[], float | None] | None,
    ) -> None:
        try:
            while True:
                await self._open.wait()
                limit = rate() if rate is not None else None
                size = CHUNK if not limit else max(1, min(CHUNK, int(limit / 20)))
                data = await reader.read(size)
                if not data:
                    break
                await self._open.wait()
                if writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
                if limit:
                    await asyncio.sleep(len(data) / limit)  # a bounded bandwidth, not a wait for a result
        finally:
            with contextlib.suppress(Exception):
                if writer.can_write_eof():
                    writer.write_eof()
