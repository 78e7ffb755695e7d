"""The contract between the agent and a container engine.

The agent never imports the Docker SDK: it talks to a `Runtime`. Every container
shoal makes carries the labels in `LABELS`, which tie it to a task; that is how an
agent re-adopts its containers after a restart and how nothing is ever orphaned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class LABELS:
    """Label keys on every shoal container."""

    CLUSTER = "io.shoal.cluster"
    NODE = "io.shoal.node"
    SERVICE = "io.shoal.service"
    SLOT = "io.shoal.slot"
    TASK = "io.shoal.task"
    EPOCH = "io.shoal.epoch"
    VERSION = "io.shoal.version"
    UID = "io.shoal.uid"  # the service incarnation (`ServiceRecord.uid`); absent when ""
    VOLUME = "io.shoal.volume"  # on volumes: the volume's name in the spec


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str  # stdout and stderr interleaved, truncated to a few KiB


class EngineError(Exception):
    """A container operation failed; the message says what and why."""


class RuntimeUnavailable(EngineError):
    """The engine cannot be reached (dockerd down, socket missing)."""


class ImageError(EngineError):
    """The image is missing and could not be pulled."""


@dataclass(frozen=True)
class PortBinding:
    container_port: int
    protocol: str = "tcp"  # the transport: "tcp" (http is tcp underneath)


@dataclass(frozen=True)
class Mount:
    """A host file or directory bind-mounted into the container (secrets, configs)."""

    source: str  # absolute host path
    target: str  # absolute path in the container
    read_only: bool = True


@dataclass(frozen=True)
class NamedVolume:
    """A named engine volume mounted into the container (issue 13); created, with `labels`,
    by the engine when the container is, if it does not exist yet."""

    name: str
    target: str
    read_only: bool = False
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerSpec:
    """What to run. `ports` are published on `publish_address` at random host ports."""

    name: str
    image: str
    labels: dict[str, str]
    command: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[PortBinding, ...] = ()
    publish_address: str = "127.0.0.1"
    cpu: float | None = None  # cores -> nano_cpus
    memory: int | None = None  # bytes -> mem_limit
    image_healthcheck: bool = True  # False: the image's HEALTHCHECK is turned off (the spec has a check)
    log_driver: str = ""  # "": the engine's default; else with `log_options` (max-size, max-file)
    log_options: dict[str, str] = field(default_factory=dict)

    mounts: tuple[Mount, ...] = ()  # bind mounts (node.agent.secretfiles)
    volumes: tuple[NamedVolume, ...] = ()  # named volumes (node.agent.volumes)

    # issue 13, names (node.proxy.vips): the node's name server and the stack's search domain
    dns: tuple[str, ...] = ()  # name servers of the container; (): the engine's default
    dns_search: tuple[str, ...] = ()

    # issue 13 item 2 (decision 70): the process; None: the image's (node.runtime.docker_process)
    entrypoint: tuple[str, ...] | None = None
    user: str | None = None
    working_dir: str | None = None
    read_only: bool = False

    def __repr__(self) -> str:  # env may hold opened secret_env values: never in a log line
        return f"ContainerSpec({self.name}, {self.image})"


@dataclass(frozen=True)
class DockerHealth:
    """Docker's verdict on a container whose image has a HEALTHCHECK (State.Health)."""

    status: str  # "starting", "healthy", "unhealthy"
    failing_streak: int = 0  # consecutive failed checks
    retries: int = 3  # the HEALTHCHECK's retries (failures before unhealthy)
    message: str = ""  # output of the last check
    at: str = ""  # when the last check ended (RFC 3339)


ENDED = frozenset({"created", "exited", "dead"})  # docker states of a container not (yet) live


@dataclass(frozen=True)
class Container:
    """What the engine reports of one container."""

    id: str
    name: str
    labels: dict[str, str]
    state: str  # docker's: created, running, paused, restarting, removing, exited, dead
    exit_code: int = 0
    host_ports: dict[int, int] = field(default_factory=dict)  # container port -> host port
    started_at: str = ""
    finished_at: str = ""  # when it last exited (RFC 3339; "" while running or never run)
    error: str = ""
    ip: str = ""  # address on its Docker network, reachable from this host ("" when none)
    docker_health: DockerHealth | None = None  # only for images with a HEALTHCHECK

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def live(self) -> bool:
        """Not ended: running, or paused or restarting (live, but answering nobody). Only
        an ended one (exited, dead, never started) has an exit for its restart policy."""
        return self.state not in ENDED


def engine_time(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds ("2026-12-06T03:47:12.123456789Z") -> epoch s
    (0.0 for "" and Docker's zero time)."""
    if not text or text.startswith("0001-"):
        return 0.0
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    digits = "".join(ch for ch in frac if ch.isdigit())[:9]
    return seconds + (int(digits) / 10 ** len(digits) if digits else 0.0)


class Runtime(Protocol):
    async def ping(self) -> None:
        """Raise RuntimeUnavailable when the engine cannot be reached."""

    async def engine_started(self) -> float:
        """When the engine's process started (epoch seconds; 0.0 when it cannot be told).
        An exit 0 before it was the engine's shutdown, not the task's own end."""

    async def list(self, labels: dict[str, str]) -> list[Container]:
        """All containers (running or not) carrying every one of `labels`."""

    async def run(self, spec: ContainerSpec) -> Container:
        """Pull the image if missing, create and start the container; return it running."""

    async def has_image(self, image: str) -> bool:
        """Is `image` present on this engine (no pull needed)?"""

    async def pull(
        self,
        image: str,
        timeout: float,
        progress: Callable[[str], None],
        auth: tuple[str, str] | None = None,
    ) -> None:
        """Pull `image` (apart from every other call: its own threads), calling `progress`
        with a short text now and then (maybe from another thread). Raise ImageError when it
        cannot be pulled or takes longer than `timeout` seconds. `auth`: (user, password) for
        the image's registry (issue 13: a service's `image_pull_secret`)."""

    async def stop(self, container_id: str, timeout: float = 10.0, remove: bool = True) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; then remove it, unless `remove` is
        false (kept, exited, for its logs: decision 71). Missing is fine."""

    async def rename(self, container_id: str, name: str) -> None:
        """Give the container another name (an exited one kept for its logs frees its
        task's name for the task's next container). EngineError when the name is taken."""

    async def remove(self, container_id: str) -> None:
        """Force-remove; a container that is already gone is fine."""

    async def exec(self, container_id: str, command: Sequence[str], timeout: float) -> ExecResult:
        """Run `command` (argv, no shell) in the running container; its exit code and
        output. Raise TimeoutError after `timeout` seconds (the process may go on),
        EngineError when it cannot be run (container gone or not running)."""

    async def remove_volume(self, name: str) -> None:
        """Remove a named volume and its data; a missing one is fine. EngineError when a
        container still uses it."""

    async def close(self) -> None: ...
