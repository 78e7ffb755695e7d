"""A TCP relay on 127.0.0.1 that a test can cut: every open connection reset at once.

`FaultProxy(upstream)` listens on a port drawn below the kernel's ephemeral range (so
no outgoing connection can hold it), relays bytes both ways, and `cut()` aborts every
relayed connection (a TCP reset on both sides), as a dropped network path would.
New connections are accepted again right away; `accepted` counts them, so a test can
wait for a client's reconnect before it cuts again. `block()` cuts and refuses new
connections until `unblock()` (a longer partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from pathlib import Path

RELAY_CHUNK = 65536


def port_below_ephemeral(host: str = "127.0.0.1", attempts: int = 200, count: int = 1) -> int:
    """A free TCP port under `ip_local_port_range`'s low end (never taken by an outgoing
    socket); with `count`, the first of that many free consecutive ports (etcd's pair)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(attempts):
        port = random.randrange(max(1024, low - 12000), low - count)
        if all(_free(host, p) for p in range(port, port + count)):
            return port
    raise OSError(f"no free port below {low} on {host}")


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.host = host
        self.port = 0
        self.accepted = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self.blocked = False

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        for _ in range(20):
            self.port = port_below_ephemeral(self.host)
            try:
                self._server = await asyncio.start_server(self._relay, self.host, self.port)
                return
            except OSError:  # taken between the check and the bind
                continue
        raise OSError("the fault proxy found no port to listen on")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._relays):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    def block(self) -> None:
        """Cut every connection and refuse new ones until `unblock`."""
        self.blocked = True
        self.cut()

    def unblock(self) -> None:
        self.blocked = False

    def cut(self) -> None:
        """Reset every relayed connection now."""
        self.cuts += 1
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            await self._pipe(reader, writer)
        except asyncio.CancelledError:
            pass  # stopped
        finally:
            self._relays.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._open |= {writer, up_writer}
        pumps = [asyncio.create_task(_pump(reader, up_writer)), asyncio.create_task(_pump(up_reader, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for w in (writer, up_writer):
                self._open.discard(w)
                w.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
