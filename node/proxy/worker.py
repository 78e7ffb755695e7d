"""A proxy worker process: the mesh's published ports, served outside the daemon
(issue 17, items 4 and 6).

    python -m node.proxy.worker --socket <data_dir>/proxy/worker-<i>.sock

Started by the daemon (`node.proxy.workers`), in its own session, so it outlives the
daemon: a kill -9, a crash or a restart of shoald leaves it serving with the last route
table it was given, and the next daemon dials the same socket and adopts it. It
listens on every published port with SO_REUSEPORT, so several workers (one per core)
share each port and the kernel spreads the connections over them; the engines are the
mesh's own (`Mesh._engine`: TcpProxy, HttpProxy), fed through `node.proxy.worker_wire`.

What it does alone, while no daemon talks to it: keeps every listener and balancer as
last told (outlier ejection still takes failing replicas out of the rotation), retries
a port it could not bind every `rebind_interval`. It exits when told `stop`, on SIGTERM
(draining like the mesh: `drain_timeout`), when its socket file is removed or taken
by another (its data directory is gone: nothing will adopt it; or a successor took its
place: it serves beside it for `STEP_DOWN` seconds first), or, with
`--orphan-exit S` (tests), after S seconds without a daemon.

Its control socket is 0600 from the moment it is bound, and only a connection of its
own user (or root) is heard: the daemon's, which starts it as itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from node.proxy import worker_wire as wire
from node.proxy.balancer import Balancer, RetryPolicy
from node.proxy.coldstart import ColdStart
from node.proxy.ingress import Ingress
from node.proxy.ingress_tls import SniContexts
from node.proxy.limits import ConnectionCap
from node.proxy.mesh import Engine, Mesh, MeshSettings
from node.proxy.ports import PortSockets
from node.proxy.stats import ProxyStats

log = logging.getLogger("shoal.proxy.worker")

WATCH_EVERY = 1.0
"""Seconds between checks that the socket file is still this worker's."""
STEP_DOWN = 5.0
"""Seconds a worker whose socket was taken by a successor (a daemon of another build
replaces it) keeps serving beside it (SO_REUSEPORT) before it stops listening."""


@dataclass
class Served:
    entry: wire.Entry
    balancer: Balancer
    engine: Engine


class Worker:
    def __init__(self, path: Path, orphan_exit: float = 0.0) -> None:
        self.path = path
        found = re.fullmatch(r"worker-(\d+)\.sock", path.name)
        self.index = int(found[1]) if found else 0  # where its rotations start (below)
        self.orphan_exit = orphan_exit  # s without a daemon after which to exit; 0: never
        self.settings = MeshSettings()
        self.cap = ConnectionCap(self.settings.max_connections)
        self.entries: dict[int, wire.Entry] = {}  # the last table, by published port
        self.served: dict[int, Served] = {}
        self.ports = PortSockets()  # SO_REUSEPORT beside the siblings; kept across route changes
        self.errors: dict[int, str] = {}
        self.stats: dict[int, ProxyStats] = {}
        self.closing: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.controller: asyncio.StreamWriter | None = None
        self.cold = ColdStart()  # requests held for services scaled to zero (issue 15)
        self.ingress: Ingress | None = None  # the node's shared entrance (decision 80)
        self.ingress_entry: wire.IngressEntry | None = None  # as last told
        self._ingress_listening: tuple[str, int, int] = ("", 0, 0)  # of `ingress`
        # one table applied at a time: the daemon's, a rebind's retry, a next daemon's while
        # the last one's is still binding. Two at once both opened a port neither had yet
        # (SO_REUSEPORT: both binds succeed); the first listener was then lost from `served`,
        # kept serving with a balancer never told of a replica again, and was never closed
        self._applying = asyncio.Lock()

    # -- the table --------------------------------------------------------------------

    async def apply(self, settings: MeshSettings, entries: list[wire.Entry]) -> None:
        async with self._applying:
            await self._apply(settings, entries)

    async def apply_ingress(self, entry: wire.IngressEntry | None) -> None:
        """Serve the entrance as `entry` says (None: none): its listeners beside the other
        workers' (SO_REUSEPORT), its certificates, its routes; bind errors and counters
        by port, as the other listeners'."""
        async with self._applying:
            await self._apply_ingress(entry)

    async def rebind(self) -> None:
        """Try again the ports that could not be bound, with the table as it is then."""
        async with self._applying:
            await self._apply(self.settings, list(self.entries.values()))
            await self._apply_ingress(self.ingress_entry)

    async def _apply(self, settings: MeshSettings, entries: list[wire.Entry]) -> None:
        if settings != self.settings:
            self.settings = settings
            self.cap.limit = settings.max_connections  # shared by every listener: at once
            #   (the other settings apply to listeners opened from now on)
        self.entries = {e.route.published: e for e in entries}
        replaced: dict[int, Served] = {}  # a route changed: closed once its successor listens
        for port, served in list(self.served.items()):
            entry = self.entries.get(port)
            if entry is None:
                self.retire(port)
            elif (entry.route, entry.address) != (served.entry.route, served.entry.address):
                replaced[port] = self.served.pop(port)
        self.errors = {p: e for p, e in self.errors.items() if p in self.entries}
        for port, entry in self.entries.items():
            if port not in self.served:
                # make before break: the new engine accepts from the port's socket before
                # the old one stops, and the socket stays (node.proxy.ports): a changed
                # route refuses no connection
                await self.open(entry)
                if (old := replaced.pop(port, None)) is not None:
                    self._close(old)
                    if old.entry.address != entry.address:
                        self.ports.release(old.entry.address, port)
                if port not in self.served:
                    self.ports.release(entry.address, port)  # not served: nothing may queue
            now = self.served.get(port)
            if now is not None:
                fresh = not now.balancer.backends
                now.entry = entry
                removed = now.balancer.set_endpoints(entry.backends)
                if removed:
                    now.engine.drain(removed)
                # worker i starts its rotation at the i-th replica: the first picks of
                # the workers differ (each keeps its own rotation)
                if fresh:
                    for _ in range(self.index % max(1, len(entry.backends))):
                        now.balancer.pick(time.monotonic())
        self.stats = {p: s for p, s in self.stats.items() if p in self.entries}
        self.cold.changed()  # held requests look at their balancers again

    async def open(self, entry: wire.Entry) -> None:
        balancer = Balancer()
        holder = SimpleNamespace(settings=self.settings, cap=self.cap)
        try:
            engine: Engine = Mesh._engine(holder, entry.route, balancer, entry.address)  # type: ignore[arg-type]
            engine.stats = self.stats.setdefault(entry.route.published, ProxyStats())
            engine.cold = self.cold.hold(entry.route.service, balancer)
            await self.ports.start(engine, entry.address, entry.route.published)
        except (OSError, AttributeError, ValueError) as exc:
            text = getattr(exc, "strerror", None) or str(exc)
            self.errors[entry.route.published] = (
                f"cannot listen on {entry.address}:{entry.route.published}: {text}"
            )
            return
        self.errors.pop(entry.route.published, None)
        self.served[entry.route.published] = Served(entry, balancer, engine)
        log.info("worker %d: %s %s:%d -> %s", os.getpid(), entry.route.protocol, entry.address,
                 entry.route.published, entry.route.service)  # fmt: skip

    async def _apply_ingress(self, entry: wire.IngressEntry | None) -> None:
        self.ingress_entry = entry
        old = self.ingress
        if old is not None and (entry is None or entry.listening != self._ingress_listening):
            self.ingress = None
            for proxy in old.proxies:
                proxy.stop_accepting()
                self.stats.pop(proxy.listen_port, None)
                self.errors.pop(proxy.listen_port, None)
            self._closing(old.close())
        if entry is None:
            return
        if self.ingress is None:
            s = self.settings
            certs = SniContexts(self.path.parent / f"tls-{self.index}") if entry.https_port else None
            self.ingress = Ingress(
                entry.address, entry.http_port, entry.https_port, certs, reuse_port=True,
                connect_timeout=s.connect_timeout, drain_timeout=s.drain_timeout,
                retry=RetryPolicy(max_attempts=s.max_attempts), limits=s.limits, cap=self.cap,
                tunnel_idle=s.tunnel_idle,
            )  # fmt: skip
            self._ingress_listening = entry.listening
        ingress = self.ingress
        if isinstance(ingress.certs, SniContexts):
            for problem in ingress.certs.use(entry.pems, entry.default_pem).values():
                log.warning("worker %d: ingress certificate: %s", os.getpid(), problem)
        await ingress.apply(entry.table, entry.backends)
        for proxy in ingress.proxies:
            port = proxy.listen_port
            self.stats[port] = proxy.stats
            if port in ingress.bind_errors:
                self.errors[port] = ingress.bind_errors[port]
            else:
                self.errors.pop(port, None)

    def _closing(self, close: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(close)
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def retire(self, port: int) -> None:
        served = self.served.pop(port)
        self._close(served)
        self.ports.release(served.entry.address, port)

    def _close(self, served: Served) -> None:
        served.engine.stop_accepting()
        self._closing(served.engine.close())

    def state(self) -> dict[str, Any]:
        return {
            "op": "state",
            "pid": os.getpid(),
            "version": wire.VERSION,
            "build": wire.BUILD,
            "routes": len(self.served),
            "errors": {str(p): e for p, e in self.errors.items()},
            "stats": {str(p): wire.stats_to_json(s) for p, s in self.stats.items()},
            "held": dict(self.cold.held),
        }

    # -- the daemon's connection -----------------------------------------------------------

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One daemon at a time: a new connection replaces the last (that daemon is gone).
        Only a process of this worker's user (or root) is heard: another local user whose
        connection got in (a socket file made wider, a directory not 0700) would feed it
        routes and read its state; it is closed before the daemon's connection is touched."""
        uid = _peer_uid(writer)
        if uid not in (0, os.getuid()):
            log.warning("worker %d: control connection of uid %s refused", os.getpid(), uid)
            writer.close()
            return
        if self.controller is not None:
            self.controller.close()
        self.controller = writer
        try:
            writer.write(wire.encode(self.state()))
            while line := await reader.readline():
                message = wire.decode(line)
                if message["op"] == "table":
                    self.cold.timeouts = wire.read_cold(message)
                    await self.apply(wire.read_settings(message, MeshSettings), wire.read_entries(message))
                    await self.apply_ingress(wire.read_ingress(message))
                elif message["op"] == "stop":
                    self.stopping.set()
                writer.write(wire.encode(self.state()))
                await writer.drain()
        except (ConnectionError, ValueError, KeyError, TypeError) as exc:
            log.warning("worker %d: control connection ended: %s", os.getpid(), exc)
        except asyncio.CancelledError:
            # the worker is exiting with a daemon connected. Not raised on: 3.11's
            # start_unix_server calls `exception()` on the handler's task, which raises
            # for a cancelled one, and logs a traceback as an error at every stop
            pass
        finally:
            writer.close()
            if self.controller is writer:
                self.controller = None

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a dead worker's: nothing answers there (the daemon checked)
        server = await asyncio.start_unix_server(
            self.control, sock=_listening(self.path), limit=wire.MAX_LINE
        )
        inode = self.path.stat().st_ino
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        log.info("worker %d: control socket %s", os.getpid(), self.path)
        rebind_at = alone_since = loop.time()
        try:
            while not self.stopping.is_set():
                # asyncio.timeout, not wait_for: 3.11's wait_for returns the wait's answer and
                # drops a cancellation that comes in the same loop iteration (run() then ends
                # as if not cancelled)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WATCH_EVERY):
                        await self.stopping.wait()
                if not _ours(self.path, inode):
                    log.warning("worker %d: %s is gone or another's: exiting in %gs", os.getpid(), self.path,
                                STEP_DOWN)  # fmt: skip
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(STEP_DOWN):  # the successor binds; not wait_for: above
                            await self.stopping.wait()
                    break
                if self.controller is not None:
                    alone_since = loop.time()
                elif self.orphan_exit and loop.time() - alone_since > self.orphan_exit:
                    log.warning("worker %d: no daemon for %gs: exiting", os.getpid(), self.orphan_exit)
                    break
                if self.errors and loop.time() >= rebind_at:
                    rebind_at = loop.time() + self.settings.rebind_interval
                    await self.rebind()
        finally:
            server.close()
            if _ours(self.path, inode):
                self.path.unlink()
            for port in list(self.served):
                self.retire(port)
            self.ports.close()
            await self.apply_ingress(None)
            if self.closing:
                await asyncio.wait(self.closing, timeout=self.settings.drain_timeout + 2)


def _listening(path: Path) -> socket.socket:
    """A unix socket bound at `path`, mode 0600 from its creation: bound under umask 0177,
    with nothing run between (before, it was bound with the daemon's umask and served a
    loop iteration before its chmod: a connection of another user made then stayed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with wire.reachable(path) as name:
            umask = os.umask(0o177)
            try:
                sock.bind(name)
            finally:
                os.umask(umask)
        path.chmod(0o600)
    except OSError:
        sock.close()
        raise
    return sock


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The user id of the process at the other end of a unix connection (None: unknown)."""
    sock = writer.get_extra_info("socket")
    try:
        return int(struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1])
    except (AttributeError, OSError, struct.error):
        return None


def _ours(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="a shoal proxy worker (started by shoald)")
    ap.add_argument("--socket", required=True, type=Path, help="the control socket to listen on")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--orphan-exit", type=float, default=0.0, help="exit after this many seconds "
                    "without a daemon (0: never; tests: a killed test leaves nothing)")  # fmt: skip
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(a.socket, a.orphan_exit)
    try:
        import uvloop

        uvloop.run(worker.run())
    except ImportError:
        asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
