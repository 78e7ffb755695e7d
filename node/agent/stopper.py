"""Taking a replica out: withdraw it from every proxy, let its traffic drain, stop it.

Each stop runs as a task of its own, so the agent's passes go on meanwhile, and a
container is stopped once: a later pass that still lists it while its stop is under way
does not start another (`container id in stopper`). A withdrawal that does not reach
etcd within `withdraw_wait` (etcd away) leaves the container running for a later pass to
try again: it is never stopped while it may still be in a rotation, unless it was never
routable (not running) or `must_withdraw` is false (an unhealthy replica, failing
anyway: it is replaced during an outage too; its withdrawal stays queued).

How long to drain and how long Docker waits between SIGTERM and SIGKILL come from the
spec of the container's version (`update.drain`, `stop_grace`), else from the node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from node.agent.containers import SpecNotFound, SpecSource
from node.agent.publisher import Publisher
from node.runtime.base import LABELS, Container, EngineError, Runtime
from node.store import StoreError
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)
WITHDRAW_WAIT = 5.0  # s: how long a stop waits for its withdrawal to reach etcd before retrying later


class Stopper:
    def __init__(
        self,
        runtime: Runtime,
        publisher: Publisher,
        specs: SpecSource,
        events: EventLog,
        stopped: Callable[[], None],
        drain: float,
        stop_timeout: float,
    ) -> None:
        self.runtime, self.publisher, self.specs, self.events = runtime, publisher, specs, events
        self.stopped = stopped  # called after each stop (the agent runs a pass: a task may restart)
        self.drain = drain  # s out of rotation before the stop, unless the spec says
        self.stop_timeout = stop_timeout  # s from SIGTERM to SIGKILL, unless the spec says
        self.withdraw_wait = WITHDRAW_WAIT
        self._tasks: dict[str, asyncio.Task[None]] = {}  # container id -> its drain and stop

    def __contains__(self, container_id: object) -> bool:
        return container_id in self._tasks

    def begin(
        self, c: Container, drained: float = 0.0, must_withdraw: bool = True, keep: bool = False
    ) -> None:
        """Withdraw, drain and stop `c` in the background (once: not while it is under way).
        `drained`: seconds it has been out of rotation already; `keep`: stopped and left,
        exited, for its logs (decision 71), else removed too."""
        if c.id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(
            self._stop(c, drained, must_withdraw, keep), name=f"stop-{c.name}"
        )
        self._tasks[c.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(c.id, None))

    async def wait(self) -> None:
        """Until every stop under way (and any it led to) has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def cancel(self) -> None:
        """Abandon the stops under way (a restarted daemon finds the containers and stops them then)."""
        for task in list(self._tasks.values()):
            task.cancel()

    async def _stop(self, c: Container, drained: float, must_withdraw: bool, keep: bool) -> None:
        service, task_id = c.labels.get(LABELS.SERVICE, ""), c.labels.get(LABELS.TASK, "")
        try:
            wait = self.withdraw_wait if must_withdraw else min(1.0, self.withdraw_wait)  # etcd up: ms
            await self.publisher.withdraw(service, task_id, timeout=wait)
        except StoreError as exc:
            if c.running and must_withdraw:
                log.warning("%s not stopped yet: its endpoint could not be withdrawn: %s", c.name, exc)
                return
        drain, grace = await self._times(service, c)
        if c.running and drain - drained > 0:  # `drained`: out of rotation that long already
            await asyncio.sleep(drain - drained)  # proxies saw the withdrawal; in-flight requests finish
        try:
            await self.runtime.stop(c.id, grace, remove=not keep)
        except EngineError as exc:
            log.warning("%s: stop failed, retried next pass: %s", c.name, exc)
            return
        self.stopped()
        done = "stopped (kept for its logs)" if keep else "stopped and removed"
        self.events.emit("task.stopped", f"{c.name} {done}", service, task_id)

    async def _times(self, service: str, c: Container) -> tuple[float, float]:
        """(drain, grace): the service's `update.drain` and `stop_grace` when its spec (of
        the container's version) says them, else the node's `drain` and `stop_timeout`."""
        try:
            version, uid = int(c.labels.get(LABELS.VERSION, "0")), c.labels.get(LABELS.UID, "")
            spec = await self.specs.spec(service, version, uid)
        except (SpecNotFound, StoreError, ValueError):
            return self.drain, self.stop_timeout
        drain = spec.update.drain if spec.update else None
        return (
            drain if drain is not None else self.drain,
            spec.stop_grace if spec.stop_grace is not None else self.stop_timeout,
        )
