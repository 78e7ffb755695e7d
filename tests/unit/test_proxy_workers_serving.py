"""Proxy workers serve as the in-daemon mesh does (decision 76): counters asked of the
workers when read, the node serving once every worker took the table, a lookup waiting
for the table that holds a new port.

Real worker processes on 127.0.0.1, fed by a `WorkerMesh` over a MemoryStore (the
fixtures of `test_proxy_workers`); no fixed sleeps: every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from typing import Any

import pytest

from node.proxy import workers
from node.proxy.metrics import MeshCollector
from node.proxy.routes import Route
from node.store.mirrors import WatchHub
from tests.helpers import wait_until
from tests.unit.test_proxy_mesh import KEYS, ask, free_port, tcp_service
from tests.unit.test_proxy_workers import WorkerWorld, every_answer, pool, running, stopped

__all__ = ["pool"]  # the fixture, used by name


def samples(mesh: Any) -> dict[str, float]:
    """What `/metrics` shows for the mesh: `name{port}` -> value (one scrape)."""
    out = {}
    for family in MeshCollector(mesh).collect():
        for s in family.samples:
            out[f"{s.name}{{{s.labels.get('port', '')}}}"] = s.value
    return out


async def test_counters_are_asked_of_the_workers_when_read(
    pool: WorkerWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "POLL", 3600.0)  # no poll: only a read can bring them
    port = free_port()
    web = tcp_service("web", port)
    await pool.store.put(KEYS.service("web"), web.to_json())
    await pool.backend(web, 1, "n1")
    task = await running(pool)
    try:
        assert set(await every_answer(port, 5)) == {"web.1@n1"}  # served: bound, no retry needed
        route = Route("web", port, 80, "tcp")
        assert pool.mesh.stats.get(route) is None or pool.mesh.stats[route].requests < 5  # polled: behind
        shown = await asyncio.to_thread(samples, pool.mesh)  # a scrape, from its own thread
        assert shown[f"shoal_proxy_requests_total{{{port}}}"] == 5  # asked at the read: exact
        assert shown[f"shoal_proxy_backends{{{port}}}"] == 1  # from the daemon's table
        assert shown["shoal_proxy_counters_age_seconds{}"] == 0.0

        # a worker that does not answer: the last state, and how old it is
        hung = pool.mesh.workers[0].pid
        os.kill(hung, signal.SIGSTOP)
        try:
            started = time.monotonic()
            age = await asyncio.to_thread(pool.mesh.read_counters, 0.3)
            assert time.monotonic() - started < 2.0
            assert 0.0 < age < math.inf
            assert pool.mesh.stats[route].requests == 5  # still counted, from its last state
        finally:
            os.kill(hung, signal.SIGCONT)
        await wait_until(lambda: not pool.mesh._late, 10.0, message="the late answer taken")
        assert pool.mesh.counters_age() < 5.0
        assert pool.mesh.workers[0].pid == hung  # a slow answer to a read replaces nobody
    finally:
        await stopped(task)


async def test_the_node_serves_once_every_worker_took_the_table(pool: WorkerWorld) -> None:
    port = free_port()
    web = tcp_service("web", port)
    await pool.store.put(KEYS.service("web"), web.to_json())
    await pool.backend(web, 1, "n1")
    assert pool.mesh.not_serving() == "proxy worker(s) 0, 1 have not taken the route table yet"
    told: list[bool] = []
    pool.mesh.on_serving.append(lambda: told.append(pool.mesh.acked()))
    task = asyncio.create_task(pool.mesh.run())
    try:
        await wait_until(lambda: pool.mesh.serving.is_set(), 20.0, message="serving")
        pool.note_pids()
        # at once, no retry: every worker listens on the port
        assert all(w.table == pool.mesh.tables for w in pool.mesh.workers)
        assert set(await every_answer(port, 8)) == {"web.1@n1"}
        assert pool.mesh.not_serving() == "" and told == [True]
    finally:
        await stopped(task)


async def test_a_new_port_is_settled_once_the_workers_serve_it(pool: WorkerWorld) -> None:
    hub = WatchHub(pool.store, KEYS.prefix)  # as in the daemon: every mirror is the hub's
    pool.mesh = pool.new_mesh()
    feeding = asyncio.create_task(hub.run())
    task = await running(pool)
    try:
        port = free_port()
        web = tcp_service("late", port)
        await pool.backend(web, 1, "n1")
        revision = await pool.store.put(KEYS.service("late"), web.to_json())
        assert await pool.mesh.settled(revision, 10.0)
        # settled: every worker serves the new port now, no waiting
        assert all(w.table == pool.mesh.tables for w in pool.mesh.workers)
        assert set(await every_answer(port, 6)) == {"late.1@n1"}
        assert not await pool.mesh.settled(revision + 1000, 0.1)  # not yet seen: bounded, False
        assert await ask(port) == "late.1@n1"
    finally:
        await stopped(task)
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
