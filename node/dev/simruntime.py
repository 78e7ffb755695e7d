"""A simulated container engine: tasks are recorded as running, nothing runs.

Why: the scheduler and the leader must be tested at the scale they promise (5,000
nodes, 100,000 tasks) on one machine. The simulated nodes of `node.dev.simcluster` (registry
entries on one lease, an agent reporting status in etcd) keep their containers here,
so everything the control plane does is real and only Docker is left out.

It is labelled as a simulation everywhere it shows: container ids start with `sim-`,
every container carries the label `io.shoal.simulated=true` and the engine reports
itself as `sim://` (`url`). A simulated replica publishes no host port, so it serves
no traffic: the proxy has nothing to reach.

Cheap by design: one dict entry per container, no call log (unlike `FakeRuntime`,
which records every call for unit tests), no I/O, every call O(1) but `list`.
"""

from __future__ import annotations

import builtins
import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from node.runtime.base import Container, ContainerSpec, EngineError, ExecResult

SIMULATED = "io.shoal.simulated"


class SimRuntime:
    url = "sim://"

    def __init__(self, node: str = "") -> None:
        self.node = node
        self.containers: dict[str, Container] = {}
        self._names: set[str] = set()
        self._ids = itertools.count(1)

    async def ping(self) -> None:
        return None

    async def engine_started(self) -> float:
        return 0.0  # not known: exits are judged by themselves

    async def run(self, spec: ContainerSpec) -> Container:
        if spec.name in self._names:
            raise EngineError(f"a container named {spec.name} already exists (simulated engine)")
        container = Container(
            id=f"sim-{self.node}-{next(self._ids):012d}",
            name=spec.name,
            labels={**spec.labels, SIMULATED: "true"},
            state="running",
            started_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        )
        self.containers[container.id] = container
        self._names.add(spec.name)
        return container

    async def has_image(self, image: str) -> bool:
        return True  # a simulated engine has every image: nothing is pulled

    async def pull(
        self,
        image: str,
        timeout: float,
        progress: Callable[[str], None],
        auth: tuple[str, str] | None = None,
    ) -> None:
        return None

    async def stop(self, container_id: str, timeout: float = 10.0, remove: bool = True) -> None:
        await self.remove(container_id)  # a simulated replica keeps no logs: never kept

    async def rename(self, container_id: str, name: str) -> None:
        return None  # nothing is kept (`stop` removes), so no name is ever freed

    async def remove(self, container_id: str) -> None:
        container = self.containers.pop(container_id, None)
        if container is not None:
            self._names.discard(container.name)

    async def remove_volume(self, name: str) -> None:
        return None  # a simulated replica keeps no data

    async def list(self, labels: dict[str, str]) -> builtins.list[Container]:
        wanted = labels.items()
        return [c for c in self.containers.values() if wanted <= c.labels.items()]

    async def exec(self, container_id: str, command: Sequence[str], timeout: float) -> ExecResult:
        """An exec health check of a simulated replica passes (nothing runs to fail it)."""
        if container_id not in self.containers:
            raise EngineError(f"no container {container_id} (simulated engine)")
        return ExecResult(0, "")

    async def close(self) -> None:
        return None
