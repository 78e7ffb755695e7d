"""The routing mesh: this node's proxy listeners, kept in step with the cluster.

Every node listens on `<node address>:<published>` for every published port of every
service and forwards to the service's routable replicas (`node.proxy.routes`): per
connection for `tcp` ports (`TcpProxy`), per request for `http` ports (`HttpProxy`).

Where the endpoint set comes from, and how fast it moves:
- mirrors (list + watch, resumed after a drop, re-listed after compaction) of
  `services/`, `endpoints/`, `tasks/` and `down/`; a change is applied to every
  balancer as soon as the watch delivers it (milliseconds);
- this node's gossip view: a node gossip declares dead leaves every rotation at once,
  before the leader marks it down or etcd expires its lease;
- while etcd is unreachable the mirrors keep their last view, so traffic keeps going to
  the last known healthy set.

Draining: an endpoint that leaves the set gets no new traffic from that moment; what
is in flight to it may finish for up to `drain_timeout` (the agent waits its drain
time before stopping the container). A listener whose service is removed stops
accepting at once and drains the same way. A port whose route changes keeps its
socket (`node.proxy.ports`): the new engine accepts from it before the old one stops, so
a client connecting meanwhile is never refused or reset.

Limits (`node.proxy.limits`, settings `proxy_*` of `node.model.config`): every listener of the
node shares one `ConnectionCap`; http listeners apply `HttpLimits` to each request head
and body, tcp listeners close connections idle for `tcp_idle_timeout`.

A port that cannot be bound (taken by another process) is reported as a
`proxy.bind_failed` event and in `binds/<service>/<node>` (shown by `shoal service
inspect`), retried every `rebind_interval` seconds; other services are unaffected.

Serving, for the node's readiness and for lookups (decision 76): `serving` is set once the
first table is served (every listener bound or its bind error known), and the daemon
reports the node ready only then; `current(revision)` says whether the ports are served
from a table at least as new as etcd's `revision`, which `settled` waits for (a lookup
answers once this node's proxy serves what it lists).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_fixed

from node.gossip.member import GONE, Member
from node.model.config import NodeConfig
from node.model.domain import (
    Assignment,
    EndpointRecord,
    ServiceRecord,
    readable_endpoints,
    readable_services,
    routable_endpoints,
    serving,
)
from node.model.keys import Keys
from node.proxy import migrate, routes
from node.proxy.balancer import Balancer, RetryPolicy
from node.proxy.coldstart import ColdStart
from node.proxy.direct import OnLink, direct
from node.proxy.h2_proxy import H2Proxy
from node.proxy.http import HttpProxy
from node.proxy.ingress import Ingress
from node.proxy.kernel_path import KernelPath
from node.proxy.kernel_rules import KernelPort, plan
from node.proxy.limits import DEFAULT_MAX_CONNECTIONS, ConnectionCap, HttpLimits
from node.proxy.listener import CONNECT_TIMEOUT
from node.proxy.ports import PortSockets
from node.proxy.routes import Route
from node.proxy.stats import ProxyStats
from node.proxy.tcp import TcpProxy
from node.proxy.vipkernel import VipKernel
from node.store import Store, StoreError
from node.store.mirrors import mirror
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)

Engine = TcpProxy | HttpProxy | H2Proxy

READ_TIMEOUT = 0.5
"""Seconds a reader of the counters (`/metrics`) waits for proxy workers' state at most;
a worker that has not answered by then counts with its last state (`read_counters`)."""


class GossipView(Protocol):
    def members(self) -> list[Member]: ...
    def listener(self) -> asyncio.Event: ...


@dataclass(frozen=True)
class MeshSettings:
    connect_timeout: float = CONNECT_TIMEOUT  # s per connect attempt to a replica (node.proxy.listener)
    drain_timeout: float = 30.0  # s in-flight traffic to a removed replica may take
    rebind_interval: float = 5.0  # s between attempts to bind a port that was taken
    max_attempts: int = 3  # connect attempts per connection or request (different replicas)
    limits: HttpLimits = field(default_factory=HttpLimits)  # per request of an http port
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # client connections on all ports together
    tcp_idle_timeout: float = 3600.0  # s without a byte either way on a tcp port
    tunnel_idle: float = 3600.0  # s without a byte either way in an upgraded http connection
    direct: bool = True  # issue 17: local replicas by container address (node.proxy.direct)

    @classmethod
    def from_config(cls, c: NodeConfig) -> MeshSettings:
        """The limits of the daemon's configuration (`proxy_*`), other settings as default."""
        return cls(
            limits=HttpLimits(
                max_head=c.proxy_max_head_bytes,
                max_url=c.proxy_max_url_bytes,
                max_headers=c.proxy_max_headers,
                head_timeout=c.proxy_head_timeout,
                body_timeout=c.proxy_body_timeout,
            ),
            max_connections=c.proxy_max_connections,
            tcp_idle_timeout=c.proxy_tcp_idle_timeout,
            tunnel_idle=c.proxy_tunnel_idle,
            direct=c.proxy_direct,
        )


@dataclass
class Listener:
    route: Route
    balancer: Balancer
    engine: Engine


class Mesh:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        address: str,
        events: EventLog | None = None,
        gossip: GossipView | None = None,
        lease: Callable[[], int] | None = None,
        settings: MeshSettings | None = None,
    ) -> None:
        self.store, self.keys, self.node, self.address = store, keys, node, address
        self.events = events
        self.gossip = gossip
        self.lease = lease
        self.settings = settings or MeshSettings()
        self.cap = ConnectionCap(self.settings.max_connections)  # shared by every listener
        self.services = mirror(store, keys.services, "mesh-services")
        self.endpoints = mirror(store, keys.endpoints_all, "mesh-endpoints")
        self.tasks = mirror(store, keys.tasks, "mesh-tasks")
        self.down = mirror(store, keys.down_all, "mesh-down")
        self.listeners: dict[int, Listener] = {}
        self.ports = PortSockets()  # a port's socket, kept while it is published (node.proxy.ports)
        self.migrate_off = ""  # why net.ipv4.tcp_migrate_req could not be set (node.proxy.migrate)
        self.stats: dict[Route, ProxyStats] = {}  # kept across re-binds: counters never go back
        self.bind_errors: dict[int, tuple[Route, str]] = {}
        self._reported: dict[str, list[dict[str, object]]] = {}  # binds/ key -> errors written
        self._reported_lease = 0  # the lease they were written on
        self._closing: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()  # the first sync is done
        self.serving = asyncio.Event()  # ... and its table is served (`not_serving`)
        self.on_serving: list[Callable[[], None]] = []  # called once, when `serving` is set
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop `run` runs on
        self._wakes: list[asyncio.Event] = []  # set by a change the next sync has to apply
        self._syncing = False
        self.syncs = 0
        self.ingress: Ingress | None = None  # issue 17: the node's shared entrance (node.proxy.ingress)
        self.cold = ColdStart()  # issue 15: requests held for services scaled to zero
        self.vip_kernel: VipKernel | None = None  # decision 74: set by the daemon, read by /metrics

        self.onlink = OnLink()  # which container addresses this host reaches directly
        self.kernel: KernelPath | None = None  # decision 75: `fast_path: kernel` ports in nftables
        self.kernel_served: list[KernelPort] = []  # the ports the kernel serves now

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        caches = (self.services, self.endpoints, self.tasks, self.down)
        wake = asyncio.Event()
        for cache in caches:
            cache.listener(wake)
        gossip_wake = self.gossip.listener() if self.gossip is not None else asyncio.Event()
        self.loop, self._wakes = asyncio.get_running_loop(), [wake, gossip_wake]
        if self.kernel is not None:
            await self.kernel.start()
        try:
            async with asyncio.TaskGroup() as tg:
                for cache in caches:
                    tg.create_task(cache.run(), name=f"{cache.name}")
                for cache in caches:
                    await cache.ready.wait()
                tg.create_task(self._loop(wake, gossip_wake), name="mesh-sync")
        finally:
            await self.close()

    async def _loop(self, wake: asyncio.Event, gossip_wake: asyncio.Event) -> None:
        while True:
            wake.clear()
            gossip_wake.clear()
            self._syncing = True
            try:
                await self.sync()
            finally:
                self._syncing = False
            self.ready.set()
            self.check_serving()
            stale = self.kernel is not None and self.kernel.stale  # rules that could not be removed
            timeout = self.settings.rebind_interval if self.bind_errors or self.ingress or stale else None
            waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(gossip_wake.wait())]
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def sync(self) -> None:
        """Bring listeners and balancers in line with the mirrors and the gossip view."""
        self.syncs += 1
        records = readable_services(kv.value for kv in self.services.values())
        wanted = routes.listeners(records)
        self.cold.update(records)
        replaced: dict[int, Listener] = {}  # a route changed: closed once its successor listens
        for port, listener in list(self.listeners.items()):
            if port not in wanted:
                self._retire(port)
            elif wanted[port] != listener.route:
                replaced[port] = self.listeners.pop(port)
        for port in [p for p, (route, _) in self.bind_errors.items() if wanted.get(p) != route]:
            del self.bind_errors[port]
        for port, route in wanted.items():
            if port not in self.listeners:
                # make before break: the new engine accepts from the port's socket before
                # the old one stops, and the socket stays (node.proxy.ports): a changed
                # route refuses no connection
                await self._open(route)
                if (old := replaced.pop(port, None)) is not None:
                    self._close(port, old)
                if port not in self.listeners:
                    self.ports.release(self.address, port)  # not served: nothing may queue
        for route in [r for r in self.stats if wanted.get(r.published) != r]:
            del self.stats[route]  # no longer published (service removed or changed): bounded
        self._apply_endpoints()
        await self.sync_kernel(records, wanted, self.routable())
        if self.ingress is not None:
            await self.ingress.sync(records, self.routable())
        await self._report_binds()

    async def sync_kernel(
        self, records: list[ServiceRecord], wanted: dict[int, Route], endpoints: list[EndpointRecord]
    ) -> None:
        """The kernel fast path (decision 75): this node's replicas of every `fast_path:
        kernel` port in nftables; the userland listener, bound all along, serves the rest."""
        if self.kernel is not None:
            ports = plan(wanted, routes.kernel_ports(records), endpoints, self.node)
            self.kernel_served = await self.kernel.sync(self.address, ports)

    # -- serving (decision 76) -------------------------------------------------------------

    def acked(self) -> bool:
        """Whether what serves the ports has taken the last table (here: at once)."""
        return True

    def check_serving(self) -> None:
        """Set `serving` (and tell `on_serving`) the first time the table is served."""
        if self.ready.is_set() and self.acked() and not self.serving.is_set():
            self.serving.set()
            for told in self.on_serving:
                told()

    def not_serving(self) -> str:
        """Why the published ports are not served yet; "" once they are (`NodeInfo.starting`)."""
        return "" if self.serving.is_set() else "the proxy has not bound the published ports yet"

    def current(self, revision: int) -> bool:
        """Whether the ports are served from a table at least as new as etcd's `revision`:
        the mirrors have seen it, no change waits for a sync, the last table is taken."""
        caches = (self.services, self.endpoints, self.tasks, self.down)
        return (
            self.serving.is_set()
            and not self._syncing
            and not any(w.is_set() for w in self._wakes)
            and min(c.revision for c in caches) >= revision
            and self.acked()
        )

    async def settled(self, revision: int, timeout: float) -> bool:
        """Wait up to `timeout` s for `current(revision)`; whether it came."""

        async def check() -> bool:
            return self.current(revision)

        waiting = AsyncRetrying(
            stop=stop_after_delay(timeout),
            wait=wait_fixed(0.01),
            retry=retry_if_result(lambda ok: not ok),
            retry_error_callback=lambda _state: False,
        )
        return bool(await waiting(check))

    def _gone(self) -> set[str]:
        gone = {self.keys.tail(kv.key, self.keys.down_all) for kv in self.down.values()}
        if self.gossip is not None:
            gone |= {m.node for m in self.gossip.members() if m.state in GONE and m.node != self.node}
        return gone

    def routable(self) -> list[EndpointRecord]:
        uids = {r.name: r.uid for r in readable_services(kv.value for kv in self.services.values())}
        tasks = (Assignment.from_json(kv.value) for kv in self.tasks.values())
        assigned = serving(tasks, uids)  # not a task of a removed namesake
        endpoints = readable_endpoints(kv.value for kv in self.endpoints.values())
        out = routable_endpoints(endpoints, assigned, self._gone())
        return direct(out, self.node, self.onlink) if self.settings.direct else out

    def _apply_endpoints(self) -> None:
        endpoints = self.routable()
        for listener in self.listeners.values():
            removed = listener.balancer.set_endpoints(routes.backends(listener.route, endpoints))
            if removed:
                listener.engine.drain(removed)
        self.cold.changed()

    # -- listeners -----------------------------------------------------------------------

    def _engine(self, route: Route, balancer: Balancer, address: str = "") -> Engine:
        """The engine of `route` on this node's address (or `address`: a service's VIP)."""
        s = self.settings
        address = address or self.address
        retry = RetryPolicy(max_attempts=s.max_attempts)
        if route.protocol == "http":
            return HttpProxy(
                address,
                route.published,
                balancer,
                service=route.service,
                connect_timeout=s.connect_timeout,
                drain_timeout=s.drain_timeout,
                retry=retry,
                limits=s.limits,
                cap=self.cap,
                tunnel_idle=s.tunnel_idle,
            )
        if route.protocol in ("grpc", "http2"):  # h2c, per stream (decision 61)
            return H2Proxy(
                address,
                route.published,
                balancer,
                service=route.service,
                grpc=route.protocol == "grpc",
                connect_timeout=s.connect_timeout,
                drain_timeout=s.drain_timeout,
                retry=retry,
                cap=self.cap,
                head_timeout=s.limits.head_timeout,
            )
        tcp = TcpProxy(
            address,
            route.published,
            balancer,
            connect_timeout=s.connect_timeout,
            drain_timeout=s.drain_timeout,
            retry=retry,
            idle_timeout=s.tcp_idle_timeout,
            cap=self.cap,
        )
        tcp.proxy_v2 = route.proxy_v2  # issue 17: spec proxy_protocol
        return tcp

    async def _open(self, route: Route) -> None:
        balancer = Balancer()
        engine = self._engine(route, balancer)
        engine.stats = self.stats.setdefault(route, ProxyStats())
        engine.cold = self.cold.hold(route.service, balancer)
        try:
            await self.ports.start(engine, self.address, route.published)
        except OSError as exc:
            error = f"cannot listen on {self.address}:{route.published}: {exc.strerror or exc}"
            known = self.bind_errors.get(route.published)
            self.bind_errors[route.published] = (route, error)
            if known is None or known[1] != error:
                log.warning("proxy for %s: %s", route.service, error)
                if self.events is not None:
                    self.events.emit("proxy.bind_failed", f"{route.service}: {error}", route.service)
            return
        if route.published in self.bind_errors:
            del self.bind_errors[route.published]
            if self.events is not None:
                self.events.emit(
                    "proxy.bound",
                    f"{route.service}: listening on {self.address}:{route.published}",
                    route.service,
                )
        self.listeners[route.published] = Listener(route, balancer, engine)
        log.info(
            "proxy: %s %s:%d -> %s port %d", route.protocol, self.address, route.published, route.service,
            route.container_port,
        )  # fmt: skip

    def migrate_queues(self) -> None:
        """Set `net.ipv4.tcp_migrate_req` (`node.proxy.migrate`): a listener that leaves a
        port's SO_REUSEPORT group hands the connections it had queued to another; warned
        once (log and event) when it cannot be set."""
        self.migrate_off = migrate.ensure()
        if self.migrate_off:
            log.warning("%s", migrate.warning(self.migrate_off))
            if self.events is not None:
                self.events.emit("proxy.migrate_off", migrate.warning(self.migrate_off))

    def _retire(self, port: int) -> None:
        """Stop accepting on `port` now; in-flight traffic drains in the background."""
        self._close(port, self.listeners.pop(port))
        self.ports.release(self.address, port)

    def _close(self, port: int, listener: Listener) -> None:
        listener.engine.stop_accepting()
        task = asyncio.get_running_loop().create_task(listener.engine.close(), name=f"proxy-close-{port}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, grace: float = 2.0) -> None:
        """Stop every listener now; give in-flight traffic `grace` seconds, then cut it. The
        kernel's table stays (decision 75) unless the node leaves for good."""
        if self.kernel is not None and self.kernel.remove_on_stop:
            await self.kernel.remove()
        for port in list(self.listeners):
            self._retire(port)
        self.ports.close()
        if self.ingress is not None:
            task = asyncio.get_running_loop().create_task(self.ingress.close(), name="ingress-close")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if not self._closing:
            return
        _, late = await asyncio.wait(self._closing, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # -- bind errors in etcd (for `shoal service inspect`) --------------------------------

    async def _report_binds(self) -> None:
        if self.lease is None:
            return
        lease = self.lease()
        if lease != self._reported_lease:  # what was written died with the old lease
            self._reported, self._reported_lease = {}, lease
        want: dict[str, list[dict[str, object]]] = {}
        for port, (route, error) in sorted(self.bind_errors.items()):
            key = self.keys.bind(route.service, self.node)
            want.setdefault(key, []).append({"node": self.node, "port": port, "error": error})
        try:
            for key, entries in want.items():
                if self._reported.get(key) != entries:
                    value = json.dumps({"since": time.time(), "errors": entries}).encode()
                    await self.store.put(key, value, lease=lease)
                    self._reported[key] = entries
            for key in [k for k in self._reported if k not in want]:
                await self.store.delete(key)
                del self._reported[key]
        except StoreError as exc:
            log.warning("proxy bind errors not reported to etcd yet: %s", exc)

    # -- views ---------------------------------------------------------------------------

    def read_counters(self, timeout: float = READ_TIMEOUT) -> float:
        """Bring `stats` up to date for a reader in another thread (`/metrics`), waiting at
        most about `timeout` s; how old the counters are then, in seconds (here: live, 0)."""
        return 0.0

    def ingress_counters(self) -> list[tuple[Route, ProxyStats]]:
        """The entrance's counters per listener, as service `ingress` (none without one)."""
        if self.ingress is None:
            return []
        return [
            (Route("ingress", p.listen_port, 0, "https" if p.https else "http"), p.stats)
            for p in self.ingress.proxies
        ]

    def backend_counts(self) -> dict[Route, int]:
        """Replicas in each published port's rotation now (ejected ones included)."""
        return {listener.route: len(listener.balancer) for listener in list(self.listeners.values())}

    def describe(self) -> list[dict[str, object]]:
        """What this node's mesh does now (for logs, tests and debugging)."""
        out: list[dict[str, object]] = []
        for port, listener in sorted(self.listeners.items()):
            now = time.monotonic()
            out.append(
                {
                    "port": port,
                    "service": listener.route.service,
                    "protocol": listener.route.protocol,
                    "backends": [
                        {"task": b.key, "node": b.node, "ejected": listener.balancer.is_ejected(b, now)}
                        for b in listener.balancer.backends
                    ],
                }
            )
        for port, (route, error) in sorted(self.bind_errors.items()):
            out.append({"port": port, "service": route.service, "protocol": route.protocol, "error": error})
        return out
