"""The mesh with its published ports served by worker processes (issue 17, items 4, 6).

With `proxy_workers = N` (N > 0) the daemon binds no published port itself: N worker
processes (`node.proxy.worker`) do, each with SO_REUSEPORT, and `WorkerMesh` (the
`Mesh` less its own listeners) sends them the whole route table, every time the
mirrors or the gossip view change, over a Unix socket each,
`<data_dir>/proxy/worker-<i>.sock` (`node.proxy.worker_wire`).

Lifecycle, and why each step is safe when the daemon dies between two of them:
- start: for each i < N the daemon dials worker i's socket; a worker that answers (left
  by the last daemon: a crash, a kill -9, a restart) is adopted as it is, still
  serving its last table; one that does not is started (`python -m node.proxy.worker`,
  its own session, so a kill of the daemon or of its process group spares it) and
  dialled until it answers. Workers at i >= N (the setting was lowered) are told to
  stop. A daemon that dies mid-start leaves workers the next one adopts, or a socket
  file nothing answers at, which the worker started next removes.
- another build: a worker that answers with another `build` (a digest of the proxy's
  code: shoald was upgraded) keeps serving its last table until the daemon's first sync
  has one; then it gets a successor on its socket, which takes that table; the old one
  notices, serves beside it (SO_REUSEPORT) for `STEP_DOWN` seconds, then stops: an
  upgrade refuses no connection, however slow the first sync, and runs the new engines.
- run: the table is pushed on every sync, and a worker's answer to it is its
  acknowledgement (`acked`: the node is ready, a lookup answers, once every worker has
  taken the table: decision 76); every `POLL` seconds each worker is asked its `state`
  (bind errors, counters: `Mesh.bind_errors`, `Mesh.stats`), and again whenever the
  counters are read (`read_counters`: `/metrics` waits `READ_TIMEOUT` at most for
  them, else serves the last state and its age). A worker
  that does not answer (it died, it hangs for `CALL_TIMEOUT`) is killed if it is
  still there, started afresh and given the table: a kill of a worker loses the
  connections it held; its siblings keep serving all along, and take what the kernel
  had queued on its sockets (`tcp_migrate_req`, set at start: `node.proxy.migrate`).
  One that keeps dying is started again less and less often (`RESTART_BACKOFF`).
- stop: a graceful stop leaves the workers serving (a restart or an upgrade loses no
  new connection; the next daemon adopts them), except with `leave_on_stop` (the node
  leaves for good): they are told to stop and drain.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from pathlib import Path
from typing import Any

from node.model.config import NodeConfig, vip_network
from node.model.domain import EndpointRecord, ServiceRecord, readable_services
from node.proxy import kernel_rules, routes
from node.proxy import worker_wire as wire
from node.proxy.ingress import Ingress, backends_for
from node.proxy.ingress_routes import build
from node.proxy.kernel_path import OFF, KernelPath
from node.proxy.mesh import READ_TIMEOUT, Mesh
from node.proxy.routes import Route
from node.proxy.stats import ProxyStats
from node.proxy.worker_link import Worker, WorkerError, stop_all, stop_leftovers, stop_worker
from node.store import StoreError
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)

POLL = 2.0
"""Seconds between `state` calls to each worker (liveness, bind errors, counters)."""
COLD_POLL = 0.25
"""The same while some service is scaled to zero with its requests held (`autoscale.min:
0`): a worker's answer says it holds one, and the load reporter is woken (issue 15)."""

RESTART_BACKOFF = 1.0
"""Seconds before a worker started again is started once more (doubled at each start,
up to `RESTART_BACKOFF_MAX`, while it answers no poll in between)."""
RESTART_BACKOFF_MAX = 60.0

__all__ = [
    "POLL",
    "LocalMesh",
    "Worker",
    "WorkerError",
    "WorkerMesh",
    "mesh_for",
    "stop_all",
    "stop_leftovers",
]


class WorkerMesh(Mesh):
    """`Mesh` whose published ports are served by `workers` processes (module doc)."""

    def __init__(
        self,
        *args: Any,
        workers: int,
        directory: Path,
        stop_workers: bool = False,
        orphan_exit: float = 0.0,  # s a worker started here waits without a daemon; 0: forever
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.directory = directory
        self.workers = [Worker(i, directory, orphan_exit) for i in range(workers)]
        self.stop_workers = stop_workers  # on a graceful stop (leave_on_stop)
        self.wanted: dict[int, routes.Route] = {}
        self.entries: list[wire.Entry] = []
        self.adopted = 0  # workers found serving at start (left by the last daemon)
        self.outgoing: list[Worker] = []  # of another build: replaced once the first table is ready
        self.build = wire.BUILD  # workers of another build are replaced at start
        self.started = 0  # workers started by this daemon (at start or to replace one)
        self.tables = 0  # tables pushed: each worker's `table` says which it answered last
        self._late: set[asyncio.Future[dict[str, Any]]] = set()  # state calls a reader gave up on
        self.held: set[str] = set()  # services some worker held a request for at the last state
        self.ingress_entry: wire.IngressEntry | None = None  # the entrance the workers serve
        self._certs_read = False  # the entrance's certificates were read once (then beside the syncs)
        self._certs_task: asyncio.Task[None] | None = None
        self.ingress_stats: dict[Route, ProxyStats] = {}  # its counters, all workers' added up

    async def run(self) -> None:
        try:
            await self.start_workers()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(super().run(), name="mesh")
                tg.create_task(self._poll(), name="mesh-workers")
        finally:
            await self._close_workers()  # also when stopped while starting them (twice is harmless)

    async def start_workers(self) -> None:
        """Adopt the workers that answer, start the others (all at once: a start takes a
        second or more of imports)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.migrate_queues()  # a worker that stops hands its queue to the others
        found = await asyncio.gather(*(w.dial() for w in self.workers))
        for i, w in enumerate(self.workers):
            if found[i] and w.state.get("build") != self.build:
                log.info("proxy worker %d (pid %d) runs build %s, not %s: it serves its last table "
                         "until this daemon has one, then its successor starts",
                         w.index, w.pid, w.state.get("build"), self.build)  # fmt: skip
                w.disconnect()
                self.outgoing.append(w)
                w.proc, w.pid, found[i] = None, 0, False
        for w, adopted in zip(self.workers, found, strict=True):
            if adopted and w.proc is None:  # not one `prestart` started
                self.adopted += 1
                log.info(
                    "proxy worker %d (pid %d) adopted, serving %s port(s)",
                    w.index,
                    w.pid,
                    w.state.get("routes"),
                )
        await asyncio.gather(
            *(
                w.spawn()
                for w, adopted in zip(self.workers, found, strict=True)
                if not adopted and w not in self.outgoing
            )
        )
        for w in self.workers:
            if w.proc is not None:
                self.started += 1
                log.info("proxy worker %d started (pid %d)", w.index, w.pid)
        await stop_leftovers(self.directory, keep=len(self.workers))

    async def sync(self) -> None:
        self.syncs += 1
        records = readable_services(kv.value for kv in self.services.values())
        self.wanted = routes.listeners(records)
        self.cold.update(records)
        endpoints = self.routable()
        self.entries = [
            wire.Entry(r, self.address, tuple(routes.backends(r, endpoints))) for r in self.wanted.values()
        ]
        ingress = self.ingress
        if ingress is not None:  # the shared entrance runs in the workers too (decision 80)
            if not self._certs_read:  # the first table carries them: workers may hold some already
                await ingress.refresh_certs(build(records))
                self._certs_read = True
            self.ingress_entry = self._ingress_entry(ingress, records, endpoints)
        await self._push_all()
        await self.sync_kernel(records, self.wanted, endpoints)  # the table is the daemon's, not a worker's
        if ingress is not None:
            self._read_certs_soon(ingress, records)
        await self._report_binds()

    def _read_certs_soon(self, ingress: Ingress, records: list[ServiceRecord]) -> None:
        """Read the entrance's certificates again (secrets in etcd, the cluster CA's) beside
        the syncs, one read at a time: an etcd that does not answer (5 s per secret) delays
        a certificate, never the routes and endpoints every port serves. Changed, they go
        out with the next sync, which this one wakes."""
        if self._certs_task is not None and not self._certs_task.done():
            return  # the next sync asks again (every rebind_interval with an entrance)
        self._certs_task = asyncio.get_running_loop().create_task(
            self._read_certs(ingress, records), name="ingress-certs"
        )

    async def _read_certs(self, ingress: Ingress, records: list[ServiceRecord]) -> None:
        def held() -> tuple[dict[str, bytes], bytes]:
            certs = ingress.certs
            return (dict(certs.pems), certs.default_pem) if certs is not None else ({}, b"")

        before = held()
        try:
            await ingress.refresh_certs(build(records))
        except StoreError as exc:
            log.info("ingress: certificates not read now: %s", exc)
            return
        if held() != before and self._wakes:
            self._wakes[0].set()

    def _ingress_entry(
        self, ingress: Ingress, records: list[ServiceRecord], endpoints: list[EndpointRecord]
    ) -> wire.IngressEntry:
        """What the workers' entrance serves: the table, its replicas, and the certificates
        this daemon read from secrets or issued (`IngressCerts`); kept in `ingress` too,
        which binds nothing here (its `describe` shows the table)."""
        table = build(records)
        backends = backends_for(table, endpoints)
        ingress.routes.update(table, backends)
        certs = ingress.certs
        return wire.IngressEntry(
            ingress.address,
            ingress.http_port,
            ingress.https_port,
            table,
            {key: tuple(found) for key, found in backends.items()},
            dict(certs.pems) if certs is not None else {},
            certs.default_pem if certs is not None else b"",
        )

    def _table(self) -> dict[str, Any]:
        return wire.table(self.settings, self.entries, self.cold.timeouts, self.ingress_entry)

    async def _push_all(self) -> None:
        if self.outgoing:
            await self._start_successors()
        self.tables += 1
        message = self._table()
        await asyncio.gather(*(self._push(w, message) for w in self.workers))
        self._take_states()

    async def _start_successors(self) -> None:
        """Start the successors of the workers of another build, now that a table is ready
        for them. A successor takes its predecessor's socket, which then serves beside it
        for its STEP_DOWN seconds only: started at once, a first sync slower than that (etcd
        slow to answer the new daemon) left the ports refusing connections until it came.
        One that fails to start is started again by the push that finds it unconnected."""
        due, self.outgoing = self.outgoing, []
        results = await asyncio.gather(*(w.spawn() for w in due), return_exceptions=True)
        for w, result in zip(due, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                log.warning("proxy worker %d: its successor did not start: %s", w.index, result)
                continue
            self.started += 1
            log.info("proxy worker %d started (pid %d), successor of another build's", w.index, w.pid)

    async def _push(self, w: Worker, message: dict[str, Any]) -> None:
        number = self.tables
        try:
            await w.call(message)
            w.table = number
        except WorkerError as exc:
            await self._replace(w, str(exc))

    async def _replace(self, w: Worker, why: str) -> None:
        """Start `w` again and give it the table: one start at a time (the poll and a sync
        both find it gone: the second one killed the worker the first was starting), and
        not again before `w.retry_at` (a worker that dies at start or on the table is
        started every RESTART_BACKOFF s, doubled at each start up to RESTART_BACKOFF_MAX,
        not at every poll and sync; a poll it answers ends that)."""
        async with w.restarting:
            if w.connected:  # started again meanwhile, by the call that found it gone first
                if w.table != self.tables:
                    await self._give_table(w)
                return
            now = time.monotonic()
            if now < w.retry_at:
                log.debug("proxy worker %d: %s; started again in %.1fs", w.index, why, w.retry_at - now)
                return
            w.retry_at = now + min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2**w.restarts)
            w.restarts += 1
            log.warning("%s: starting it again", why)
            if self.events is not None:
                self.events.emit("proxy.worker_restarted", f"proxy worker {w.index}: {why}")
            w.kill()
            try:
                await w.spawn()
                self.started += 1
            except WorkerError as exc:
                log.error("proxy worker %d could not be started again: %s", w.index, exc)
            else:
                await self._give_table(w)
        self.check_serving()

    async def _give_table(self, w: Worker) -> None:
        number = self.tables  # the table now, not the one of the call that failed
        try:
            await w.call(self._table())
            w.table = number
        except WorkerError as exc:
            log.error("proxy worker %d did not take the table: %s", w.index, exc)

    def acked(self) -> bool:
        """Every worker has answered the last table pushed (bound its ports or said why not)."""
        return all(w.table == self.tables for w in self.workers)

    def not_serving(self) -> str:
        if self.serving.is_set():
            return ""
        waiting = [str(w.index) for w in self.workers if w.table != self.tables or not self.tables]
        return f"proxy worker(s) {', '.join(waiting) or '?'} have not taken the route table yet"

    async def _poll(self) -> None:
        await self.ready.wait()
        while True:
            await asyncio.sleep(COLD_POLL if self.cold.timeouts else POLL)
            for w in self.workers:
                try:
                    await w.call({"op": "state"})
                    w.restarts = 0  # it lives: a next death is started again at once
                except WorkerError as exc:
                    await self._replace(w, str(exc))
            self._take_states()
            await self._report_binds()

    async def refresh(self, timeout: float) -> bool:
        """Ask every worker for its state now (its counters); whether all answered within
        `timeout`. A call not answered by then goes on (its answer is a fresh state all
        the same): its state is taken when it comes; a worker that fails it
        is replaced by the next poll."""
        calls = [asyncio.ensure_future(w.call({"op": "state"})) for w in self.workers]
        done, late = await asyncio.wait(calls, timeout=timeout)
        for call in late:
            self._late.add(call)
            call.add_done_callback(self._answered_late)
        self._take_states()
        return not late and all(c.exception() is None for c in done)

    def _answered_late(self, call: asyncio.Future[dict[str, Any]]) -> None:
        self._late.discard(call)
        if not call.cancelled() and call.exception() is None:
            self._take_states()

    def read_counters(self, timeout: float = READ_TIMEOUT) -> float:
        """From another thread (`/metrics`): `refresh` on the mesh's loop, waiting about
        `timeout` s at most; the age of the oldest worker state then (0.0: all answered)."""
        loop = self.loop
        fresh = False
        if loop is not None and not loop.is_closed():
            try:
                fresh = asyncio.run_coroutine_threadsafe(self.refresh(timeout), loop).result(timeout + 1.0)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
                fresh = False
        if fresh:
            return 0.0
        age = self.counters_age()
        log.warning("proxy counters read from the last polled worker state, %.1fs old: a worker did not "
                    "answer within %gs", age, timeout)  # fmt: skip
        return age

    def counters_age(self) -> float:
        """Seconds since the oldest of the workers' states was taken (inf: one never was)."""
        oldest = min((w.state_at for w in self.workers), default=0.0)
        return time.monotonic() - oldest if oldest else math.inf

    def _take_states(self) -> None:
        """Bind errors (any worker's) and the counters of all workers added up."""
        errors: dict[int, tuple[routes.Route, str]] = {}
        for w in self.workers:
            for port, text in (w.state.get("errors") or {}).items():
                route = self.wanted.get(int(port))
                if route is not None:
                    errors.setdefault(int(port), (route, str(text)))
        for port, (route, text) in errors.items():
            if self.bind_errors.get(port) != (route, text) and self.events is not None:
                self.events.emit("proxy.bind_failed", f"{route.service}: {text}", route.service)
        self.bind_errors = errors
        self._take_ingress_states()
        # in place: the dashboard's and the load reporter's view is this very dict
        counted = wire.merged([w.state for w in self.workers], self.wanted)
        for route in [r for r in self.stats if r not in counted]:
            del self.stats[route]
        self.stats.update(counted)
        held = {s for w in self.workers for s in wire.held(w.state)}
        for service in sorted(held - self.held):  # a worker began to hold: as a hold in the daemon
            for tell in self.cold.on_hold:
                tell(service)
        self.held = held

    def _take_ingress_states(self) -> None:
        """The entrance's bind errors (any worker's) and counters (all added up)."""
        ingress = self.ingress
        if ingress is None:
            return
        ports = {ingress.http_port: "http", ingress.https_port: "https"}
        ports.pop(0, None)
        errors: dict[int, str] = {}
        for w in self.workers:
            for port, text in (w.state.get("errors") or {}).items():
                if int(port) in ports:
                    errors.setdefault(int(port), str(text))
        ingress.report_binds(errors)
        # a worker answers a table once it applied it, its entrance included
        taken = self.tables > 0 and self.acked()
        ingress.elsewhere = {p for p in ports if p not in errors} if taken else set()
        by_port = {port: Route("ingress", port, 0, kind) for port, kind in ports.items()}
        self.ingress_stats = wire.merged([w.state for w in self.workers], by_port)

    def ingress_counters(self) -> list[tuple[Route, ProxyStats]]:
        return list(self.ingress_stats.items())

    async def close(self, grace: float = 2.0) -> None:
        await self._close_workers()
        await super().close(grace)  # no listener of its own: the entrance's, if any

    async def _close_workers(self) -> None:
        """Stop the workers with `stop_workers` (leave_on_stop), else just let go of them."""
        if self._certs_task is not None:
            self._certs_task.cancel()
        if self.stop_workers:
            for w in self.outgoing:  # another build's, not replaced yet: told to stop too
                await w.dial()
            await asyncio.gather(*(stop_worker(w) for w in self.workers))
        for w in self.workers:
            w.disconnect()

    def backend_counts(self) -> dict[Route, int]:
        """The replicas this daemon sent each port's workers (ejections are the workers')."""
        return {e.route: len(e.backends) for e in list(self.entries)}

    def describe(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for e in self.entries:
            port = e.route.published
            row: dict[str, object] = {"port": port, "service": e.route.service, "protocol": e.route.protocol}
            row["backends"] = [{"task": b.key, "node": b.node} for b in e.backends]
            if port in self.bind_errors:
                row["error"] = self.bind_errors[port][1]
            out.append(row)
        return out


class LocalMesh(Mesh):
    """`Mesh` in the daemon's loop (`proxy_workers = 0`): workers a former setting left
    serving are told to stop first, so the daemon can bind their ports."""

    def __init__(self, *args: Any, directory: Path, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.directory = directory

    async def run(self) -> None:
        await stop_leftovers(self.directory)
        self.migrate_queues()  # a changed route's old listener hands its queue to the new one
        await super().run()


def mesh_for(config: NodeConfig, *args: Any, prestart: bool = True, **kw: Any) -> Mesh:
    """The mesh the setting `proxy_workers` asks for; `args`, `kw` as `Mesh` takes them.
    With workers, those that do not answer are started at once (`prestart`): they boot
    while the daemon does, and serve about when it is ready. Either way with the kernel
    fast path of `proxy_nft` (decision 75)."""
    directory = config.data_dir / "proxy"
    mesh: Mesh
    if config.proxy_workers > 0:
        mesh = WorkerMesh(
            *args, workers=config.proxy_workers, directory=directory, stop_workers=config.leave_on_stop, **kw
        )
        if prestart:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for w in mesh.workers:
                w.prestart()
    else:
        mesh = LocalMesh(*args, directory=directory, **kw)
    mesh.kernel = kernel_path_for(config, mesh.events)
    return mesh


def kernel_path_for(config: NodeConfig, events: EventLog | None) -> KernelPath:
    """This node's kernel path: its own table, `proxy_nft`'s program ("off": none)."""
    program = "" if config.proxy_nft.strip().lower() in OFF else config.proxy_nft.strip()
    table = kernel_rules.table_name(config.cluster, config.node_id)
    vips = (vip_network(config.vip_range),)  # routed local: never a 0.0.0.0 node's fast path
    return KernelPath(program, table, events, remove_on_stop=config.leave_on_stop, vips=vips)
