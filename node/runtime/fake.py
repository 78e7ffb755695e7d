"""An in-memory `Runtime` for unit tests and simulations: no Docker, no I/O.

It behaves like `DockerRuntime` where the agent can tell: containers get ids and
random-looking host ports (from a counter), start "running", keep their labels, and
`list` filters by every label. A name already in use raises `RuntimeError_`, as a 409
from Docker does; `stop` and `remove` of a missing container are fine.

Test hooks: `crash(id, exit_code)` makes a container exit, `fail_next_run(error)` makes
the next `run` raise, `unavailable` makes every call raise `RuntimeUnavailable`, and
`calls` records every operation as a tuple, e.g. `("run", "web-1")`.
"""

from __future__ import annotations

import builtins
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from node.runtime.base import Container, ContainerSpec, RuntimeError_, RuntimeUnavailable

FIRST_HOST_PORT = 32768
T0 = datetime(2024, 1, 1, tzinfo=UTC)


class FakeRuntime:
    def __init__(self) -> None:
        self.containers: dict[str, Container] = {}
        self.calls: builtins.list[tuple[str, ...]] = []
        self.unavailable = False
        self._failures: builtins.list[Exception] = []
        self._ids = itertools.count(1)
        self._ports = itertools.count(FIRST_HOST_PORT)
        self._clock = itertools.count(1)
        self.closed = False

    # -- test hooks -----------------------------------------------------------------------

    def crash(self, container_id: str, exit_code: int = 1) -> None:
        """The container's process exits with `exit_code`; its host ports are released."""
        c = self.containers[container_id]
        self.containers[container_id] = replace(c, state="exited", exit_code=exit_code, host_ports={})

    def fail_next_run(self, error: Exception) -> None:
        """The next `run` raises `error` (queued: call twice to fail two runs)."""
        self._failures.append(error)

    def running(self) -> builtins.list[Container]:
        return [c for c in self.containers.values() if c.running]

    # -- the Runtime protocol ---------------------------------------------------------

    async def ping(self) -> None:
        self._record("ping")

    async def run(self, spec: ContainerSpec) -> Container:
        self._record("run", spec.name)
        if self._failures:
            raise self._failures.pop(0)
        if any(c.name == spec.name for c in self.containers.values()):
            raise RuntimeError_(f"a container named {spec.name} already exists")
        container = Container(
            id=f"fake{next(self._ids):060d}",
            name=spec.name,
            labels=dict(spec.labels),
            state="running",
            host_ports={p.container_port: next(self._ports) for p in spec.ports},
            started_at=(T0 + timedelta(seconds=next(self._clock))).isoformat().replace("+00:00", "Z"),
        )
        self.containers[container.id] = container
        return container

    async def stop(self, container_id: str, timeout: float = 10.0) -> None:
        self._record("stop", container_id)
        self.containers.pop(container_id, None)

    async def remove(self, container_id: str) -> None:
        self._record("remove", container_id)
        self.containers.pop(container_id, None)

    async def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True

    async def list(self, labels: dict[str, str]) -> builtins.list[Container]:
        self._record("list", *(f"{k}={v}" for k, v in sorted(labels.items())))
        return [c for c in self.containers.values() if labels.items() <= c.labels.items()]

    def _record(self, *call: str) -> None:
        self.calls.append(call)
        if self.unavailable:
            raise RuntimeUnavailable("the fake engine is unavailable (FakeRuntime.unavailable is set)")
