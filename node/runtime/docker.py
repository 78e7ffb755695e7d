"""Docker behind shoal's `Runtime` protocol: the one module that talks to dockerd.

Why it exists: the agent must not know the Docker SDK, and the SDK blocks. Every SDK call
runs here in a small thread pool of this runtime's own, so the event loop never waits
on the engine's socket.

What it guarantees:
- Errors follow `node.runtime.base`: an engine that cannot be reached (socket missing,
  dockerd down or hung) is `RuntimeUnavailable`; an image that is missing and cannot be
  pulled is `ImageError`; anything else Docker refuses (a name already taken, a command
  that cannot start) is `EngineError` with Docker's own explanation.
- `run` leaves no half-made container behind: one that was created but could not start
  is removed before the error is raised. The `Container` it returns carries the host
  ports Docker really chose. Restart policy is "no": restarts are shoal's decision.
- `list` costs one list call (~8 ms for 50 containers here) plus one inspect per
  container that may have changed since it was last seen (`node.runtime.docker_seen`):
  one not yet known running (for its start time), one whose image has a HEALTHCHECK
  (for Docker's verdict), one newly exited (for its exit code, error and finish time).
  An exited container is inspected once, not at every pass: kept ones (decision 71)
  cost nothing after. Inspecting every container costs ~90 ms for 50.
- `exec` (health checks) runs in a pool of its own and reads the exec's output with a
  deadline, so a check that hangs costs one exec thread for at most its timeout and
  never delays a start or a stop. Create options (HEALTHCHECK off, the process): `docker_process`;
  the answers read into `Container` and an exec's output into text (pure): `docker_records`.
- `pull` runs in threads and on a client of their own (`node.runtime.docker_pull`), so a
  slow pull holds up no list, start or stop; `ping` too, bounded by PING_TIMEOUT, so a
  hung engine is a failed ping within seconds (`node.agent.engine` decides on outages).
- The client is made on first use: a runtime can be built while dockerd is down; calls
  raise `RuntimeUnavailable` until it answers.

A cancelled call still finishes in its thread, so a container may be created after its
caller gave up; its labels let the agent's reconcile find it and adopt or stop it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.utils import parse_repository_tag
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

from node.runtime.base import (
    Container,
    ContainerSpec,
    EngineError,
    ExecResult,
    ImageError,
    RuntimeUnavailable,
)
from node.runtime.docker_process import create_options
from node.runtime.docker_pull import pull_image
from node.runtime.docker_records import demux, from_inspect
from node.runtime.docker_seen import Seen
from node.runtime.engine_start import engine_started

T = TypeVar("T")
DEFAULT_URL = "unix:///var/run/docker.sock"
PORTS_DEADLINE = 2.0  # seconds to wait for a started container's host ports to show
EXEC_WORKERS = 4  # threads for exec health checks (each blocks at most its timeout)
PULL_WORKERS = 4  # threads for image pulls (one per image pulled at once; more wait their turn,
#   their deadline running); a pull stalled on a silent socket ends at the client's read timeout
STOP_WORKERS = 16  # threads for stops: each blocks for up to its grace (SIGTERM ignored: all of it),
#   so a burst of them (a scale-down, an rm) on the main pool held up every list and start
EXEC_OUTPUT = 4096  # bytes of an exec's output kept
PING_TIMEOUT = 5.0  # s a ping may take (connect and read) before the engine counts as not answering


class DockerRuntime:
    def __init__(self, base_url: str | None = None, max_workers: int = 4) -> None:
        self._base_url = base_url or None
        self.url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_URL
        self._max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="shoal-docker")
        self._exec_pool = ThreadPoolExecutor(EXEC_WORKERS, thread_name_prefix="shoal-docker-exec")
        self._stop_pool = ThreadPoolExecutor(STOP_WORKERS, thread_name_prefix="shoal-docker-stop")
        self._ping_pool = ThreadPoolExecutor(1, thread_name_prefix="shoal-docker-ping")
        self._pull_pool = ThreadPoolExecutor(PULL_WORKERS, thread_name_prefix="shoal-docker-pull")
        self._pull_client: docker.DockerClient | None = None
        self._ping_client: docker.DockerClient | None = None
        self._pinging: asyncio.Future[None] | None = None
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._seen = Seen()  # what listings need not inspect again (node.runtime.docker_seen)
        self._closed = False

    async def ping(self) -> None:
        """/_ping and a listing of one container, on a client and a thread of its own,
        bounded by PING_TIMEOUT: a hung engine, or a pool busy with slow calls, never makes
        a ping wait longer. One ping at a time: a caller that comes while one is under way
        waits for that one."""
        if self._closed:
            raise EngineError("the Docker runtime is closed")
        if self._pinging is None or self._pinging.done():
            self._pinging = asyncio.wrap_future(self._ping_pool.submit(self._ping))
            # read by the callback too: when every waiter gave up (cancelled, shield drops
            # its reader) a failed ping is otherwise logged as "never retrieved"
            self._pinging.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.shield(self._pinging)

    async def engine_started(self) -> float:
        """From the kernel, not the engine (`node.runtime.engine_start`): a hung engine
        does not hold it up."""
        return await asyncio.to_thread(engine_started, self.url)

    async def run(self, spec: ContainerSpec) -> Container:
        return await self._call(self._run, spec)

    async def stop(self, container_id: str, timeout: float = 10.0, remove: bool = True) -> None:
        """In a pool of its own (`STOP_WORKERS`): a stop waits out the grace of a container
        that ignores SIGTERM, and lists and starts must not queue behind it."""
        await self._call(self._stop, container_id, timeout, remove, pool=self._stop_pool)

    async def rename(self, container_id: str, name: str) -> None:
        await self._call(self._rename, container_id, name)

    async def has_image(self, image: str) -> bool:
        return await self._call(self._has_image, image)

    async def pull(
        self,
        image: str,
        timeout: float,
        progress: Callable[[str], None],
        auth: tuple[str, str] | None = None,
    ) -> None:
        """In threads of its own, on a client of its own: a slow pull holds up no list,
        start or stop. Past `timeout` the pull is abandoned at its next progress event."""
        if self._closed:
            raise EngineError("the Docker runtime is closed")
        loop = asyncio.get_running_loop()
        call = functools.partial(
            self._guarded_pull, image, time.monotonic() + timeout, timeout, progress, auth
        )
        await loop.run_in_executor(self._pull_pool, call)

    async def remove(self, container_id: str) -> None:
        await self._call(self._remove, container_id)

    async def remove_volume(self, name: str) -> None:
        await self._call(self._remove_volume, name)

    async def close(self, wait: bool = True) -> None:
        """Refuse new calls and close the client once the calls in flight are done; with
        `wait=False` (a daemon stopping) leave those to finish on their own, unwaited."""
        if self._closed:
            return
        self._closed = True
        if not wait:
            for pool in (self._pool, self._exec_pool, self._stop_pool):
                pool.shutdown(wait=False, cancel_futures=True)
            return
        for pool in (self._pool, self._exec_pool, self._stop_pool):
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        self._ping_pool.shutdown(wait=False, cancel_futures=True)  # a ping ends by its own timeout
        self._pull_pool.shutdown(wait=False, cancel_futures=True)  # a pull ends at its deadline
        if self._client is not None:
            self._client.close()
            self._client = None

    async def list(self, labels: dict[str, str]) -> builtins.list[Container]:
        return await self._call(self._list, labels)

    async def exec(self, container_id: str, command: Sequence[str], timeout: float) -> ExecResult:
        """Runs in a pool of its own: a check that hangs never delays starts and stops."""
        if self._closed:
            raise EngineError("the Docker runtime is closed")
        loop = asyncio.get_running_loop()
        call = functools.partial(self._guarded, self._exec, container_id, tuple(command), timeout)
        try:
            return await loop.run_in_executor(self._exec_pool, call)
        except _ExecTimedOut as exc:
            raise TimeoutError(str(exc)) from None

    # -- plumbing: every call runs in the pool, with errors mapped once ------------------

    async def _call(self, fn: Callable[..., T], *args: Any, pool: ThreadPoolExecutor | None = None) -> T:
        if self._closed:
            raise EngineError("the Docker runtime is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool or self._pool, functools.partial(self._guarded, fn, *args))

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(self._docker(), *args)
        except EngineError:
            raise
        except Exception as exc:
            if _unreachable(exc):
                raise RuntimeUnavailable(
                    f"cannot reach the Docker engine at {self.url}: {_reason(exc)}; is dockerd running?"
                ) from exc
            if isinstance(exc, DockerException):
                raise EngineError(f"Docker: {_explain(exc)}") from exc
            raise

    def _docker(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                # one connection per thread that may call at once (main, exec and stop pools)
                size = self._max_workers + EXEC_WORKERS + STOP_WORKERS + 1
                self._client = self._new_client(max_pool_size=size)
            return self._client

    def _new_client(self, **opts: Any) -> docker.DockerClient:
        opts = {"version": "auto", **opts}
        if self._base_url is None:
            return docker.DockerClient.from_env(**opts)
        return docker.DockerClient(base_url=self._base_url, **opts)

    def _ping(self) -> None:
        try:
            if self._ping_client is None:
                self._ping_client = self._new_client(timeout=PING_TIMEOUT, max_pool_size=1)
            self._ping_client.ping()
            # /_ping answers even while the container API hangs (a dockerd stuck on a container
            # lock); one listing of at most one container asks the part shoal needs
            self._ping_client.api.containers(all=True, limit=1)
        except Exception as exc:
            if _unreachable(exc):
                raise RuntimeUnavailable(
                    f"cannot reach the Docker engine at {self.url}: {_reason(exc)}; is dockerd running?"
                ) from exc
            raise RuntimeUnavailable(
                f"the Docker engine at {self.url} is not healthy: {_explain(exc)}"
            ) from exc

    # -- the blocking operations, each run in a pool thread ------------------------------

    def _list(self, client: docker.DockerClient, labels: dict[str, str]) -> builtins.list[Container]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]} if labels else None
        found = []
        for summary in client.api.containers(all=True, filters=filters):
            known = self._seen.known(summary)  # unchanged since its last inspect (docker_seen)
            if known is not None:
                found.append(known)
                continue
            try:
                container = self._inspect(client, summary["Id"])
            except NotFound:
                continue  # removed between the list and the inspect
            found.append(container)
        return found

    def _inspect(self, client: docker.DockerClient, container_id: str) -> Container:
        container = from_inspect(client.api.inspect_container(container_id))
        self._seen.inspected(container)
        return container

    def _run(self, client: docker.DockerClient, spec: ContainerSpec) -> Container:
        self._ensure_image(client, spec.image)
        host_config = client.api.create_host_config(
            port_bindings={
                f"{p.container_port}/{p.protocol}": (spec.publish_address, None) for p in spec.ports
            },
            nano_cpus=int(spec.cpu * 1e9) if spec.cpu else None,
            mem_limit=spec.memory,
            restart_policy={"Name": "no"},
            log_config={"Type": spec.log_driver, "Config": spec.log_options} if spec.log_driver else None,
            binds=[f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts] or None,
            dns=list(spec.dns) or None,  # the node's name server (node.proxy.vips)
            dns_search=list(spec.dns_search) or None,
            mounts=[
                docker.types.Mount(v.target, v.name, type="volume", read_only=v.read_only, labels=v.labels)
                for v in spec.volumes
            ]
            or None,
        )
        extra = create_options(spec, host_config)  # healthcheck off, the process (decision 70)
        try:
            created = client.api.create_container(
                spec.image,
                command=list(spec.command) if spec.command is not None else None,
                name=spec.name,
                labels=dict(spec.labels),
                environment=dict(spec.env),
                ports=[(p.container_port, p.protocol) for p in spec.ports],
                host_config=host_config,
                **extra,
            )
        except APIError as exc:
            if exc.status_code == 409:
                raise EngineError(f"a container named {spec.name} already exists: {_explain(exc)}") from exc
            if isinstance(exc, NotFound):
                raise ImageError(f"image {spec.image} is not present: {_explain(exc)}") from exc
            raise EngineError(f"cannot create container {spec.name}: {_explain(exc)}") from exc
        cid = created["Id"]
        try:
            client.api.start(cid)
            return self._wait_for_ports(client, cid, spec)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._remove(client, cid)
            if isinstance(exc, APIError):
                raise EngineError(
                    f"container {spec.name} ({spec.image}) could not start: {_explain(exc)}"
                ) from exc
            raise

    def _has_image(self, client: docker.DockerClient, image: str) -> bool:
        try:
            client.api.inspect_image(image)
            return True
        except NotFound:
            return False

    def _guarded_pull(
        self,
        image: str,
        deadline: float,
        timeout: float,
        progress: Callable[[str], None],
        auth: tuple[str, str] | None = None,
    ) -> None:
        with self._client_lock:
            if self._pull_client is None:
                # a read timeout no longer than the deadline: a pull that stalls (no progress
                # event, e.g. a registry gone silent) frees its thread; dockerd cancels it then
                self._pull_client = self._new_client(max_pool_size=PULL_WORKERS, timeout=min(60.0, timeout))
            client = self._pull_client
        self._guarded(lambda _main: pull_image(client, image, deadline, timeout, progress, auth))

    def _ensure_image(self, client: docker.DockerClient, image: str) -> None:
        try:
            client.api.inspect_image(image)
            return
        except NotFound:
            pass
        repository, tag = parse_repository_tag(image)
        failed = f"image {image} is not present and could not be pulled"
        try:
            for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if isinstance(event, dict) and event.get("error"):
                    raise ImageError(f"{failed}: {event['error']}")
        except APIError as exc:
            raise ImageError(f"{failed}: {_explain(exc)}") from exc

    def _wait_for_ports(self, client: docker.DockerClient, cid: str, spec: ContainerSpec) -> Container:
        wanted = {p.container_port for p in spec.ports}

        def give_up(state: RetryCallState) -> Container:
            raise EngineError(f"Docker reported no host ports for {spec.name} in {PORTS_DEADLINE}s")

        polling = Retrying(  # inspect every 20 ms until the ports show (or it stopped running)
            retry=retry_if_result(lambda c: c.running and not wanted <= c.host_ports.keys()),
            wait=wait_fixed(0.02),
            stop=stop_after_delay(PORTS_DEADLINE),
            retry_error_callback=give_up,
        )
        container: Container = polling(self._inspect, client, cid)
        return container

    def _exec(
        self, client: docker.DockerClient, container_id: str, command: tuple[str, ...], timeout: float
    ) -> ExecResult:
        """exec_create + exec_start on the raw socket, read with a deadline (docker-py's own
        reader selects without one), then exec_inspect for the exit code."""
        deadline = time.monotonic() + timeout
        try:
            created = client.api.exec_create(container_id, list(command), stdout=True, stderr=True)
            sock = client.api.exec_start(created["Id"], socket=True)
        except APIError as exc:
            raise EngineError(f"cannot exec in container {container_id[:12]}: {_explain(exc)}") from exc
        raw = getattr(sock, "_sock", sock)
        data = bytearray()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _ExecTimedOut(f"{command[0]} did not finish within {timeout:g}s")
                raw.settimeout(left)
                try:
                    chunk = raw.recv(65536)
                except TimeoutError:
                    raise _ExecTimedOut(f"{command[0]} did not finish within {timeout:g}s") from None
                if not chunk:
                    break
                if len(data) < 4 * EXEC_OUTPUT:
                    data += chunk
        finally:
            sock.close()
        code = client.api.exec_inspect(created["Id"]).get("ExitCode")
        return ExecResult(int(code) if code is not None else -1, demux(bytes(data))[:EXEC_OUTPUT])

    def _stop(self, client: docker.DockerClient, container_id: str, timeout: float, remove: bool) -> None:
        try:
            client.api.stop(container_id, timeout=max(0, math.ceil(timeout)))
        except NotFound:
            return
        except APIError as exc:
            if not remove:  # kept: it must be stopped, and the forced removal would have killed it
                raise EngineError(f"cannot stop container {container_id}: {_explain(exc)}") from exc
        self._seen.forget(container_id)
        if remove:
            self._remove(client, container_id)

    def _rename(self, client: docker.DockerClient, container_id: str, name: str) -> None:
        self._seen.forget(container_id)
        try:
            client.api.rename(container_id, name)
        except APIError as exc:
            raise EngineError(
                f"cannot rename container {container_id[:12]} to {name}: {_explain(exc)}"
            ) from exc

    def _remove(self, client: docker.DockerClient, container_id: str) -> None:
        self._seen.forget(container_id)
        try:
            client.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code == 409 and "already in progress" in _explain(exc):
                return
            raise EngineError(f"cannot remove container {container_id}: {_explain(exc)}") from exc

    def _remove_volume(self, client: docker.DockerClient, name: str) -> None:
        try:
            client.api.remove_volume(name)
        except NotFound:
            pass
        except APIError as exc:
            raise EngineError(f"cannot remove volume {name}: {_explain(exc)}") from exc


class _ExecTimedOut(EngineError):
    """Inside the pool: an exec ran past its deadline (`exec` raises TimeoutError for it)."""


def _explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)


def _unreachable(exc: BaseException) -> bool:
    """True for transport failures: requests' errors are OSErrors, Docker's APIError is too."""
    if isinstance(exc, DockerException) and not isinstance(exc, APIError):
        return exc.__cause__ is not None and _unreachable(exc.__cause__)  # "fetching server API version"
    return isinstance(exc, OSError) and not isinstance(exc, DockerException)


def _reason(exc: BaseException) -> str:
    """The innermost OS-level reason ("No such file or directory"), else the message."""
    pending: builtins.list[object] = [exc]
    for _ in range(20):
        if not pending:
            break
        e = pending.pop(0)
        if isinstance(e, OSError) and e.strerror:
            return str(e.strerror)
        if isinstance(e, BaseException):
            pending.extend([*e.args, getattr(e, "reason", None), e.__cause__])
    return str(exc)
