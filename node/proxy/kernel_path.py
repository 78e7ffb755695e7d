"""Applies the kernel fast path's table (decision 75; the text: `node.proxy.kernel_rules`).

`KernelPath.sync` is called by the mesh after every sync with the ports to DNAT. It
writes the whole table with one `nft -f -` (one transaction: `flush table` and every
rule, atomic for packets) when the text changed, and nothing otherwise: steady state
runs no process. A failed `nft` is retried with tenacity (three attempts within about
a second); then the table is removed (best effort) and the ports are served by the
userland listeners, which stay bound on every published port all along: a fallback
takes no rebinding. One warning and one `proxy.kernel_fallback` event per change of
cause; the next change of the table tries the kernel again, and `proxy.kernel_path`
says when it serves once more.

Clients on the host's container bridges are left to the listener (in the prerouting
rules): the replicas' bridges (from `/proc/net/route`), and every other Linux bridge
with an on-link route that carries no default route (`/sys/class/net/<if>/bridge`: a
Docker network's `br-…`, not a host's uplink `br0`). A container on another Docker
network DNATed to a replica on `docker0` is dropped by Docker's isolation between
networks (`DOCKER-ISOLATION-STAGE-2`): it timed out, where the listener answers it.
So are the VIP ranges given as `vips` on a node listening on 0.0.0.0 (kernel_rules' doc).

`nft` missing (or `proxy_nft = "off"`): nothing is written; with fast-path ports wanted,
one warning and one `proxy.kernel_fallback` event say so.

Lifetime (decision 75): the table outlives the daemon. A kill -9, a crash or a graceful
stop leaves it serving (the replicas keep running while the daemon is away, decision
63's goal for the data path); the next daemon's first sync replaces it, and a daemon
started with the kernel path off removes it. Only a node that leaves for good
(`leave_on_stop`) removes it when it stops; `shoal dev` removes its nodes' tables with
their containers.

`counts` reads the rules' named counters for `/metrics` (`nft -j list counters`, in the
scrape's thread, at most once per COUNTS_AGE); `state` is what the node registers for
`shoal node ls` (on, off, or fallback and why), and `on_change` tells the daemon's
registration loop when it changed.

Each failure path leaves a consistent state: the text is never half applied (one
transaction); a process dying between `route_localnet` and `nft` leaves a sysctl set
and the old table; the next start writes both again. `route_localnet` is put back as
it was on an interface whose guard rule goes (it leaves the rules, the table is removed,
a fallback), so it is never on without the guard (a dead process's setting stays: the
value it replaced is not known).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from ipaddress import IPv4Network
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from node.proxy import kernel_rules
from node.proxy.direct import ROUTES, default_route_interfaces, on_link_routes
from node.proxy.kernel_rules import KernelPort
from node.proxy.nft import NftError, NftMissing, query_nft, run_nft
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)

ATTEMPTS = 3
NET_CLASS = Path("/sys/class/net")  # <if>/bridge: a Linux bridge
OFF = ("", "off", "false", "no", "0")
"""Values of `proxy_nft` that turn the kernel path off."""
SYSCTL = Path("/proc/sys/net/ipv4/conf")

COUNTS_AGE = 2.0  # s a read of the counters is reused: scrapes within it run no `nft`

Runner = Callable[[str, str], Awaitable[None]]
Query = Callable[[str, Sequence[str]], object]


def set_route_localnet(
    interfaces: Sequence[str], root: Path = SYSCTL, changed: dict[str, str] | None = None
) -> list[str]:
    """`route_localnet = 1` on each of `interfaces` (loopback clients to container
    addresses, kernel_rules' doc); the ones that could not be set. `changed` records
    the value each one had before this process set it (`restore_route_localnet`)."""
    failed = []
    for name in interfaces:
        path = root / name / "route_localnet"
        try:
            before = path.read_text().strip()
            if before != "1":
                path.write_text("1\n")
                if changed is not None:
                    changed.setdefault(name, before)
        except OSError as exc:
            log.warning("kernel path: cannot set %s: %s", path, exc.strerror or exc)
            failed.append(name)
    return failed


def restore_route_localnet(changed: dict[str, str], keep: Collection[str] = (), root: Path = SYSCTL) -> None:
    """Put back what `set_route_localnet` changed, on every interface not in `keep`: with
    `route_localnet` on, a neighbour on the bridge can reach the host's 127.0.0.0/8
    (CVE-2020-8558's shape), which only the table's guard rule stops; left on once the
    table (and its guard) was gone, nothing did."""
    for name in [n for n in changed if n not in keep]:
        path = root / name / "route_localnet"
        try:
            path.write_text(changed[name] + "\n")
        except OSError as exc:  # the interface is gone (so is its setting) or not ours
            log.debug("kernel path: cannot restore %s: %s", path, exc.strerror or exc)
        del changed[name]


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: nft ran and refused or hung (a missing program is not)."""
    return isinstance(exc, NftError) and not isinstance(exc, NftMissing)


class KernelPath:
    """This node's nftables table (module doc). `program` "": off."""

    def __init__(
        self,
        program: str,
        table: str,
        events: EventLog | None = None,
        remove_on_stop: bool = False,
        run: Runner = run_nft,
        routes_file: Path = ROUTES,
        sysctl: Path = SYSCTL,
        query: Query = query_nft,
        net_class: Path = NET_CLASS,
        clock: Callable[[], float] = time.monotonic,
        vips: Sequence[IPv4Network] = (),
    ) -> None:
        self.program, self.table, self.events = program, table, events
        self.vips = tuple(vips)  # the VIP ranges, never matched by a 0.0.0.0 node's rules
        self.remove_on_stop = remove_on_stop
        self.run, self.routes_file, self.sysctl, self.net_class = run, routes_file, sysctl, net_class
        self.query, self.clock = query, clock
        self._counts: tuple[float, dict[int, int]] | None = None  # (read at, port -> connections)
        self._counts_lock = threading.Lock()  # scrapes run in the metrics server's threads
        self._watchers: list[Callable[[], None]] = []
        self.applied: str | None = None  # the text the kernel holds (None: unknown, at start)
        self.served: list[KernelPort] = []  # the ports the kernel serves now, as applied
        self.fallback = ""  # why fast-path ports go to the userland listeners now ("": they do not)
        self._tried: str | None = None  # the last text that failed: not retried until it changes
        self._reported = self.state()  # the state the watchers (`on_change`) last heard of
        self._localnet: dict[str, str] = {}  # interface -> route_localnet before we set it

    def state(self) -> tuple[str, str]:
        """What the node reports of its kernel path (`NodeInfo.kernel_path`, shown by `shoal
        node ls`): ("off", why) when `proxy_nft` turned it off; ("fallback", why) when
        `fast_path: kernel` ports go to the userland listeners (the reason of the last
        `proxy.kernel_fallback`), or would, `nft` being missing; ("on", "") otherwise."""
        if not self.program:
            return "off", "proxy_nft is off"
        if self.fallback:
            return "fallback", self.fallback
        if not self.resolved():
            return "fallback", f"{self.program} is not found"
        return "on", ""

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) after a sync that changed `state()`."""
        self._watchers.append(callback)

    def counts(self) -> dict[int, int]:
        """Connections DNATed per published port, from the table's named counters (one per
        port, kept across the table's swaps: `kernel_rules.counter_name`); {} when there is
        no table or `nft` cannot say. Blocking (runs `nft -j list counters` at most once
        per COUNTS_AGE), for the `/metrics` scrape's thread, never the event loop."""
        program = self.resolved() if self.served else ""
        with self._counts_lock:
            if not program:  # no table of ours (or no nft): nothing to read, nothing cached
                self._counts = None
                return {}
            now = self.clock()
            if self._counts is not None and now - self._counts[0] < COUNTS_AGE:
                return self._counts[1]
            found: dict[int, int] = {}
            try:
                listing = self.query(program, ["list", "counters", "table", "ip", self.table])
                found = kernel_rules.counts(listing)
            except NftError as exc:
                log.debug("kernel path: cannot read the counters of %s: %s", self.table, exc)
            self._counts = (now, found)
            return found

    def resolved(self) -> str:
        """The program's path, or "" when it is off or missing."""
        if not self.program:
            return ""
        return shutil.which(self.program) or ""

    async def start(self) -> None:
        """At the daemon's start: with the kernel path off, remove a table a former run left
        (any `nft` on PATH will do). With it on, the first `sync` replaces it."""
        if self.program:
            return
        program = shutil.which("nft")
        if program:
            try:
                await self.run(program, kernel_rules.removal(self.table))
            except NftError as exc:
                log.info("kernel path off; could not remove table %s: %s", self.table, exc)

    async def sync(self, address: str, ports: Sequence[KernelPort]) -> list[KernelPort]:
        """Make the kernel hold `ports` (none: no table); the ports it serves now (none
        after a fallback)."""
        try:
            return await self._sync(address, ports)
        finally:
            state = self.state()
            if state != self._reported:
                self._reported = state
                for callback in list(self._watchers):
                    callback()

    async def _sync(self, address: str, ports: Sequence[KernelPort]) -> list[KernelPort]:
        if not ports:
            self.fallback = ""  # no port asks for the kernel: nothing falls back (said again if one does)
        program = self.resolved()
        if not program:
            if ports:
                self._fall_back(f"{self.program or 'nft'} is {'off' if not self.program else 'not found'}")
            return []
        if ports and not kernel_rules.ipv4(address):
            self._fall_back(f"the node address {address} is not IPv4 (the table is `ip` only)")
            return []
        localnet: list[str] = []
        bridges: list[str] = []
        if ports:
            on_link, uplinks = self._on_link()
            replicas = kernel_rules.interfaces(ports, on_link, containers_only=True)
            bridges = sorted({*replicas, *self._bridges(on_link, uplinks)})
            if kernel_rules.loopback_clients(address):
                localnet = kernel_rules.interfaces(ports, on_link)
                failed = set_route_localnet(localnet, self.sysctl, self._localnet)
                localnet = [i for i in localnet if i not in failed]
        restore_route_localnet(self._localnet, localnet, self.sysctl)  # no guard for them below
        text = kernel_rules.ruleset(self.table, address, ports, localnet, bridges, self.vips)
        if text == self.applied:
            return self.served
        if text == self._tried and self.applied is not None:
            return []  # failed, and its table was removed: not tried again until the text changes
        try:
            await self._apply(program, text)
        except NftError as exc:
            self._tried = text
            self._fall_back(str(exc))
            await self._remove_quietly(program)
            return []
        self.applied, self._tried = text, None
        self.served = list(ports)
        if self.fallback and ports:
            self.fallback = ""
            log.info("kernel path: table %s applied, %d port(s) in the kernel again", self.table, len(ports))
            self._emit("proxy.kernel_path", f"table {self.table}: {len(ports)} port(s) served by the kernel")
        return self.served

    @property
    def stale(self) -> bool:
        """A text failed and the removal of the table failed too: the kernel may still hold
        the rules before it (DNAT to a replica since withdrawn). The mesh syncs again every
        `rebind_interval` while so (before, nothing tried again until the ports changed)."""
        return self._tried is not None and self.applied is None

    async def remove(self) -> None:
        """Remove the table (leave_on_stop, or tests)."""
        program = self.resolved() or shutil.which("nft") or ""
        if program:
            await self._remove_quietly(program)

    async def _apply(self, program: str, text: str) -> None:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(ATTEMPTS), wait=wait_exponential(multiplier=0.1, max=0.5),
            retry=retry_if_exception(_transient), reraise=True,
        ):  # fmt: skip
            with attempt:
                await self.run(program, text)

    async def _remove_quietly(self, program: str) -> None:
        try:
            await self.run(program, kernel_rules.removal(self.table))
            self.applied, self.served = kernel_rules.removal(self.table), []
            restore_route_localnet(self._localnet, (), self.sysctl)  # the guard went with the table
        except NftError as exc:
            self.applied = None  # unknown: the next sync writes the whole table again
            log.warning("kernel path: cannot remove table %s: %s", self.table, exc)

    def _fall_back(self, why: str) -> None:
        self.served = []
        if why == self.fallback:
            return
        self.fallback = why
        message = f"fast_path: kernel ports served by the userland mesh: {why}"
        log.warning("kernel path: %s", message)
        self._emit("proxy.kernel_fallback", message)

    def _emit(self, kind: str, message: str) -> None:
        if self.events is not None:
            self.events.emit(kind, message)

    def _on_link(self) -> tuple[list[tuple[IPv4Network, str]], set[str]]:
        """The on-link routes and the default routes' interfaces (`/proc/net/route`)."""
        try:
            text = self.routes_file.read_text()
        except OSError as exc:
            log.warning("kernel path: cannot read %s: %s", self.routes_file, exc.strerror or exc)
            return [], set()
        return list(on_link_routes(text)), default_route_interfaces(text)

    def _bridges(self, on_link: Sequence[tuple[IPv4Network, str]], uplinks: Collection[str]) -> list[str]:
        """The Linux bridges with an on-link route, but no default route: the host's
        container networks (module doc)."""
        out = set()
        for _, iface in on_link:
            bridge = self.net_class / iface / "bridge"
            if iface not in uplinks and kernel_rules.interface_name(iface) and bridge.is_dir():
                out.add(iface)
        return sorted(out)
