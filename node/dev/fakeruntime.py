"""An in-memory `Runtime` for unit tests and simulations: no Docker, no I/O.

It behaves like `DockerRuntime` where the agent can tell: containers get ids and
random-looking host ports (from a counter), start "running", keep their labels, and
`list` filters by every label. A name already in use raises `EngineError`, as a 409
from Docker does; `stop` and `remove` of a missing container are fine; `stop(remove=False)` leaves it
exited (SIGKILLed: 137), `rename` refuses a name in use.

Test hooks: `crash(id, exit_code)` makes a container exit, `fail_next_run(error)` makes
the next `run` raise, `unavailable` makes every call raise `RuntimeUnavailable`, and
`calls` records every operation as a tuple, e.g. `("run", "web-1")`. `exec` answers exit
code 0 unless `set_exec(id, result)` says otherwise (an `ExecResult`, or an exception
such as `TimeoutError` to raise); `set_docker_health(id, health)` sets what Docker's own
HEALTHCHECK would report; `specs` keeps the `ContainerSpec` each container was made from.
Images: every image is present unless listed in `missing_images`; `pull` of a missing one
waits until `release_pull(image)` (or `release_pull(image, error)` to fail it), then makes
it present.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from node.runtime.base import (
    Container,
    ContainerSpec,
    DockerHealth,
    EngineError,
    ExecResult,
    ImageError,
    RuntimeUnavailable,
)

FIRST_HOST_PORT = 32768
T0 = datetime(2024, 1, 1, tzinfo=UTC)


class FakeRuntime:
    def __init__(self) -> None:
        self.containers: dict[str, Container] = {}
        self.specs: dict[str, ContainerSpec] = {}  # container id -> what it was made from
        self._exec: dict[str, ExecResult | BaseException] = {}
        self.calls: builtins.list[tuple[str, ...]] = []
        self.unavailable = False
        self._failures: builtins.list[Exception] = []
        self._ids = itertools.count(1)
        self._ports = itertools.count(FIRST_HOST_PORT)
        self._clock = itertools.count(1)
        self.closed = False
        self.missing_images: set[str] = set()
        self._pull_gates: dict[str, asyncio.Future[None]] = {}
        self.volumes: set[str] = set()  # named volumes made by `run`, until `remove_volume`
        self.pull_auth: dict[str, tuple[str, str] | None] = {}  # image -> the credentials of its last pull
        self.engine_since = 0.0  # what `engine_started` says (0.0: not known)

    # -- test hooks -----------------------------------------------------------------------

    def crash(self, container_id: str, exit_code: int | None = 1) -> None:
        """The container's process exits with `exit_code` (None: the one it had); its host
        ports are released; it finished at the fake clock's next tick."""
        c = self.containers[container_id]
        code = c.exit_code if exit_code is None else exit_code
        finished = (T0 + timedelta(seconds=next(self._clock))).isoformat().replace("+00:00", "Z")
        self.containers[container_id] = replace(
            c, state="exited", exit_code=code, host_ports={}, finished_at=finished
        )

    def engine_restarted(self) -> None:
        """The engine's process started anew, at the fake clock's next tick: what exited
        before (`crash`) exited before it."""
        self.engine_since = (T0 + timedelta(seconds=next(self._clock))).timestamp()

    def fail_next_run(self, error: Exception) -> None:
        """The next `run` raises `error` (queued: call twice to fail two runs)."""
        self._failures.append(error)

    def set_exec(self, container_id: str, result: ExecResult | BaseException) -> None:
        """What `exec` in this container answers from now on (an exception is raised)."""
        self._exec[container_id] = result

    def set_docker_health(self, container_id: str, health: DockerHealth | None) -> None:
        self.containers[container_id] = replace(self.containers[container_id], docker_health=health)

    def release_pull(self, image: str, error: str = "") -> None:
        """Let the pull of `image` finish (fail with ImageError(error) when `error` is given)."""
        gate = self._pull_gates.setdefault(image, asyncio.get_running_loop().create_future())
        if not gate.done():
            if error:
                gate.set_exception(ImageError(error))
            else:
                gate.set_result(None)

    def running(self) -> builtins.list[Container]:
        return [c for c in self.containers.values() if c.running]

    # -- the Runtime protocol ---------------------------------------------------------

    async def ping(self) -> None:
        self._record("ping")

    async def engine_started(self) -> float:
        return self.engine_since

    async def run(self, spec: ContainerSpec) -> Container:
        self._record("run", spec.name)
        if self._failures:
            raise self._failures.pop(0)
        if any(c.name == spec.name for c in self.containers.values()):
            raise EngineError(f"a container named {spec.name} already exists")
        n = next(self._ids)
        container = Container(
            id=f"fake{n:060d}",
            name=spec.name,
            labels=dict(spec.labels),
            state="running",
            host_ports={p.container_port: next(self._ports) for p in spec.ports},
            started_at=(T0 + timedelta(seconds=next(self._clock))).isoformat().replace("+00:00", "Z"),
            ip=f"10.0.{n // 250}.{n % 250 + 2}",
        )
        self.containers[container.id] = container
        self.specs[container.id] = spec
        self.volumes.update(v.name for v in spec.volumes)
        return container

    async def has_image(self, image: str) -> bool:
        self._record("has_image", image)
        return image not in self.missing_images

    async def pull(
        self,
        image: str,
        timeout: float,
        progress: Callable[[str], None],
        auth: tuple[str, str] | None = None,
    ) -> None:
        self._record("pull", image)
        self.pull_auth[image] = auth
        progress("0.0 of 1.0 MB")
        gate = self._pull_gates.setdefault(image, asyncio.get_running_loop().create_future())
        try:
            await gate
        finally:
            self._pull_gates.pop(image, None)
        self.missing_images.discard(image)

    async def stop(self, container_id: str, timeout: float = 10.0, remove: bool = True) -> None:
        self._record("stop", container_id)
        if remove:
            self.containers.pop(container_id, None)
        elif container_id in self.containers:
            self.crash(container_id, 137 if self.containers[container_id].running else None)

    async def rename(self, container_id: str, name: str) -> None:
        self._record("rename", container_id, name)
        if any(c.name == name for c in self.containers.values()):
            raise EngineError(f"a container named {name} already exists")
        if container_id in self.containers:
            self.containers[container_id] = replace(self.containers[container_id], name=name)

    async def remove(self, container_id: str) -> None:
        self._record("remove", container_id)
        self.containers.pop(container_id, None)

    async def remove_volume(self, name: str) -> None:
        self._record("remove_volume", name)
        users = [
            c.name for c in self.containers.values() if name in {v.name for v in self.specs[c.id].volumes}
        ]
        if users:
            raise EngineError(f"cannot remove volume {name}: in use by {', '.join(users)}")
        self.volumes.discard(name)

    async def exec(self, container_id: str, command: Sequence[str], timeout: float) -> ExecResult:
        self._record("exec", container_id, *command)
        c = self.containers.get(container_id)
        if c is None or not c.running:
            raise EngineError(f"cannot exec in container {container_id[:12]}: it is not running")
        result = self._exec.get(container_id, ExecResult(0, ""))
        if isinstance(result, BaseException):
            raise result
        return result

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
