"""SimRuntime: records tasks as running without Docker, and says it is a simulation."""

from __future__ import annotations

import pytest

from node.dev.simruntime import SIMULATED, SimRuntime
from node.runtime import LABELS, ContainerSpec, EngineError, PortBinding, Runtime


def spec(name: str, service: str = "web") -> ContainerSpec:
    labels = {LABELS.SERVICE: service, LABELS.TASK: name}
    return ContainerSpec(name=name, image="shoal-demo/web:1", labels=labels, ports=(PortBinding(8080),))


async def test_runs_lists_and_removes_without_docker_labelled_as_simulated() -> None:
    rt: Runtime = SimRuntime("n1")
    a = await rt.run(spec("web-1"))
    await rt.run(spec("api-1", service="api"))
    assert a.running and a.id.startswith("sim-n1-") and a.labels[SIMULATED] == "true"
    assert a.host_ports == {}, "a simulated replica serves nothing"
    assert [c.name for c in await rt.list({LABELS.SERVICE: "web"})] == ["web-1"]
    with pytest.raises(EngineError, match="simulated"):
        await rt.run(spec("web-1"))
    await rt.stop(a.id)
    await rt.remove("sim-missing")
    assert [c.name for c in await rt.list({})] == ["api-1"]
    await rt.run(spec("web-1"))  # the name is free again
