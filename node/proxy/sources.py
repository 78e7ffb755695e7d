"""Who is asking: a source address -> the service whose container has it (decision 64).

The name server and the VIP listeners see the source address of every query and
connection. A container's packet to the name server or a VIP goes up its default route
to the host unchanged (both are local addresses of the host: no NAT), so the source is
the container's address on its Docker network. `SourceMap` keeps that address -> the
container's service, from the engine's list of this cluster's containers (their
`io.shoal.service` label): with `shoal dev` (one engine for every node) it sees every
node's containers, which is right, since the one node serving a VIP serves them all; on
separate hosts it sees this host's, the only ones whose packets come here.

`asker(address)`:
- a container of this cluster: its service;
- the host itself (loopback, the VIP range, this node's address): None, sees everything;
- anything else (a container shoal did not start, or one started since the last
  refresh): `OUTSIDER`, which is on the cluster network only.
`by_task` (task id -> container address, for the kernel path of decision 74, which
DNATs only to replicas running in this host's engine) comes from the same list;
`version` moves when either map changes, and `on_change` callbacks are called then,
whoever asked for the list (the name server, a VIP listener's gate, the names loop).

A miss asks for a refresh (`refresh()`: at most one list in flight, at most every
`MIN_REFRESH` s, given up after `LIST_TIMEOUT` s); the name server waits for it before
it answers, so a new container's first lookup knows it. The agent's starts and stops
also refresh the map through the Names loop (task and endpoint changes), in the
background, at the same bound.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable

from node.proxy.names import OUTSIDER
from node.runtime.base import LABELS, Container, Runtime

log = logging.getLogger(__name__)

MIN_REFRESH = 0.2  # s between two lists of the engine's containers
LIST_TIMEOUT = 2.0  # s: a list that takes longer is given up (the map is kept)
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class SourceMap:
    def __init__(
        self,
        list_containers: Callable[[], Awaitable[list[Container]]],
        host_nets: tuple[ipaddress.IPv4Network, ...],
        host_addresses: tuple[str, ...] = (),
    ) -> None:
        self.list_containers = list_containers
        self.host_nets = host_nets
        self.host_addresses = frozenset(host_addresses)
        self.by_address: dict[str, str] = {}
        self.by_task: dict[str, str] = {}  # task id -> its running container's address (decision 74)
        self.version = 0  # bumped when either map changes
        self.on_change: list[Callable[[], None]] = []  # called after a list that changed a map
        self.refreshed = 0.0
        self.refreshes = 0
        self._inflight: asyncio.Task[None] | None = None

    @classmethod
    def of_runtime(
        cls,
        runtime: Runtime,
        cluster: str,
        host_nets: tuple[ipaddress.IPv4Network, ...],
        host_addresses: tuple[str, ...] = (),
    ) -> SourceMap:
        async def containers() -> list[Container]:
            return await runtime.list({LABELS.CLUSTER: cluster})

        return cls(containers, (LOOPBACK, *host_nets), host_addresses)

    def host(self, address: str) -> bool:
        if address in self.host_addresses:
            return True
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.host_nets)

    def asker(self, address: str) -> str | None:
        """The service of the container at `address`; None: the host; OUTSIDER: unknown."""
        found = self.by_address.get(address)
        if found is not None:
            return found
        return None if self.host(address) else OUTSIDER

    def known(self, address: str) -> bool:
        return address in self.by_address or self.host(address)

    async def refresh(self) -> None:
        """List the engine's containers again (joined when a list is in flight; skipped
        within MIN_REFRESH of the last one). An engine that does not answer keeps the map."""
        if self._inflight is None or self._inflight.done():
            if time.monotonic() - self.refreshed < MIN_REFRESH:
                return
            self._inflight = asyncio.get_running_loop().create_task(self._list())
        await asyncio.shield(self._inflight)

    async def refresh_after(self) -> None:
        """A list that starts after this call (one in flight may have begun before the
        container of interest did): at the end of the MIN_REFRESH window, not skipped.
        For the names loop, whose kernel rules must not miss a container started within
        the window of the last list (decision 74); the name server keeps `refresh`."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
        wait = MIN_REFRESH - (time.monotonic() - self.refreshed)
        if wait > 0:
            await asyncio.sleep(wait)
        await self.refresh()

    async def _list(self) -> None:
        try:
            async with asyncio.timeout(LIST_TIMEOUT):
                found = await self.list_containers()
        except Exception as exc:  # the engine away or slow: keep what is known, ask again later
            log.debug("names: cannot list containers for source addresses: %s", exc)
            return
        finally:
            self.refreshed = time.monotonic()
        self.refreshes += 1
        live = [c for c in found if c.ip and c.running]
        by_address = {c.ip: c.labels[LABELS.SERVICE] for c in live if LABELS.SERVICE in c.labels}
        by_task = {c.labels[LABELS.TASK]: c.ip for c in live if LABELS.TASK in c.labels}
        if (by_address, by_task) != (self.by_address, self.by_task):
            self.by_address, self.by_task = by_address, by_task
            self.version += 1
            for notify in self.on_change:
                notify()
