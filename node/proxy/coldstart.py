"""Requests held while an autoscaled service is scaled to zero (issue 15, item 2).

A service with `autoscale.min: 0` may have no replica. A request (HTTP) or connection
(TCP) that reaches any node's proxy for it then is not refused: the engine holds it
(`Hold.wait`) until the mesh routes a replica of it, and sends it on; after the
service's `autoscale.cold_start_timeout` it gets the usual answer for no replica (503,
or the connection closed). The first held request tells the node's load reporter
(`on_hold`), which publishes its load record at once, so the leader's autoscaler sees the
request within its next pass instead of the next period.

Only services whose spec has `min: 0` hold; any other service with no replica is refused
at once, as before. VIP listeners do not hold.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from node.model.domain import ServiceRecord
from node.proxy.balancer import Balancer


class ColdStart:
    """The mesh's one: which services hold, and the signal that the backends changed."""

    def __init__(self) -> None:
        self.timeouts: dict[str, float] = {}  # service -> s a request is held (services with min 0)
        self.held: Counter[str] = Counter()  # requests and connections held now, per service
        self.on_hold: list[Callable[[str], None]] = []  # told when one starts waiting
        self._changed = asyncio.Event()
        self._later: set[asyncio.Task[None]] = set()  # retries at a just started replica

    def update(self, records: Iterable[ServiceRecord]) -> None:
        self.timeouts = {
            r.name: r.spec.autoscale.cold_start_timeout
            for r in records
            if r.spec.autoscale is not None and r.spec.autoscale.min == 0
        }

    def changed(self) -> None:
        """The mesh set new backends: every waiter looks again."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def hold(self, service: str, balancer: Balancer) -> Hold:
        return Hold(self, service, balancer)


class Hold:
    """One listener's view (`node.proxy.http_types.Hold`)."""

    def __init__(self, cold: ColdStart, service: str, balancer: Balancer) -> None:
        self.cold, self.service, self.balancer = cold, service, balancer

    def timeout(self) -> float:
        return self.cold.timeouts.get(self.service, 0.0)

    def later(self, job: Coroutine[Any, Any, None]) -> None:
        """Run `job` (a retry of a held request) as a task kept until it ends."""
        task = asyncio.get_running_loop().create_task(job)
        self.cold._later.add(task)
        task.add_done_callback(self.cold._later.discard)

    def now(self) -> bool:
        """Whether a request that found no replica should wait for one."""
        return self.service in self.cold.timeouts and not len(self.balancer)

    async def wait(self) -> bool:
        """Until a replica is routable (True) or the service's timeout passed (False)."""
        cold, service = self.cold, self.service
        cold.held[service] += 1
        for tell in cold.on_hold:
            tell(service)
        try:
            async with asyncio.timeout(cold.timeouts.get(service, 0.0)):
                while not len(self.balancer):
                    await cold._changed.wait()
            return True
        except TimeoutError:
            return False
        finally:
            cold.held[service] -= 1
            if cold.held[service] <= 0:
                del cold.held[service]
