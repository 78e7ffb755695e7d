"""Reaching a service by name from inside a container (issue 13, docs/names.md).

On each host:
- the whole `vip_range` is a local route on the host (`ip route replace local <range>
  dev lo`, `prepare_host`): a container's packet to any VIP goes up its default route to
  the host (the Docker bridge's gateway) and is delivered to a socket bound to that VIP,
  without an address per VIP, NAT or IPVS;
- the node's proxy listens on `<VIP>:<container port>` for every port of every service
  that has a VIP, with the mesh's engines (`tcp` per connection, `http` per request),
  balancer, retries and routable set (`Mesh.routable`): the same rules as a published
  port, to the same replicas (node address and host port), on this host or another;
- the node's name server (`node.proxy.dnsserver`) listens on the range's first address,
  port 53, and the agent gives every container it starts that server (Docker's `dns`)
  and, in a stack, the search domain `<stack>.shoal`.

Several nodes on one network stack (`shoal dev`: every node on one host): the first
node to bind a VIP's port, or the name server's, serves it for all of them; the others
find the address in use and try again every `rebind_interval`, so when that node stops,
another takes over within that time. On separate hosts every node binds its own.

Virtual addresses are allocated by whichever node first sees a service without one
(`node.proxy.vipstore`, one transaction, safe when several try at once).

The kernel path (decision 74, `node.proxy.vipnat`, `node.proxy.vipkernel`): for the VIP
ports whose listener is bound here, and whose replicas all run in this host's engine,
an nftables rule DNATs the new connections of containers allowed to reach the service
straight to the replicas, ahead of the listener, which keeps serving everything else.
The rules are rewritten after every sync that changes them (endpoints, VIPs, networks,
the containers of the host), and deleted before the listeners close.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import random
import subprocess
import time
from dataclasses import dataclass

from node.model.domain import EndpointRecord, ServiceRecord, readable_services
from node.model.errors import Conflict
from node.proxy.balancer import Balancer
from node.proxy.dnsserver import DnsServer
from node.proxy.mesh import Engine, Mesh
from node.proxy.names import OUTSIDER, NameTable, VipRecord, dns_address, plan
from node.proxy.ports import PortSockets
from node.proxy.routes import Route, backends, sends_proxy_v2
from node.proxy.sources import SourceMap
from node.proxy.vipkernel import VipKernel
from node.proxy.vipnat import Rule, VipPort, choose
from node.proxy.vipstore import VipRangeFull, VipStore
from node.store import StoreError
from node.store.mirrors import mirror

log = logging.getLogger(__name__)

SWEEP_EVERY = 300.0  # s between sweeps of claims no record names
ALLOCATION_RETRY = 0.5  # s at most before a failed allocation is tried again
FULL_RETRY_MAX = 30.0  # s at most between tries while the range is full (doubling up to it)


class HostSetupError(Exception):
    pass


def prepare_host(net: ipaddress.IPv4Network) -> None:
    """Make every address of `net` local to this host (idempotent)."""
    cmd = ["ip", "route", "replace", "local", str(net), "dev", "lo"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostSetupError(f"cannot run {' '.join(cmd)}: {exc}; is iproute2 installed?") from exc
    if done.returncode != 0:
        raise HostSetupError(
            f"{' '.join(cmd)} failed: {done.stderr.strip()}; shoald needs CAP_NET_ADMIN for service names "
            "(or set names = false)"
        )


@dataclass
class VipListener:
    route: Route
    address: str
    balancer: Balancer
    engine: Engine


class Names:
    def __init__(
        self,
        mesh: Mesh,
        net: ipaddress.IPv4Network,
        upstreams: list[str],
        dns_port: int = 53,
        rebind_interval: float | None = None,
        sources: SourceMap | None = None,
        kernel: VipKernel | None = None,
    ) -> None:
        self.mesh = mesh
        self.sources = sources  # who asks (decision 64); None: no network scoping
        self.net = net
        self.dns_address = dns_address(net)
        self.upstreams = upstreams
        self.dns_port = dns_port
        self.rebind_interval = rebind_interval or mesh.settings.rebind_interval
        self.vips = mirror(mesh.store, mesh.keys.vips, "names-vips")
        self.allocator = VipStore(mesh.store, mesh.keys, net)
        self.table = NameTable()
        self.listeners: dict[tuple[str, int], VipListener] = {}
        self.ports = PortSockets(reuse_port=False)  # kept across route changes (node.proxy.ports)
        self.waiting: dict[tuple[str, int], str] = {}  # not bound yet, and why
        self.dns: DnsServer | None = None
        self.dns_error = ""
        self.retry_allocation = False
        self.full: dict[str, str] = {}  # service -> why it has no address (the range is full)
        self._full_passes = 0  # consecutive passes that found the range full
        self._full_retry_at = 0.0  # monotonic time of the next try while full
        self._full_held: frozenset[tuple[str, str]] = frozenset()  # the records then
        self.ready = asyncio.Event()
        self.kernel = kernel  # decision 74; None: every VIP port by its listener
        self.kernel_skipped: dict[str, str] = {}  # "<vip>:<port>" -> why it is not in the kernel
        self.kick = asyncio.Event()  # the host's containers changed: sync again
        self._refreshing: asyncio.Task[None] | None = None
        if sources is not None and kernel is not None:
            sources.on_change.append(self.kick.set)
        self._closing: set[asyncio.Task[None]] = set()
        self._swept = 0.0

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        m = self.mesh
        caches = (m.services, m.endpoints, m.tasks, m.down, self.vips)
        wake = asyncio.Event()
        for cache in caches:
            cache.listener(wake)
        gossip_wake = m.gossip.listener() if m.gossip is not None else asyncio.Event()
        if self.kernel is not None:  # off for good: a left table goes (on: see below)
            await self.kernel.start()
        try:
            # a table a killed daemon left stays until the first sync replaces it whole
            # (`vipnat.script`): until the listeners are bound, its rules are what serves
            # containers' connections to this host's replicas (wiped, they were refused)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.vips.run(), name="names-vips")
                for cache in caches:
                    await cache.ready.wait()
                tg.create_task(self._loop(wake, gossip_wake), name="names-sync")
        finally:
            await self.close()

    async def _loop(self, wake: asyncio.Event, gossip_wake: asyncio.Event) -> None:
        while True:
            wake.clear()
            gossip_wake.clear()
            self.kick.clear()
            await self.sync()
            self.ready.set()
            retry = self.rebind_interval if self.waiting or self.dns is None else None
            if self.retry_allocation:  # a lost race, etcd away, or a full range
                retry = min(retry or FULL_RETRY_MAX, self.allocation_delay())
            waits = [asyncio.ensure_future(e.wait()) for e in (wake, gossip_wake, self.kick)]
            try:
                await asyncio.wait(waits, timeout=retry, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def records(self) -> list[VipRecord]:
        return [r for kv in self.vips.values() if (r := VipRecord.from_json(kv.value)) is not None]

    async def sync(self) -> None:
        services = readable_services(kv.value for kv in self.mesh.services.values())
        vips = self.records()
        self.table = NameTable.build(services, vips)
        if self.sources is not None:  # containers started or stopped: learn their addresses
            self._refresh_sources()  # in the background: an engine that hangs holds no sync
        await self._allocate(services, vips)
        await self._serve_dns()
        uids = {s.name: s.uid for s in services}
        wanted: dict[tuple[str, int], Route] = {}
        for s in services:
            record = next(
                (v for v in vips if v.service == s.name and v.current(uids[s.name], self.net)), None
            )
            if record is None:
                continue
            for p in s.spec.ports:
                wanted.setdefault(
                    (record.address, p.container),
                    Route(s.name, p.container, p.container, p.protocol, sends_proxy_v2(s, p.container)),
                )
        replaced: dict[tuple[str, int], VipListener] = {}  # closed once the successor listens
        for key, listener in list(self.listeners.items()):
            if key not in wanted:
                self._retire(key)
            elif wanted[key] != listener.route:
                replaced[key] = self.listeners.pop(key)
        self.waiting = {k: why for k, why in self.waiting.items() if k in wanted}
        for key, route in wanted.items():
            if key not in self.listeners:
                await self._open(key, route)  # on the port's socket, before the old one stops
                if (old := replaced.pop(key, None)) is not None:
                    self._stop(key, old)
                if key not in self.listeners:
                    self.ports.release(*key)
        endpoints = self.mesh.routable()
        for listener in self.listeners.values():
            removed = listener.balancer.set_endpoints(backends(listener.route, endpoints))
            if removed:
                listener.engine.drain(removed)
        await self._sync_kernel(endpoints)

    async def _sync_kernel(self, endpoints: list[EndpointRecord]) -> None:
        """The kernel's rules for the VIP ports served here (`vipnat.choose` for each)."""
        if self.kernel is None or self.sources is None or not self.kernel.usable():
            return
        src = self.sources
        local = {task: ip for task, ip in src.by_task.items() if self.mesh.onlink(ip)}
        rules: list[Rule] = []
        skipped: dict[str, str] = {}
        for (address, port), listener in sorted(self.listeners.items()):
            r = listener.route
            allowed = [a for a, asker in src.by_address.items() if self.table.shares(asker, r.service)]
            vp = VipPort(r.service, address, port, r.protocol, r.proxy_v2)
            found = choose(vp, endpoints, local, allowed)
            if isinstance(found, Rule):
                rules.append(found)
            else:
                skipped[f"{address}:{port}"] = found
        self.kernel_skipped = skipped
        await self.kernel.apply(rules)

    async def _allocate(self, services: list[ServiceRecord], vips: list[VipRecord]) -> None:
        """Releases and the sweep first (what they free is what a waiting service gets),
        then an address for each service without one: a full range skips only that service.
        While the range stays full, a waiting service is tried again when a record changes
        (something may have been freed) or when its backed-off timer is due, not per sync
        (each try reads every claim)."""
        todo = plan(services, vips, self.net)
        self.retry_allocation = False
        full: dict[str, str] = {}
        try:
            freed = 0
            for stale in todo.release:
                freed += await self.allocator.release(stale.service)
            if time.monotonic() - self._swept > SWEEP_EVERY:
                freed += await self.allocator.sweep()
                self._swept = time.monotonic()
            held = frozenset((v.service, v.address) for v in vips)
            if self.full and not freed and held == self._full_held and time.monotonic() < self._full_retry_at:
                self.retry_allocation = True  # still full, nothing freed since: the timer's turn
                return
            for record in todo.allocate:
                try:
                    await self.allocator.allocate(record.name)
                except VipRangeFull as exc:
                    full[record.name] = str(exc)
        except (StoreError, Conflict) as exc:
            self.retry_allocation = True
            log.warning("names: virtual addresses not written yet: %s", exc)
            return
        if full:
            self.retry_allocation = True
            if set(full) != set(self.full):
                log.warning(
                    "names: vip_range %s is full: %d service(s) wait for an address (%s); "
                    "set a larger vip_range on every node",
                    self.net, len(full), ", ".join(sorted(full)),
                )  # fmt: skip
            self._full_passes += 1
            delay = min(FULL_RETRY_MAX, ALLOCATION_RETRY * 2**self._full_passes)
            self._full_retry_at = time.monotonic() + random.uniform(delay / 2, delay)
            self._full_held = held
        else:
            self._full_passes = 0
        self.full = full

    def allocation_delay(self) -> float:
        """When to try a failed allocation again: soon at a random moment after a lost race
        or etcd away; on the backed-off timer while the range is full."""
        if self.full:
            return max(0.05, self._full_retry_at - time.monotonic())
        return random.uniform(0.1, ALLOCATION_RETRY)

    async def _serve_dns(self) -> None:
        if self.dns is not None:
            return
        try:
            self.dns = await DnsServer.start(
                self.dns_address, self.dns_port, lambda: self.table, self.upstreams, sources=self.sources
            )
        except OSError as exc:
            error = _why(exc, self.dns_address, self.dns_port)
            if error != self.dns_error:
                log.info("names: name server not started here: %s", error)
            self.dns_error = error
            return
        self.dns_error = ""
        log.info(
            "names: name server on %s:%d, forwarding to %s",
            self.dns_address, self.dns_port, ", ".join(self.upstreams) or "nobody (REFUSED)",
        )  # fmt: skip

    async def _open(self, key: tuple[str, int], route: Route) -> None:
        address, _ = key
        balancer = Balancer()
        engine = self.mesh._engine(route, balancer, address)
        if self.sources is not None:
            engine.admit = functools.partial(self._admit, route.service)
        try:
            await self.ports.start(engine, address, route.published)
        except OSError as exc:
            error = _why(exc, address, route.published)
            if self.waiting.get(key) != error:
                log.info("names: %s: not listening here: %s", route.service, error)
            self.waiting[key] = error
            return
        self.waiting.pop(key, None)
        self.listeners[key] = VipListener(route, address, balancer, engine)
        log.info("names: %s %s:%d -> %s", route.protocol, address, route.published, route.service)

    def _admit(self, service: str, address: str) -> bool:
        """May the client at `address` connect to `service`'s VIP? Only from a container
        that shares a network with it (or from the host itself)."""
        assert self.sources is not None
        asker = self.sources.asker(address)
        if asker == OUTSIDER:  # maybe a container started since the last refresh
            self._refresh_sources()
        if self.table.shares(asker, service):
            return True
        log.debug("names: %s refused to %s (%s): no network in common", address, service, asker)
        return False

    def _refresh_sources(self) -> None:
        """List the engine's containers soon, after this call (one pending at a time)."""
        assert self.sources is not None
        if self._refreshing is not None and not self._refreshing.done():
            return  # the pending one starts its list after this call too
        task = asyncio.get_running_loop().create_task(self.sources.refresh_after(), name="names-sources")
        self._refreshing = task
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _retire(self, key: tuple[str, int]) -> None:
        self._stop(key, self.listeners.pop(key))
        self.ports.release(*key)

    def _stop(self, key: tuple[str, int], listener: VipListener) -> None:
        listener.engine.stop_accepting()
        task = asyncio.get_running_loop().create_task(listener.engine.close(), name=f"vip-close-{key}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, grace: float = 2.0) -> None:
        if self.kernel is not None:  # first: new connections go to the listeners while they drain
            await self.kernel.close()
        if self.dns is not None:
            self.dns.close()
            self.dns = None
        for key in list(self.listeners):
            self._retire(key)
        self.ports.close()
        if self._closing:
            _, late = await asyncio.wait(self._closing, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def describe(self) -> dict[str, object]:
        return {
            "dns": f"{self.dns_address}:{self.dns_port}" if self.dns is not None else self.dns_error,
            "listening": sorted(f"{a}:{p} {v.route.service}" for (a, p), v in self.listeners.items()),
            "waiting": {f"{a}:{p}": why for (a, p), why in sorted(self.waiting.items())},
            "no_address": sorted(self.full),
            "kernel": {**self.kernel.describe(), "listeners": self.kernel_skipped}
            if self.kernel is not None
            else None,
        }


def _why(exc: OSError, address: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{address}:{port} is in use (another node of this host serves it)"
    return f"cannot listen on {address}:{port}: {exc.strerror or exc}"
