"""Runs the health checks of this node's replicas: the async shell of `node.agent.health`.

The agent asks for a replica's `verdict` on every pass (which also starts tracking a
new replica, or a changed check); `retain` drops the replicas that are gone. `run`
launches each due probe as its own task, so a probe that hangs until its timeout never
delays another replica's schedule, and feeds each result to the pure state machine.
When a verdict changes (health, message, failure count, replace) it calls `on_change`,
which wakes an agent pass: a replica is withdrawn from (or published to) `endpoints/`
within milliseconds of the probe that decided it.

A replica without a check in its spec is not probed here; its verdict comes from
Docker's own HEALTHCHECK when the image has one (read by `Runtime.list`), else it is
routable once running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from node.agent.health import (
    Check,
    HealthState,
    NotChecked,
    Verdict,
    begin,
    docker_verdict,
    needs_replacing,
    not_checked,
    observe,
)
from node.runtime.base import Container

log = logging.getLogger(__name__)


class Probe(Protocol):
    async def probe(self, check: Check, c: Container) -> tuple[bool, str]: ...


@dataclass
class _Tracked:
    container: Container
    check: Check
    state: HealthState
    at: float = 0.0  # wall clock of the last result
    probing: bool = False


class HealthMonitor:
    def __init__(
        self,
        prober: Probe,
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.prober = prober
        self.on_change = on_change
        self.clock = clock
        self.wall = wall
        self._tracked: dict[str, _Tracked] = {}  # container id ->
        self._kick = asyncio.Event()
        self._probes: set[asyncio.Task[None]] = set()

    def verdict(self, c: Container, check: Check | None) -> Verdict:
        """Where running replica `c` stands; starts checking it (at once) if it is new."""
        if check is None:
            self._tracked.pop(c.id, None)
            return docker_verdict(c.docker_health)
        t = self._tracked.get(c.id)
        if t is None or t.check != check:
            t = _Tracked(c, check, begin(self.clock()))
            self._tracked[c.id] = t
            self._kick.set()
        else:
            t.container = c  # the latest view: ports and address
        return self._verdict(t)

    def unhealthy_for(self, container_id: str) -> float:
        """Seconds since the replica turned unhealthy (withdrawn since); 0 if it is not."""
        t = self._tracked.get(container_id)
        if t is None or t.state.health != "unhealthy":
            return 0.0
        return max(0.0, self.clock() - t.state.changed_at)

    def retain(self, container_ids: Iterable[str]) -> None:
        """Stop checking every replica not in `container_ids`."""
        keep = set(container_ids)
        for cid in [cid for cid in self._tracked if cid not in keep]:
            del self._tracked[cid]

    def forget(self, container_id: str) -> None:
        self._tracked.pop(container_id, None)

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    async def run(self) -> None:
        try:
            while True:
                self._kick.clear()
                self._launch_due()
                wait = self._next_due() - self.clock()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._kick.wait()
        finally:
            for task in list(self._probes):
                task.cancel()

    async def probe_due(self) -> None:
        """Run the probes that are due now and wait for them (tests drive the clock)."""
        self._launch_due()
        while self._probes:
            await asyncio.gather(*list(self._probes))

    def _next_due(self) -> float:
        idle = [t.state.next_at for t in self._tracked.values() if not t.probing]
        return min(idle, default=self.clock() + 1.0)

    def _launch_due(self) -> None:
        now = self.clock()
        for t in list(self._tracked.values()):
            if not t.probing and t.state.next_at <= now:
                t.probing = True
                task = asyncio.get_running_loop().create_task(
                    self._probe(t), name=f"probe-{t.container.name}"
                )
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)

    async def _probe(self, t: _Tracked) -> None:
        unknown = ""
        try:
            ok, message = await self.prober.probe(t.check, t.container)
        except NotChecked as exc:  # the engine did not answer: no result, nothing counts
            ok, message, unknown = False, str(exc), str(exc)
        except Exception as exc:  # a bug in a probe must not stop the checking
            log.exception("health probe of %s failed", t.container.name)
            ok, message = False, f"probe failed: {exc}"
        finally:
            t.probing = False
        if self._tracked.get(t.container.id) is not t:
            return  # forgotten (gone, replaced, check changed) while it ran
        before = self._verdict(t)
        if unknown:
            t.state = not_checked(t.state, t.check, unknown, self.clock())
        else:
            t.state = observe(t.state, t.check, ok, message, self.clock())
        t.at = self.wall()
        after = self._verdict(t)
        if (before.health, before.message, before.failures, before.replace) != (
            after.health,
            after.message,
            after.failures,
            after.replace,
        ):
            self.on_change()
        self._kick.set()

    def _verdict(self, t: _Tracked) -> Verdict:
        s = t.state
        return Verdict(s.health, s.message, s.failures, t.at, needs_replacing(s, t.check))
