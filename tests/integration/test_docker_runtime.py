"""DockerRuntime against the real engine, with the local demo images.

Every test labels its containers with a fresh uuid and force-removes whatever carries
that label at teardown, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import docker
import pytest
from docker.errors import NotFound

from node.agent.restart import interrupted
from node.runtime import (
    LABELS,
    Container,
    ContainerSpec,
    EngineError,
    ImageError,
    PortBinding,
    RuntimeUnavailable,
)
from node.runtime.base import engine_time
from node.runtime.docker import DockerRuntime
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("demo_images")]

TEST_LABEL = "io.shoal.test"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    c = docker.DockerClient.from_env()
    yield c
    c.close()


@pytest.fixture
def labels(client: docker.DockerClient) -> Iterator[dict[str, str]]:
    """Labels unique to this test; every container carrying them is removed afterwards."""
    value = uuid.uuid4().hex
    yield {TEST_LABEL: value, LABELS.SERVICE: "web"}
    for c in client.api.containers(all=True, filters={"label": f"{TEST_LABEL}={value}"}):
        with contextlib.suppress(NotFound):
            client.api.remove_container(c["Id"], force=True)


@pytest.fixture
async def runtime() -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime()
    yield rt
    await rt.close()


def spec(labels: dict[str, str], name: str = "web", **changes: Any) -> ContainerSpec:
    """A web:1 container publishing 8080 on 127.0.0.1, named after the test's label."""
    name = f"shoal-test-{labels[TEST_LABEL][:12]}-{name}"
    base = ContainerSpec(name=name, image="shoal-demo/web:1", labels=labels, ports=(PortBinding(8080),))
    return dataclasses.replace(base, **changes)


def http_get(url: str) -> tuple[int, str]:
    with NO_PROXY.open(url, timeout=2) as response:
        return response.status, response.read().decode()


async def get_when_up(url: str) -> tuple[int, str]:
    return await wait_until(lambda: asyncio.to_thread(http_get, url), timeout=10, message=f"GET {url}")


async def test_run_list_serve_and_stop(runtime: DockerRuntime, labels: dict[str, str]) -> None:
    await runtime.ping()
    started = await runtime.run(spec(labels, cpu=0.5, memory=64 * 2**20))
    assert started.running and started.started_at
    port = started.host_ports[8080]

    [listed] = await runtime.list(labels)
    assert listed == started  # from the cheap list endpoint, same as inspected after start
    assert (listed.id, listed.state, listed.host_ports) == (started.id, "running", {8080: port})

    assert await get_when_up(f"http://127.0.0.1:{port}/") == (200, f"web v1 on {started.id[:12]}\n")
    assert await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/health") == (200, "ok\n")

    await runtime.stop(started.id, timeout=5)
    assert await runtime.list(labels) == []
    await runtime.stop(started.id)  # already gone: fine
    await runtime.remove(started.id)


async def test_the_engines_start_comes_before_a_container_it_runs_and_after_a_stop_before_it(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    """`engine_started` on this machine's real dockerd (its own socket): a container run now
    finished after the engine's start, so its exit 0 is judged by itself."""
    since = await runtime.engine_started()
    assert 0 < since <= time.time()
    c = await runtime.run(spec(labels))
    await runtime.stop(c.id, timeout=5, remove=False)  # web:1 exits 0 on SIGTERM
    [stopped] = await runtime.list(labels)
    assert stopped.exit_code == 0 and engine_time(stopped.finished_at) > since
    assert interrupted(stopped, False, since) == ""
    assert "before the engine's restart" in interrupted(stopped, False, engine_time(stopped.finished_at) + 1)
    await runtime.remove(c.id)


async def test_limits_and_restart_policy_reach_docker(
    runtime: DockerRuntime, labels: dict[str, str], client: docker.DockerClient
) -> None:
    c = await runtime.run(spec(labels, cpu=0.5, memory=64 * 2**20))
    host = client.api.inspect_container(c.id)["HostConfig"]
    assert (host["NanoCpus"], host["Memory"]) == (500_000_000, 64 * 2**20)
    assert host["RestartPolicy"]["Name"] == "no"


async def test_publish_on_another_loopback_address(runtime: DockerRuntime, labels: dict[str, str]) -> None:
    c = await runtime.run(spec(labels, publish_address="127.0.0.2", env={"GREETING": "hello"}))
    url = f"http://127.0.0.2:{c.host_ports[8080]}/"
    assert await get_when_up(url) == (200, f"hello from web v1 on {c.id[:12]}\n")


async def test_missing_image_that_cannot_be_pulled(runtime: DockerRuntime, labels: dict[str, str]) -> None:
    image = f"shoal-test/missing-{uuid.uuid4().hex[:8]}:1"
    with pytest.raises(ImageError, match=image):
        await runtime.run(spec(labels, image=image))
    assert await runtime.list(labels) == []


async def test_bad_command_raises_and_leaves_nothing(runtime: DockerRuntime, labels: dict[str, str]) -> None:
    with pytest.raises(EngineError, match="could not start") as failed:
        await runtime.run(spec(labels, command=("/no/such/program",)))
    assert not isinstance(failed.value, (ImageError, RuntimeUnavailable))
    assert await runtime.list(labels) == []


async def test_name_conflict(runtime: DockerRuntime, labels: dict[str, str]) -> None:
    first = await runtime.run(spec(labels))
    with pytest.raises(EngineError, match=f"{first.name} already exists"):
        await runtime.run(spec(labels))


async def test_list_sees_exit_code(runtime: DockerRuntime, labels: dict[str, str]) -> None:
    await runtime.run(spec(labels, image="shoal-demo/base:1", command=("sh", "-c", "exit 3"), ports=()))

    async def exited() -> Container | None:
        found = await runtime.list(labels)
        return found[0] if found and found[0].state == "exited" else None

    c = await wait_until(exited, timeout=10, message="container exited")
    assert (c.exit_code, c.running, c.host_ports) == (3, False, {})


async def test_unreachable_engine(labels: dict[str, str]) -> None:
    rt = DockerRuntime(base_url="unix:///nonexistent/docker.sock")
    try:
        with pytest.raises(RuntimeUnavailable, match=r"unix:///nonexistent/docker.sock.*is dockerd running"):
            await rt.ping()
        with pytest.raises(RuntimeUnavailable):
            await rt.list(labels)
    finally:
        await rt.close()


async def test_exec_runs_in_the_container_with_a_deadline(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    c = await runtime.run(spec(labels))
    assert c.ip, "a container on the bridge network has an address this host reaches"
    assert (await runtime.exec(c.id, ["test", "-f", "/www/health"], 5)).exit_code == 0
    result = await runtime.exec(c.id, ["sh", "-c", "echo out; echo err >&2; exit 3"], 5)
    # stdout and stderr are separate pipes: Docker keeps each one's order, not their order
    # relative to each other
    assert result.exit_code == 3 and sorted(result.output.splitlines()) == ["err", "out"]
    missing = await runtime.exec(c.id, ["no-such-command"], 5)
    assert missing.exit_code in (126, 127) and "no-such-command" in missing.output
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.3s"):
        await runtime.exec(c.id, ["sleep", "5"], 0.3)
    assert asyncio.get_running_loop().time() - started < 2.0
    await runtime.stop(c.id, 0)
    with pytest.raises(EngineError):
        await runtime.exec(c.id, ["true"], 1)


async def test_an_images_healthcheck_is_read_or_turned_off(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    checked = await runtime.run(spec(labels, "hc", image="shoal-demo/web:hc"))
    assert checked.docker_health is not None and checked.docker_health.status == "starting"

    async def healthy() -> Container | None:
        [c] = [c for c in await runtime.list(labels) if c.id == checked.id]
        return c if c.docker_health is not None and c.docker_health.status == "healthy" else None

    found = await wait_until(healthy, 15, message="Docker's HEALTHCHECK passes")
    assert found.docker_health is not None and found.docker_health.retries == 3
    off = await runtime.run(spec(labels, "off", image="shoal-demo/web:hc", image_healthcheck=False))
    assert off.docker_health is None
    [listed] = [c for c in await runtime.list(labels) if c.id == off.id]
    assert listed.docker_health is None and listed.ip


async def test_stops_waiting_out_their_grace_hold_up_no_listing(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    """Containers that ignore SIGTERM (`sleep` as PID 1 has no handler) take their whole
    grace to stop. Six of them at once filled the four threads every call shared: a
    listing (the agent's pass) waited behind them. Stops have threads of their own now."""
    ids = []
    for i in range(6):
        c = await runtime.run(
            spec(labels, name=f"deaf{i}", image="shoal-demo/base:1", command=("sleep", "600"), ports=())
        )
        ids.append(c.id)
    stops = [asyncio.create_task(runtime.stop(cid, timeout=8)) for cid in ids]
    try:
        await asyncio.sleep(0)  # a yield, not a wait: each stop task hands its call to a thread
        listed = await runtime.list(labels)
        assert not any(s.done() for s in stops), "the listing answered while every stop still waited"
        assert {c.id for c in listed} == set(ids)
    finally:
        await asyncio.gather(*stops)
    assert await runtime.list(labels) == []
