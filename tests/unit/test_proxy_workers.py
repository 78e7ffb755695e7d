"""Published ports served by proxy worker processes (node.proxy.workers, issue 17 items 4, 6).

Real worker processes (`python -m node.proxy.worker`) on 127.0.0.1, fed by a
`WorkerMesh` over a MemoryStore; every worker a test starts is killed at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest

from node.model.config import NodeConfig
from node.proxy import worker as proxy_worker
from node.proxy import worker_wire as wire
from node.proxy import workers
from node.proxy.balancer import Backend
from node.proxy.mesh import MeshSettings
from node.proxy.routes import Route
from node.proxy.stats import ProxyStats
from node.proxy.workers import LocalMesh, WorkerMesh, mesh_for, stop_leftovers
from node.store.memory import MemoryStore
from tests.helpers import Knocker, wait_until
from tests.unit.test_proxy_mesh import (
    HOST,
    KEYS,
    FakeGossip,
    RecordedEvents,
    World,
    ask,
    free_port,
    tcp_service,
)

ORPHAN_EXIT = 30.0
"""Seconds a worker started here lives on without its mesh: were the test killed, its
workers would not outlive it by more."""


def test_the_table_and_the_counters_go_through_the_wire() -> None:
    route = Route("web", 8080, 80, "http")
    entry = wire.Entry(route, HOST, (Backend("t1", "10.0.0.1", 31000, "n1"),))
    settings = MeshSettings(connect_timeout=0.25, tunnel_idle=9.0)
    message = wire.decode(wire.encode(wire.table(settings, [entry])))
    assert wire.read_entries(message) == [entry]
    assert wire.read_settings(message, MeshSettings) == settings
    message["settings"]["from_a_later_release"] = 1  # unknown keys are ignored
    assert wire.read_settings(message, MeshSettings) == settings
    one = ProxyStats(requests=3, errors=1)
    one.latency.observe(0.002)
    states = [
        {"stats": {"8080": wire.stats_to_json(one)}},
        {"stats": {"8080": wire.stats_to_json(one), "9": {}}},
    ]
    got = wire.merged(states, {8080: route})[route]
    assert (got.requests, got.errors, got.latency.count) == (6, 2, 2)
    with pytest.raises(ValueError):
        wire.decode(b"[1]")


def test_the_entrance_goes_through_the_wire() -> None:
    from node.proxy.ingress_routes import Table, Target

    table = Table(
        {"a.test": (("/api", Target("api", 8080, sticky=True)), ("/", Target("web", 80, redirect=True)))}
    )
    entry = wire.IngressEntry(
        HOST, 8081, 8443, table,
        {("api", 8080): (Backend("t1:8080", HOST, 31000, "n1"),), ("web", 80): ()},
        {"a.test": b"-----BEGIN CERTIFICATE-----\n\xff"}, b"default",
    )  # fmt: skip
    message = wire.decode(wire.encode(wire.table(MeshSettings(), [], ingress=entry)))
    assert wire.read_ingress(message) == entry
    assert wire.read_ingress(wire.decode(wire.encode(wire.table(MeshSettings(), [])))) is None


def test_the_setting_chooses_the_mesh(tmp_path: Path) -> None:
    args = (MemoryStore(), KEYS, "n1", HOST)
    assert isinstance(mesh_for(NodeConfig(data_dir=tmp_path, proxy_workers=0), *args), LocalMesh)
    mesh = mesh_for(NodeConfig(data_dir=tmp_path, proxy_workers=2, leave_on_stop=True), *args, prestart=False)
    assert isinstance(mesh, WorkerMesh) and len(mesh.workers) == 2 and mesh.stop_workers
    assert mesh.workers[1].path == tmp_path / "proxy" / "worker-1.sock"


class WorkerWorld(World):
    def __init__(self, directory: Path, count: int = 2) -> None:
        super().__init__()
        self.directory, self.count = directory, count
        self.mesh = self.new_mesh()
        self.pids: set[int] = set()

    def new_mesh(self) -> WorkerMesh:
        return WorkerMesh(
            self.store, KEYS, "n1", HOST, RecordedEvents(self.store), FakeGossip(), lambda: 0,
            MeshSettings(connect_timeout=0.5, drain_timeout=1.0, rebind_interval=0.2),
            workers=self.count, directory=self.directory, orphan_exit=ORPHAN_EXIT,
        )  # fmt: skip

    def note_pids(self) -> set[int]:
        self.pids |= {w.pid for w in self.mesh.workers if w.pid}
        return {w.pid for w in self.mesh.workers}


@pytest.fixture
async def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[WorkerWorld]:
    monkeypatch.setattr(workers, "POLL", 0.2)
    w = WorkerWorld(Path(tmp_path) / "proxy")
    try:
        yield w
    finally:
        w.note_pids()
        for pid in w.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for worker in w.mesh.workers:
            if worker.proc is not None:
                worker.proc.kill()
                worker.proc.wait(5)
        await w.close()


async def running(w: WorkerWorld) -> asyncio.Task[None]:
    task = asyncio.create_task(w.mesh.run())
    await wait_until(lambda: w.mesh.ready.is_set(), 20.0, message="workers started, table pushed")
    w.note_pids()
    return task


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def every_answer(port: int, n: int) -> list[str]:
    return sorted(await asyncio.gather(*(ask(port) for _ in range(n))))


async def test_workers_serve_outlive_the_daemon_and_are_adopted(pool: WorkerWorld) -> None:
    port = free_port()
    web = tcp_service("web", port)
    await pool.store.put(KEYS.service("web"), web.to_json())
    await pool.backend(web, 1, "n1")
    task = await running(pool)
    assert (pool.mesh.started, pool.mesh.adopted) == (2, 0)
    first = pool.note_pids()
    assert len(first) == 2 and os.getpid() not in first
    await wait_until(lambda: port in {e.route.published for e in pool.mesh.entries}, 5.0)
    assert set(await wait_until(lambda: every_answer(port, 6), 10.0)) == {"web.1@n1"}

    await wait_until(
        lambda: pool.mesh.stats.get(Route("web", port, 80, "tcp"), ProxyStats()).requests >= 6, 5.0
    )

    # the daemon goes away (no graceful stop of the workers): the port keeps serving
    await stopped(task)
    assert set(await every_answer(port, 6)) == {"web.1@n1"}

    # the next daemon adopts the same workers and moves them to the new replica set
    pool.mesh = pool.new_mesh()
    await pool.backend(web, 2, "n2")
    task = await running(pool)
    assert (pool.mesh.started, pool.mesh.adopted) == (0, 2)
    assert pool.note_pids() == first

    async def both() -> set[str] | None:
        got = set(await every_answer(port, 8))
        return got if len(got) == 2 else None

    got = await wait_until(both, 10.0, message="both replicas answer through the adopted workers")
    assert got == {"web.1@n1", "web.2@n2"}
    await stopped(task)


async def test_a_killed_worker_is_started_again_while_its_sibling_serves(pool: WorkerWorld) -> None:
    port = free_port()
    web = tcp_service("web", port)
    await pool.store.put(KEYS.service("web"), web.to_json())
    await pool.backend(web, 1, "n1")
    task = await running(pool)
    await wait_until(lambda: every_answer(port, 4), 10.0)
    victim = pool.mesh.workers[0]
    old = victim.pid
    os.kill(old, signal.SIGKILL)
    assert victim.proc is not None and await asyncio.to_thread(victim.proc.wait, 10) == -signal.SIGKILL
    # new connections once it is gone (what it had queued is lost): the sibling takes them
    answers = []
    for _ in range(20):
        answers.append(await ask(port))
    assert set(answers) == {"web.1@n1"}
    await wait_until(
        lambda: victim.pid != old and pool.mesh.started == 3, 15.0, message="worker 0 started again"
    )
    pool.note_pids()
    assert "proxy.worker_restarted" in pool.mesh.events.kinds  # type: ignore[union-attr]
    assert set(await every_answer(port, 6)) == {"web.1@n1"}
    await stopped(task)


async def test_a_taken_port_is_a_bind_error_and_is_retried(pool: WorkerWorld) -> None:
    port = free_port()
    squatter = socket.socket()
    squatter.bind((HOST, port))
    squatter.listen()
    web = tcp_service("web", port)
    await pool.store.put(KEYS.service("web"), web.to_json())
    await pool.backend(web, 1, "n1")
    task = await running(pool)
    await wait_until(lambda: port in pool.mesh.bind_errors, 10.0)
    assert "in use" in pool.mesh.bind_errors[port][1]
    assert pool.mesh.describe()[0]["error"]
    squatter.close()
    await wait_until(lambda: port not in pool.mesh.bind_errors, 10.0, message="bound on a retry")
    assert await ask(port) == "web.1@n1"
    await stopped(task)


async def test_leftover_workers_stop_when_the_daemon_serves_itself(pool: WorkerWorld) -> None:
    port = free_port()
    web = tcp_service("web", port)
    await pool.store.put(KEYS.service("web"), web.to_json())
    await pool.backend(web, 1, "n1")
    task = await running(pool)
    await wait_until(lambda: every_answer(port, 2), 10.0)
    await stopped(task)
    procs = [w.proc for w in pool.mesh.workers if w.proc is not None]
    assert await stop_leftovers(pool.directory, keep=1) == 1  # the setting went from 2 to 1
    assert await stop_leftovers(pool.directory) == 1  # ... then to 0
    for proc in procs:
        assert await asyncio.to_thread(proc.wait, 10) == 0
    assert not list(pool.directory.glob("*.sock"))


async def test_a_worker_stopped_while_its_daemon_is_connected_logs_no_error(tmp_path: Path) -> None:
    """SIGTERM with the daemon's control connection open: the handler of that connection
    is cancelled as the worker exits, which 3.11's asyncio logged as an unhandled error.
    (A worker link alone, not a mesh: a mesh polling it would restart it meanwhile.)"""
    w = workers.Worker(0, tmp_path)
    await w.spawn()  # started and dialled: this link is its daemon's connection
    try:
        assert w.proc is not None
        os.kill(w.pid, signal.SIGTERM)
        assert await asyncio.to_thread(w.proc.wait, 10) == 0
    finally:
        w.kill()
    text = w.log_path.read_text(errors="replace")
    assert "control socket" in text, "the log is the worker's"
    assert "Traceback" not in text and " ERROR " not in text, text


async def test_a_worker_exits_when_its_socket_is_gone(pool: WorkerWorld) -> None:
    task = await running(pool)
    await stopped(task)
    for w in pool.mesh.workers:
        w.path.unlink()
    for w in pool.mesh.workers:
        assert w.proc is not None and await asyncio.to_thread(w.proc.wait, 10) == 0


class CountedEvent(asyncio.Event):
    """An Event that counts the waits begun on it: a test knows where its task is parked."""

    waits = 0

    async def wait(self) -> Literal[True]:
        self.waits += 1
        return await super().wait()


@pytest.mark.parametrize("parked", ["watch", "step down"])
async def test_a_cancel_arriving_as_the_worker_is_told_to_stop_cancels_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parked: str
) -> None:
    """Told to stop (SIGTERM, the daemon's `stop`) and cancelled in the same loop iteration,
    in the socket watch's wait or the step down's: `run` ends cancelled. On 3.11
    `asyncio.wait_for` returned the wait's answer there and dropped the cancellation."""
    if parked == "watch":
        monkeypatch.setattr(proxy_worker, "WATCH_EVERY", 3600.0)
    else:  # the socket is another's at the first check: the step down's wait
        monkeypatch.setattr(proxy_worker, "WATCH_EVERY", 0.001)
        monkeypatch.setattr(proxy_worker, "STEP_DOWN", 3600.0)
        monkeypatch.setattr(proxy_worker, "_ours", lambda path, inode: False)
    worker = proxy_worker.Worker(tmp_path / "worker-0.sock")
    worker.stopping = stopping = CountedEvent()
    task = asyncio.create_task(worker.run())
    waits = 1 if parked == "watch" else 2  # parked in that wait once it began
    await wait_until(lambda: stopping.waits == waits, 10, 0.001, f"the {parked} wait")
    stopping.set()
    task.cancel()  # in the same iteration as the wait's answer
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_an_orphan_exits_after_its_bound(tmp_path: Path) -> None:
    """`--orphan-exit`: without a daemon for that long, the worker exits."""
    w = workers.Worker(0, tmp_path, orphan_exit=0.5)
    await w.spawn()
    try:
        w.disconnect()
        assert w.proc is not None and await asyncio.to_thread(w.proc.wait, 10) == 0
    finally:
        w.kill()


async def test_a_hung_worker_that_takes_the_connection_and_says_nothing_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped worker (SIGSTOP, a bug) still holds its SO_REUSEPORT listeners: left, about
    1/(N+1) of every port's new connections would hang behind it for good, and a dial
    only said "no answer" (a successor then took its socket beside it)."""
    from node.proxy import worker_link

    monkeypatch.setattr(worker_link, "CALL_TIMEOUT", 0.5)
    w = workers.Worker(0, tmp_path)
    await w.spawn()
    try:
        w.disconnect()
        assert w.proc is not None
        os.kill(w.proc.pid, signal.SIGSTOP)
        assert not await workers.Worker(0, tmp_path).dial()
        assert await asyncio.to_thread(w.proc.wait, 10) == -signal.SIGKILL
    finally:
        w.kill()


async def test_a_data_dir_too_deep_for_a_socket_path_still_serves(tmp_path: Path) -> None:
    """A unix socket's path must fit 108 bytes; a deep data dir (a CI run's temporary
    directory) made the worker fail to listen and the daemon's mesh die with it."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    w = workers.Worker(0, deep)
    assert len(str(w.path).encode()) > wire.UNIX_PATH_MAX
    await w.spawn()
    try:
        assert w.proc is not None and w.pid == w.proc.pid  # dialled: it answered
        again = workers.Worker(0, deep)
        assert await again.dial() and again.pid == w.pid  # another daemon finds it there too
        again.disconnect()
    finally:
        w.kill()


async def test_prestarted_workers_count_as_started_and_a_live_one_is_left(tmp_path: Path) -> None:
    """`mesh_for` starts the workers at once; the next daemon's finds them answering."""
    config = NodeConfig(data_dir=tmp_path, proxy_workers=1)
    mesh = mesh_for(config, MemoryStore(), KEYS, "n1", HOST)
    assert isinstance(mesh, WorkerMesh)
    first = mesh.workers[0]
    try:
        assert first.proc is not None
        await mesh.start_workers()
        assert (mesh.started, mesh.adopted) == (1, 0)
        again = mesh_for(config, MemoryStore(), KEYS, "n1", HOST)
        assert isinstance(again, WorkerMesh) and again.workers[0].proc is None  # it answered: not started
        await again.start_workers()
        assert (again.started, again.adopted, again.workers[0].pid) == (0, 1, first.pid)
        again.workers[0].disconnect()
    finally:
        first.kill()


async def test_worker_i_starts_its_rotation_at_the_i_th_replica(tmp_path: Path) -> None:
    from node.proxy.worker import Worker as Process

    port = free_port()
    route = Route("web", port, 80, "tcp")
    backends = (Backend("t1", HOST, 1, "n1"), Backend("t2", HOST, 2, "n1"))
    firsts = []
    for i in (0, 1, 2):
        w = Process(tmp_path / f"worker-{i}.sock")
        await w.apply(MeshSettings(), [wire.Entry(route, HOST, backends)])
        assert not w.errors, w.errors
        balancer = w.served[port].balancer
        firsts.append(balancer.pick(0.0).key)  # type: ignore[union-attr]
        await w.apply(MeshSettings(), [wire.Entry(route, HOST, backends)])  # no longer fresh: no skip
        firsts.append(balancer.pick(0.0).key)  # type: ignore[union-attr]
        w.retire(port)
        await asyncio.gather(*w.closing)
    assert firsts == ["t1", "t2", "t2", "t1", "t1", "t2"]


@contextlib.asynccontextmanager
async def one_port_worker(tmp_path: Path) -> AsyncIterator[tuple[Any, int, tuple[Backend, ...]]]:
    """A worker process's object (in this process) serving one tcp port, retired after."""
    from node.proxy.worker import Worker as Process

    port = free_port()
    backends = (Backend("t1", HOST, free_port(), "n1"),)
    w = Process(tmp_path / "worker-0.sock")
    await w.apply(MeshSettings(), [wire.Entry(Route("web", port, 80, "tcp"), HOST, backends)])
    assert not w.errors, w.errors
    try:
        yield w, port, backends
    finally:
        w.retire(port)
        await asyncio.gather(*w.closing)


async def test_a_changed_route_refuses_no_connection(tmp_path: Path) -> None:
    """A route that changes (here its container port, then back) gets a new engine: it
    listens before the old one stops, so a client connecting in a loop meanwhile is
    never refused (before: the old listener closed first, and the port was shut between).
    As the daemon does at start (`Workers.migrate_queues`), `tcp_migrate_req` is set: the
    old listener's queue moves to the new one. Left to the order of the tests (the
    kernel's default 0 on a fresh machine), the connections queued on it were reset."""
    from node.proxy import migrate

    assert migrate.ensure() == "", "the test runs as root on Linux 5.14 or later"
    async with one_port_worker(tmp_path) as (w, port, backends), Knocker(HOST, port, seconds=10) as k:
        await wait_until(lambda: len(k.connected) > 20, timeout=10)
        for i in range(40):
            route = Route("web", port, 81 + i % 2, "tcp")
            await w.apply(MeshSettings(), [wire.Entry(route, HOST, backends)])
            assert not w.errors, w.errors
            assert w.served[port].entry.route == route
            await asyncio.sleep(0)  # let the closed engines finish
    assert k.refused == [], k.summary()
    assert len(k.connected) > 20


async def test_a_changed_route_keeps_the_workers_socket_and_a_new_address_gets_its_own(
    tmp_path: Path,
) -> None:
    """In a worker too, a route change gives the port a new engine on the same kernel
    socket (`node.proxy.ports`); an entry that moves to another address gets a socket
    there, and the old address's closes; a retired port closes."""
    from tests.helpers import listening_inodes

    async with one_port_worker(tmp_path) as (w, port, backends):
        inodes = listening_inodes(port)
        assert len(inodes) == 1
        await w.apply(MeshSettings(), [wire.Entry(Route("web", port, 81, "http"), HOST, backends)])
        assert not w.errors, w.errors
        assert listening_inodes(port) == inodes
        await w.apply(MeshSettings(), [wire.Entry(Route("web", port, 81, "http"), "127.0.0.2", backends)])
        assert not w.errors, w.errors
        moved = listening_inodes(port)
        assert len(moved) == 1 and moved != inodes
        assert list(w.ports._held) == [("127.0.0.2", port)]
    assert listening_inodes(port) == set() and len(w.ports) == 0


async def workers_left_serving(pool: WorkerWorld) -> tuple[int, list[Any]]:
    """A tcp port served by the pool's workers, whose daemon then went away: the port and
    the workers' processes (a next daemon, of another build, finds them serving)."""
    port = free_port()
    web = tcp_service("web", port)
    await pool.store.put(KEYS.service("web"), web.to_json())
    await pool.backend(web, 1, "n1")
    task = await running(pool)
    await wait_until(lambda: every_answer(port, 4), 10.0)
    await stopped(task)
    return port, [w.proc for w in pool.mesh.workers]


async def test_workers_of_another_build_are_replaced_without_a_refused_connection(pool: WorkerWorld) -> None:
    """A daemon of another build starts successors on the same sockets; each old worker
    serves beside its successor (SO_REUSEPORT) for STEP_DOWN seconds, then exits."""
    port, old = await workers_left_serving(pool)
    old_pids = pool.note_pids()

    got: list[str] = []
    done = asyncio.Event()

    async def load() -> None:
        deadline = time.monotonic() + 60  # bounded in count and time, on a loaded machine too
        for _ in range(3000):
            if done.is_set() or time.monotonic() > deadline:
                return
            try:
                got.append(await asyncio.wait_for(ask(port), 5.0))
            except (OSError, TimeoutError) as exc:
                got.append(repr(exc))
            await asyncio.sleep(0.01)

    loader = asyncio.create_task(load())
    try:
        pool.mesh = pool.new_mesh()
        pool.mesh.build = "another build"
        task = await running(pool)
        assert (pool.mesh.started, pool.mesh.adopted) == (2, 0)
        assert not pool.note_pids() & old_pids
        for proc in old:
            assert proc is not None and await asyncio.to_thread(proc.wait, 20) == 0  # stepped down
    finally:
        done.set()
        await loader
    assert len(got) > 50 and set(got) == {"web.1@n1"}, [g for g in got if g != "web.1@n1"][:5]
    await stopped(task)


async def test_an_upgrade_whose_first_sync_is_slow_refuses_no_connection(pool: WorkerWorld) -> None:
    """The successors used to start at once, but bind only when the first table comes; a
    first sync slower than STEP_DOWN (etcd slow to answer the new daemon) let the old
    workers step down first, and the port refused connections until it came. The old
    workers now serve until the new daemon has a table."""
    from node.proxy.worker import STEP_DOWN, WATCH_EVERY

    port, old = await workers_left_serving(pool)

    pool.mesh = pool.new_mesh()
    pool.mesh.build = "another build"
    first_sync = pool.mesh.sync
    held = STEP_DOWN + 2 * WATCH_EVERY + 1  # longer than an old worker's step-down

    async def slow_first_sync() -> None:
        if not pool.mesh.syncs:
            await asyncio.sleep(held)  # etcd slow: the new daemon has no table for a while
        await first_sync()

    pool.mesh.sync = slow_first_sync  # type: ignore[method-assign]
    got: list[str] = []
    started = time.monotonic()
    task = asyncio.create_task(pool.mesh.run())
    for _ in range(2000):  # bounded in count and time
        if pool.mesh.ready.is_set() or time.monotonic() - started > held + 30:
            break
        try:
            got.append(await asyncio.wait_for(ask(port), 5.0))
        except (OSError, TimeoutError) as exc:
            got.append(repr(exc))
        await asyncio.sleep(0.02)
    assert pool.mesh.ready.is_set(), "the first table was pushed"
    assert time.monotonic() - started >= held, "the load spanned the slow first sync"
    assert len(got) > 50 and set(got) == {"web.1@n1"}, [g for g in got if g != "web.1@n1"][:5]
    assert (pool.mesh.started, pool.mesh.adopted) == (2, 0)
    pool.note_pids()
    for proc in old:
        assert proc is not None and await asyncio.to_thread(proc.wait, 20) == 0  # stepped down then
    assert set(await every_answer(port, 4)) == {"web.1@n1"}, "the successors serve"
    await stopped(task)


async def test_a_node_leaving_before_its_first_sync_stops_the_workers_of_another_build(
    pool: WorkerWorld,
) -> None:
    """With leave_on_stop the workers are told to stop; those of another build, not yet
    replaced (no table yet), are dialled again and told too, not left serving for good."""
    _, old = await workers_left_serving(pool)

    pool.mesh = pool.new_mesh()
    pool.mesh.build, pool.mesh.stop_workers = "another build", True
    never = asyncio.Event()

    async def no_table() -> None:
        await never.wait()  # etcd never answers this daemon

    pool.mesh.sync = no_table  # type: ignore[method-assign]
    task = asyncio.create_task(pool.mesh.run())
    await wait_until(lambda: len(pool.mesh.outgoing) == 2, 10.0, message="both workers of another build")
    assert pool.mesh.started == 0, "no successor before a table"
    await stopped(task)
    for proc in old:
        assert proc is not None and await asyncio.to_thread(proc.wait, 20) == 0  # told to stop


def test_the_table_carries_the_services_that_hold_and_a_state_the_held_ones() -> None:
    message = wire.decode(wire.encode(wire.table(MeshSettings(), [], {"idle": 20.0, "bad": -1})))
    assert wire.read_cold(message) == {"idle": 20.0}
    assert wire.read_cold({"op": "table"}) == {}, "an older daemon's table: nothing held"
    assert wire.held({"held": {"idle": 2, "gone": 0}}) == ["idle"]
    assert wire.held({"op": "state"}) == [], "an older worker's state"


async def test_a_worker_holds_a_connection_for_a_service_at_zero_until_a_replica_comes(
    tmp_path: Path,
) -> None:
    """Issue 15 in worker mode (decision 76): with no replica, a service with `autoscale.min:
    0` holds the connection, the worker's state says so (the daemon wakes its load
    reporter), and the next table's replica serves it."""
    from node.proxy.worker import Worker as Process

    port = free_port()
    route = Route("idle", port, 80, "tcp")
    w = Process(tmp_path / "worker-0.sock")
    w.cold.timeouts = {"idle": 20.0}
    await w.apply(MeshSettings(), [wire.Entry(route, HOST, ())])
    assert not w.errors, w.errors
    waiting = asyncio.create_task(ask(port))
    await wait_until(lambda: wire.held(w.state()) == ["idle"], 5.0, message="the connection held")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"idle.1@n1\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        replica = Backend("t1", HOST, server.sockets[0].getsockname()[1], "n1")
        await w.apply(MeshSettings(), [wire.Entry(route, HOST, (replica,))])
        assert await asyncio.wait_for(waiting, 10.0) == "idle.1@n1"
        assert wire.held(w.state()) == []
    finally:
        server.close()
        w.retire(port)
        await asyncio.gather(*w.closing)


async def test_a_held_request_in_a_worker_wakes_the_daemons_load_reporter(tmp_path: Path) -> None:
    world = WorkerWorld(tmp_path / "proxy", count=2)
    told: list[str] = []
    world.mesh.cold.on_hold.append(told.append)
    world.mesh.workers[1].state = {"op": "state", "held": {"idle": 1}}
    world.mesh._take_states()
    world.mesh._take_states()  # still held: told once, when the hold began
    assert told == ["idle"]
    world.mesh.workers[1].state = {"op": "state", "held": {}}
    world.mesh._take_states()
    world.mesh.workers[0].state = {"op": "state", "held": {"idle": 1}}
    world.mesh._take_states()  # a new hold
    assert told == ["idle", "idle"]
    await world.close()
