"""FakeRuntime behaves like the Docker runtime where the agent can tell."""

from __future__ import annotations

import pytest

from node.dev.fakeruntime import FakeRuntime
from node.runtime import (
    LABELS,
    ContainerSpec,
    EngineError,
    ImageError,
    PortBinding,
    Runtime,
    RuntimeUnavailable,
)


def spec(name: str = "web-1", service: str = "web", **labels: str) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        image="shoal-demo/web:1",
        labels={LABELS.SERVICE: service, LABELS.TASK: name, **labels},
        ports=(PortBinding(8080),),
    )


async def test_run_gives_running_containers_with_distinct_ids_and_ports() -> None:
    rt: Runtime = FakeRuntime()
    a = await rt.run(spec("web-1"))
    b = await rt.run(spec("web-2"))
    assert a.running and b.running
    assert a.id != b.id
    assert a.host_ports.keys() == {8080} and a.host_ports[8080] != b.host_ports[8080]
    assert a.labels[LABELS.TASK] == "web-1"


async def test_list_matches_every_label() -> None:
    rt = FakeRuntime()
    await rt.run(spec("web-1", service="web"))
    await rt.run(spec("api-1", service="api"))
    assert [c.name for c in await rt.list({LABELS.SERVICE: "web"})] == ["web-1"]
    assert [c.name for c in await rt.list({LABELS.SERVICE: "web", LABELS.TASK: "api-1"})] == []
    assert len(await rt.list({})) == 2


async def test_crash_sets_exited_and_exit_code() -> None:
    rt = FakeRuntime()
    c = await rt.run(spec())
    rt.crash(c.id, exit_code=3)
    [seen] = await rt.list({LABELS.TASK: "web-1"})
    assert (seen.state, seen.exit_code, seen.running, seen.host_ports) == ("exited", 3, False, {})


async def test_name_conflict_and_queued_failures() -> None:
    rt = FakeRuntime()
    await rt.run(spec("web-1"))
    with pytest.raises(EngineError, match="web-1"):
        await rt.run(spec("web-1"))
    rt.fail_next_run(ImageError("image shoal-demo/web:1 is not present"))
    with pytest.raises(ImageError):
        await rt.run(spec("web-2"))
    assert (await rt.run(spec("web-2"))).running  # only the next run fails


async def test_stop_and_remove_are_idempotent_and_recorded() -> None:
    rt = FakeRuntime()
    c = await rt.run(spec())
    await rt.stop(c.id, timeout=1)
    await rt.stop(c.id)
    await rt.remove("no-such-container")
    assert await rt.list({}) == []
    assert rt.calls == [
        ("run", "web-1"),
        ("stop", c.id),
        ("stop", c.id),
        ("remove", "no-such-container"),
        ("list",),
    ]


async def test_unavailable_engine() -> None:
    rt = FakeRuntime()
    rt.unavailable = True
    with pytest.raises(RuntimeUnavailable):
        await rt.ping()
    with pytest.raises(RuntimeUnavailable):
        await rt.list({})
