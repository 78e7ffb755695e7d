"""The daemon's lifecycle: start in order, run named tasks, stop cleanly.

Start: the gRPC port free -> etcd reachable (or one clear line and exit 1) -> Docker
reachable -> this node's certificate (loaded, joined with a join token, or renewed:
`node.daemon.identity`) -> lease -> registry entry -> gRPC server bound (mutual TLS,
the auth interceptor first) -> /metrics bound -> agent, leadership, events, the proxy
mesh, certificate renewal, the credential mirrors. Every
background task is named; if one dies, the daemon logs why and exits non-zero
instead of limping on. SIGTERM/SIGINT: health goes NOT_SERVING, leadership is
resigned (another node leads within ~2 s), the server drains for a second and the
process exits. Containers keep running and the lease is left to expire, so a
restarted daemon re-adopts everything without moving a task. The whole stop takes at
most `shutdown_grace`, whatever etcd or Docker do (`node.daemon.shutdown`); a signal
during the start abandons the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from typing import Any

import grpc

from node import __version__
from node.agent.agent import Agent
from node.agent.engine import EngineWatch
from node.api import server as api_server
from node.daemon import discovery, restarting, shutdown, wiring
from node.daemon.collectors import collectors as daemon_collectors
from node.daemon.identity import IdentityError, NodeIdentity
from node.daemon.ingress import attach_ingress
from node.daemon.leadership import Bounds, Leadership
from node.daemon.membership import Membership
from node.daemon.metered import MeteredEtcdStore
from node.daemon.pools import pool_context
from node.daemon.telemetry import Telemetry
from node.dashboard import serve as dashboard
from node.gossip.config import PRESETS as GOSSIP_PRESETS
from node.model.config import NodeConfig, vip_network
from node.model.domain import NodeInfo
from node.model.keys import Keys
from node.model.spec_compat import known_paths
from node.pb import peer_pb2, peer_pb2_grpc
from node.proxy import metrics
from node.proxy.dnsserver import host_resolvers
from node.proxy.mesh import MeshSettings
from node.proxy.names import dns_address
from node.proxy.sources import SourceMap
from node.proxy.vipkernel import VipKernel, remove_left
from node.proxy.vipnat import table_name
from node.proxy.vips import HostSetupError, Names, prepare_host
from node.proxy.workers import mesh_for
from node.runtime.base import RuntimeUnavailable
from node.runtime.docker import DockerRuntime
from node.runtime.docker_stats import docker_sampler
from node.security.credentials import EtcdCredentials
from node.security.etcd_tls import read_etcd_tls
from node.security.files import NodeFiles
from node.security.sealing import Sealer
from node.store import StoreError, StoreUnavailable
from node.store.etcd import EtcdTls
from node.store.mirrors import WatchHub
from node.store.retry import patiently
from node.store.session import Session
from node.telemetry.events import EventLog
from node.wire import rpc

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start; the message is the one line shown to the operator."""


class Daemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.keys = Keys(config.etcd_prefix)
        self.store = MeteredEtcdStore(config.etcd, timeout=config.etcd_timeout, tls=etcd_tls(config))
        # before any component: every mirror of `self.store` is then this hub's (one etcd watch)
        self.hub = WatchHub(self.store, self.keys.prefix)
        self.node_mirror = self.hub.mirror(self.keys.nodes, "nodes")  # issue 14: Prometheus discovery
        self.identity = NodeIdentity(config, self.store, self.keys)
        self.credentials = EtcdCredentials(self.store, self.keys)
        self.runtime = DockerRuntime(config.docker_host or None)
        self.engine = EngineWatch(self.runtime.ping, config.engine_timeout)
        self.session = Session(self.store, config.timings.lease_ttl)
        self.leader_session = Session(self.store, config.timings.leader_ttl, revoke_lost=True)
        self.events = EventLog(self.store, self.keys, config.node_id)
        usage = None  # usage per task is sampled for /metrics only
        if config.metrics_port:
            usage = docker_sampler(config.docker_host or None, config.cluster, config.node_id)
        self.telemetry = Telemetry(config.node_id, self.store.meter, usage)  # issue 14: /metrics
        self.events.observers.append(self.telemetry.on_event)
        self.telemetry.usage_meter = wiring.usage_meter(config, self.store, self.keys)  # issue 15: metering
        self.membership = Membership(
            config.node_id,
            f"{config.address}:{config.grpc_port}",
            self.store,
            self.keys,
            GOSSIP_PRESETS[config.preset],
            config.join,
            reap_after=config.reap_after,
        )
        self.mesh = mesh_for(  # issue 17: in this loop, or in proxy worker processes
            config,
            self.store,
            self.keys,
            config.node_id,
            config.address,
            self.events,
            self.membership,
            lambda: self.session.lease,
            MeshSettings.from_config(config),
        )
        self.stopping = asyncio.Event()
        self.started_at = time.time()
        self.deadline: shutdown.Deadline | None = None  # set by the stop signal
        self._main: asyncio.Task[Any] | None = None
        self._starting = True  # until the server runs: a signal then abandons the start

    async def _names(self, agent: Agent) -> Names | None:
        """The name server and VIP listeners (node.proxy.vips), and the agent told to give
        containers that server; None (logged, an event) when names are off or the host
        cannot be prepared: containers then keep the engine's default resolver, and a VIP
        table a killed run left is deleted (nothing here would replace its rules)."""
        c = self.config
        if not c.names:
            await remove_left(table_name(c.cluster, c.node_id))
            return None
        net = vip_network(c.vip_range)
        try:
            prepare_host(net)
        except HostSetupError as exc:
            log.error("service names are off on this node: %s", exc)
            self.events.emit("names.off", f"service names are off on {c.node_id}: {exc}")
            await remove_left(table_name(c.cluster, c.node_id))
            return None
        sources = SourceMap.of_runtime(self.runtime, c.cluster, (net,), (c.address, c.publish_address))
        kernel = VipKernel(table_name(c.cluster, c.node_id), events=self.events, enabled=c.vip_kernel)
        self.mesh.vip_kernel = kernel  # for /metrics (MeshCollector)
        names = Names(
            self.mesh, net, host_resolvers(exclude=(dns_address(net),)), sources=sources, kernel=kernel
        )
        agent.dns = (names.dns_address,)
        return names

    async def _connect_etcd(self) -> None:
        """etcd answers, or `StartupError` at once; with --wait-for-etcd, ask every 2 s
        until it answers or the daemon is stopped."""
        await self.store.connect()
        retrying = patiently(
            "waiting for etcd (--wait-for-etcd)",
            retry_on=StoreUnavailable if self.config.wait_for_etcd else (),
            first=2.0,
            most=2.0,
            logger=log,
            sleep=self._pause_unless_stopped,
        )
        try:
            await retrying(self.store.ping, timeout=3.0)
        except StoreUnavailable as exc:
            hint = "start etcd or point --etcd at a reachable endpoint"
            raise StartupError(f"{exc}; {hint} (or pass --wait-for-etcd)") from exc

    async def _pause_unless_stopped(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        except TimeoutError:
            return
        raise StartupError("stopped while waiting for etcd")

    def _check_port(self) -> None:
        """Fail at once when the gRPC address cannot be bound (before joining or renewing)."""
        c = self.config
        family = socket.AF_INET6 if ":" in c.address else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's: TIME_WAIT is fine
                probe.bind((c.address, c.grpc_port))
                probe.listen(1)  # a listener there makes bind or listen fail
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {c.address}:{c.grpc_port}: {exc.strerror or exc}; "
                "is another shoald running there? choose --grpc-port"
            ) from exc

    async def _refuse_twin(self) -> None:
        """Refuse to start when a live daemon already runs with this node id elsewhere."""
        kv = await self.store.get(self.keys.node(self.config.node_id))
        if kv is None:
            return
        other = NodeInfo.from_json(kv.value)
        target = f"{other.address}:{other.grpc_port}"
        if (other.address, other.grpc_port) == (self.config.address, self.config.grpc_port):
            return  # our own entry from before a restart (a twin there would hold the port)
        twin = StartupError(
            f"node id {self.config.node_id!r} is already running at {target}; "
            "give this host another --node-id (or another --data-dir)"
        )
        tls = self.identity.client_tls
        if tls is None:  # no certificate to ask it with: something answering there is enough
            try:
                async with asyncio.timeout(1.0):
                    _, writer = await asyncio.open_connection(other.address, other.grpc_port)
                writer.close()
            except (OSError, TimeoutError):
                return  # the old entry is stale: its daemon is gone
            raise twin
        try:
            async with rpc.aio_channel(target, tls) as channel:
                pong = await peer_pb2_grpc.PeerStub(channel).Ping(peer_pb2.PingRequest(seq=1), timeout=1.0)
        except grpc.RpcError:
            return  # the old entry is stale: its daemon is gone
        if pong.node == self.config.node_id:
            raise twin

    async def _keep_registered(self, renewed: asyncio.Event) -> None:
        """Keep `nodes/<id>` on the current node lease and up to date: at once after a new
        lease or a change of the engine's verdict (`not_ready`), and every few seconds
        anyway, so a registration that failed (etcd just back) is retried."""
        key = self.keys.node(self.config.node_id)
        while True:
            try:
                async with asyncio.timeout(self.config.timings.agent_resync * 2):
                    await renewed.wait()
            except TimeoutError:
                pass
            renewed.clear()
            if not self.session.valid.is_set():
                continue
            try:
                kv = await self.store.get(key)
                if kv is None or kv.lease != self.session.lease or kv.value != self.info().to_json():
                    await self.register()
            except StoreError as exc:
                log.warning("node registration not renewed yet: %s", exc)

    def restarts(self, task_id: str) -> int:
        agent = self.telemetry.agent
        status = agent.status.get(task_id) if agent is not None else None
        return status.restarts if status is not None else 0

    def info(self) -> NodeInfo:
        c = self.config
        kernel = self.mesh.kernel.state() if self.mesh.kernel is not None else ("", "")  # decision 75
        return NodeInfo(
            c.node_id,
            c.address,
            c.grpc_port,
            dict(c.labels),
            c.cpu,
            c.memory,
            __version__,
            self.started_at,
            not_ready="" if self.engine.up else self.engine.reason,
            starting=self.mesh.not_serving(),  # decision 76: ready once the proxy serves
            spec_paths=sorted(known_paths()),
            metrics_port=c.metrics_port,
            metrics_tls=c.metrics_tls,
            kernel_path=kernel[0],
            kernel_reason=kernel[1],
        )

    async def register(self, lease: int | None = None) -> None:
        info = self.info()
        await self.store.put(self.keys.node(info.id), info.to_json(), lease=lease or self.session.lease)

    def request_stop(self) -> None:
        """The stop signal: from now on, the process is gone within `shutdown_grace`."""
        if self.stopping.is_set():
            return
        self._begin_stop()
        self.stopping.set()
        if self._starting and self._main is not None:
            self._main.cancel()

    def _begin_stop(self) -> shutdown.Deadline:
        """The stop's deadline, and a watchdog that ends the process at the grace (once)."""
        if self.deadline is None:
            grace = self.config.shutdown_grace
            self.deadline = shutdown.Deadline(grace - min(1.0, grace / 4))  # the watchdog's second is spare
            loop = asyncio.get_running_loop()
            shutdown.Watchdog(grace, lambda: shutdown.describe(asyncio.all_tasks(loop))).arm()
        return self.deadline

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self.stopping.is_set() or self._main is None:
                raise
            self._main.uncancel()  # the stop signal's own cancellation: the time boxes below work again
            log.info("stopped while starting")
        finally:
            deadline = self._begin_stop()
            # Docker calls in flight (a container stop with a long grace) finish on their own
            await shutdown.step("closing Docker", self.runtime.close(wait=False), deadline.left(1.0))
            await shutdown.step("closing etcd", self.store.close(), deadline.left(1.0))
            current = asyncio.current_task()
            left = await shutdown.cancel_all(
                {t for t in asyncio.all_tasks() if t is not current}, deadline.left(), patience=0.2
            )
            if left:
                shutdown.exit_now(f"shutdown: tasks still running at the deadline: {shutdown.describe(left)}")

    async def _run(self) -> None:
        c = self.config
        self._check_port()
        await self._connect_etcd()
        try:
            await self.runtime.ping()
        except RuntimeUnavailable as exc:
            raise StartupError(str(exc)) from exc
        try:
            self.identity.load()
            await self._refuse_twin()
            await self.identity.ensure()
        except IdentityError as exc:
            raise StartupError(str(exc)) from exc
        except StoreError as exc:
            raise StartupError(str(exc)) from exc
        assert self.identity.server_tls is not None and self.identity.client_tls is not None
        self.membership.use_tls(self.identity.client_tls)  # also signs and checks gossip claims
        self.identity.on_renewed(self.membership.use_tls)
        hub = asyncio.create_task(self.hub.run(), name="watch-hub")  # feeds every component's mirrors
        credentials = asyncio.create_task(self.credentials.run(), name="credentials")
        try:
            await self.session.start()
            await self.leader_session.start()
            await self.events.start()
            await self.register()
        except StoreError as exc:
            await _cancel(credentials)
            raise StartupError(str(exc)) from exc
        renewed = asyncio.Event()
        self.session.on_renewed(lambda _lease: renewed.set())
        self.engine.on_change(lambda _up: renewed.set())  # not ready / ready again: re-register now
        if self.mesh.kernel is not None:  # the kernel path fell back or serves again: re-register now
            self.mesh.kernel.on_change(renewed.set)
        self.mesh.on_serving.append(renewed.set)  # the proxy serves: ready, re-register now
        try:
            api = wiring.build_api(self)
        except OSError as exc:
            await _cancel(credentials)
            raise StartupError(f"{exc}; is another shoald running there? choose --grpc-port") from exc
        servicer, server, health = api.servicer, api.server, api.health
        await server.start()
        self._starting = False  # a signal from now on takes the orderly way out below
        await api_server.set_serving(health, True)
        metrics_server = None
        if c.metrics_port:
            try:
                metrics_server = metrics.serve(
                    self.mesh,
                    c.address,
                    c.metrics_port,
                    *wiring.metrics_guard(c),
                    daemon_collectors(self.telemetry),
                    {discovery.PATH: discovery.sd_page(lambda: self.node_mirror.items, c.cluster)},
                )
            except OSError as exc:
                await server.stop(grace=0)
                await _cancel(credentials)
                raise StartupError(
                    f"cannot serve /metrics on {c.address}:{c.metrics_port}: {exc.strerror or exc}; "
                    "choose --metrics-port (0 turns it off)"
                ) from exc
        dashboard_server = None
        if c.dashboard_port:  # issue 14: the web dashboard (node.dashboard)
            try:
                dashboard_server = await dashboard.start(
                    servicer, self.credentials, api.traffic, c.node_id,
                    NodeFiles.of(c.data_dir).identity, c.address, c.dashboard_port,
                )  # fmt: skip
            except OSError as exc:
                await server.stop(grace=0)
                if metrics_server is not None:
                    metrics_server.shutdown()
                await _cancel(credentials)
                raise StartupError(dashboard.start_problem(exc, c.address, c.dashboard_port)) from exc
        agent = Agent(
            self.store,
            self.keys,
            c.node_id,
            c.cluster,
            self.runtime,
            self.session,
            self.events,
            c.publish_to,
            c.timings.agent_resync,
            c.stop_timeout,
            c.drain,
            engine=self.engine,
            pull_timeout=c.pull_timeout,
            history=c.task_history_limit,  # exited containers kept per slot (decision 71)
        )
        agent.secret_files.sealer = Sealer(self.identity.passphrase)  # issue 13: opens secrets at start
        attach_ingress(self.mesh, c, self.store, self.keys, self.identity)  # issue 17: the shared entrance
        names = await self._names(agent)  # issue 13: service names for this host's containers
        leadership = Leadership(
            self.store,
            self.keys,
            c.node_id,
            f"{c.address}:{c.grpc_port}",
            self.leader_session,
            self.events,
            c.timings.leader_resync,
            self.membership,
            c.timings.down_grace,
            Bounds(
                c.etcd_retention,
                c.etcd_defrag_ratio,
                c.etcd_defrag_min,
                c.reap_after,
                c.events_max,  # issue 14: the event log's bounds
                c.events_max_age,
            ),
        )
        leadership.pool_context = pool_context(c, self.identity)  # issue 15: node pools

        load = wiring.autoscaling(self, leadership, servicer, self.mesh, self.session)  # issue 15
        self.telemetry.attach_agent(agent)
        self.telemetry.attach_leadership(leadership)
        self.telemetry.attach_membership(self.membership)
        self.events.emit("node.started", f"{c.node_id} serving on {c.address}:{c.grpc_port}")
        log.info(
            "shoald %s: node %s serving on %s:%d, etcd %s",
            __version__,
            c.node_id,
            c.address,
            c.grpc_port,
            self.store.endpoints,
        )
        tasks: set[asyncio.Task[Any]] = {
            asyncio.create_task(self.session.run(), name="session"),
            asyncio.create_task(self._keep_registered(renewed), name="registration"),
            asyncio.create_task(self.leader_session.run(), name="leader-session"),
            asyncio.create_task(self.events.run(), name="events"),
            asyncio.create_task(agent.run(), name="agent"),
            asyncio.create_task(leadership.run(), name="leadership"),
            asyncio.create_task(self.membership.run(), name="membership"),
            asyncio.create_task(self.mesh.run(), name="mesh"),
            *([asyncio.create_task(names.run(), name="names")] if names is not None else []),
            asyncio.create_task(self.identity.run(), name="certificates"),
            asyncio.create_task(self.telemetry.run(), name="telemetry"),
            asyncio.create_task(load.run(), name="load-report"),
            credentials,
            hub,
        }
        # every node samples its proxy's traffic: the dashboards of the others chart it too
        tasks.add(
            asyncio.create_task(dashboard.sample_forever(api.traffic.traffic), name="dashboard-traffic")
        )
        stop = asyncio.create_task(self.stopping.wait(), name="stop-signal")
        done, _ = await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stop]
        deadline = self._begin_stop()
        log.info(
            "%s; shutting down (at most %gs)",
            "stop signal" if not failed else "a background task died",
            c.shutdown_grace,
        )
        stop.cancel()
        await shutdown.step("health NOT_SERVING", api_server.set_serving(health, False), deadline.left(1.0))
        by_name = {t.get_name(): t for t in tasks}
        # first: it resigns (at most 2 s), so another node leads now
        stuck = await shutdown.cancel_all({by_name.pop("leadership")}, deadline.left(3.0), patience=2.5)
        await shutdown.step(
            "revoking the leader lease", self.leader_session.close(revoke=True), deadline.left(2.0)
        )
        if c.leave_on_stop:
            await shutdown.step("leaving the gossip", self.membership.leave(), deadline.left(2.0))
        elif not failed and (seconds := restarting.grace(c)) > 0:  # back soon: its tasks stay
            mark = restarting.mark(self.store, self.keys, c.node_id, seconds)
            await shutdown.step("marking this node restarting", mark, deadline.left(1.0))
        stuck |= await shutdown.cancel_all(by_name.values(), max(0.5, deadline.left() - 2.5))
        await shutdown.step(
            "draining the gRPC server", server.stop(grace=deadline.left(1.0)), deadline.left(1.5)
        )
        if metrics_server is not None:
            metrics_server.shutdown()
        if dashboard_server is not None:
            dashboard_server.close()
        if stuck:
            log.error("shutdown: still running after cancellation: %s", shutdown.describe(stuck))
        for task in failed:
            raise StartupError(f"background task {task.get_name()} died: {task.exception()!r}")


def etcd_tls(config: NodeConfig) -> EtcdTls | None:
    """TLS to etcd when `etcd_ca` is set (with a client certificate when `etcd_cert` is)."""
    if not config.etcd_ca:
        return None
    try:
        return read_etcd_tls(config.etcd_ca, config.etcd_cert, config.etcd_key, config.etcd_server_name)
    except OSError as exc:
        raise StartupError(f"etcd TLS: cannot read {exc.filename}: {exc.strerror or exc}") from exc


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
