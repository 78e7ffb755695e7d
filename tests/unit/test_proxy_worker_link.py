"""The daemon's link to its proxy workers when things go wrong (node.proxy.worker,
node.proxy.worker_link, node.proxy.workers): tables applied at once, a worker's pid
reused by another process, a worker that keeps failing to start."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from node.proxy import worker_wire as wire
from node.proxy.balancer import Backend
from node.proxy.mesh import MeshSettings
from node.proxy.routes import Route
from node.proxy.worker import Worker as Process
from tests.unit.test_proxy_mesh import HOST, free_port


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
