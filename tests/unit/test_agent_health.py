"""Health checks and restart policy in the agent's shell, on a MemoryStore, a FakeRuntime,
a fake clock and a scripted prober: passes and probes are driven by hand.

What is checked is what the proxies and the leader see: `endpoints/` (routable only
while healthy), `status/` (health, its last result, restarts, exit code, terminal) and
the runtime calls (withdraw before stop, restarts after their back-off, nothing
restarted once the policy gave up).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from node.agent.agent import Agent
from node.agent.health import Check
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import Assignment, ServiceRecord, TaskState, TaskStatus
from node.model.keys import Keys
from node.runtime.base import LABELS, Container, DockerHealth, EngineError, ExecResult, RuntimeUnavailable
from node.store.memory import MemoryStore
from node.store.session import Session
from node.telemetry.events import EventLog
from tests.factories import CLUSTER, FakeClock, make_container, make_service, make_task
from tests.helpers import wait_until

NODE = "n1"
ADDRESS = "127.0.0.1"
KEYS = Keys()
HTTP = {
    "http": {"port": 8080, "path": "/health", "status": 200},
    "interval": 1.0,
    "timeout": 0.5,
    "retries": 3,
}


class ScriptedProber:
    """Answers probes from `ok[task id]` (default True) and counts them."""

    def __init__(self) -> None:
        self.ok: dict[str, bool] = {}
        self.probes: list[str] = []

    async def probe(self, check: Check, c: Container) -> tuple[bool, str]:
        task = c.labels[LABELS.TASK]
        self.probes.append(task)
        if self.ok.get(task, True):
            return True, "HTTP 200"
        return False, f"HTTP 500 from GET {check.path} (expected 200)"


class RecordingEvents(EventLog):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, KEYS, NODE)
        self.emitted: list[tuple[str, str]] = []

    def emit(self, kind: str, message: str, service: str = "", task: str = "", cause: str = "") -> None:
        self.emitted.append((kind, message))


class GraceRuntime(FakeRuntime):
    """Also notes the grace each stop was given."""

    def __init__(self) -> None:
        super().__init__()
        self.graces: list[float] = []

    async def stop(self, container_id: str, timeout: float = 10.0, remove: bool = True) -> None:
        self.graces.append(timeout)
        await super().stop(container_id, timeout, remove)


@dataclass
class World:
    store: MemoryStore
    runtime: GraceRuntime
    prober: ScriptedProber
    clock: FakeClock
    agent: Agent

    async def service(self, **extra: Any) -> ServiceRecord:
        record = make_service("web", replicas=1, ports=[{"container": 8080, "protocol": "tcp"}], **extra)
        await self.store.put(KEYS.service("web"), record.to_json())
        return record

    async def assign(self, *tasks: Assignment) -> None:
        for t in tasks:
            await self.store.put(KEYS.task(t.service, t.slot), t.to_json())

    async def reconcile(self) -> None:
        await self.agent.tasks.relist()
        await self.agent.reconcile()
        await self.agent.stopped()
        await self.agent.flush()

    async def step(self, seconds: float = 0.0) -> None:
        """Move the clock, run the probes that are due, then a pass."""
        self.clock.advance(seconds)
        await self.agent.monitor.probe_due()
        await self.reconcile()

    async def status(self, task: Assignment) -> TaskStatus:
        kv = await self.store.get(KEYS.status(task.task_id))
        assert kv is not None
        return TaskStatus.from_json(kv.value)

    async def published(self, task: Assignment) -> bool:
        return await self.store.get(KEYS.endpoint(task.service, task.task_id)) is not None

    def events(self, kind: str) -> list[str]:
        assert isinstance(self.agent.events, RecordingEvents)
        return [message for k, message in self.agent.events.emitted if k == kind]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = MemoryStore()
    runtime = GraceRuntime()
    session = Session(store, ttl=10)
    await session.start()
    events = RecordingEvents(store)
    prober, clock = ScriptedProber(), FakeClock()
    agent = Agent(
        store,
        KEYS,
        NODE,
        CLUSTER,
        runtime,
        session,
        events,
        ADDRESS,
        1.0,
        7.0,
        0.0,
        prober=prober,
        clock=clock,
    )
    yield World(store, runtime, prober, clock, agent)


async def test_a_checked_replica_is_published_only_once_healthy(world: World) -> None:
    svc = await world.service(health=HTTP)
    t1 = make_task(svc, 1, NODE)
    world.prober.ok[t1.task_id] = False
    await world.assign(t1)
    await world.reconcile()
    [c1] = world.runtime.running()
    assert world.runtime.specs[c1.id].image_healthcheck is False, "the spec's check replaces the image's"
    status = await world.status(t1)
    assert (status.state, status.health, status.healthy_since) == (TaskState.RUNNING, "starting", 0.0)
    assert not await world.published(t1)

    await world.step()  # the first probe fails: still starting, not published
    status = await world.status(t1)
    assert status.health == "starting" and "HTTP 500" in status.health_message
    assert not await world.published(t1)

    world.prober.ok[t1.task_id] = True
    await world.step(0.5)
    status = await world.status(t1)
    assert (status.health, status.health_message, status.health_failures) == ("healthy", "HTTP 200", 0)
    assert status.healthy_since > 0 and status.health_at > 0
    assert await world.published(t1)


async def test_unhealthy_after_retries_is_withdrawn_and_comes_back(world: World) -> None:
    svc = await world.service(health=HTTP)
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.step()
    assert await world.published(t1)
    since = (await world.status(t1)).healthy_since

    world.prober.ok[t1.task_id] = False
    for failures in (1, 2):
        await world.step(1.0)
        status = await world.status(t1)
        assert (status.health, status.health_failures) == ("healthy", failures)
        assert await world.published(t1), "routable until `retries` failures"
    await world.step(1.0)
    status = await world.status(t1)
    assert (status.health, status.health_failures) == ("unhealthy", 3)
    assert status.health_message == "HTTP 500 from GET /health (expected 200)"
    assert status.healthy_since == 0.0
    assert not await world.published(t1), "withdrawn as soon as it is unhealthy"
    assert len(world.runtime.running()) == 1, "withdrawn, not yet replaced"

    world.prober.ok[t1.task_id] = True
    await world.step(1.0)
    status = await world.status(t1)
    assert (status.health, status.restarts) == ("healthy", 0)
    assert status.healthy_since > since
    assert await world.published(t1)


async def test_unhealthy_for_twice_the_retries_is_replaced_through_the_drain_path(world: World) -> None:
    svc = await world.service(health=HTTP, stop_grace=3.0, restart={"delay": 1.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.step()
    [first] = world.runtime.running()
    world.prober.ok[t1.task_id] = False
    for _ in range(6):
        await world.step(1.0)
    assert ("stop", first.id) in world.runtime.calls
    assert world.runtime.graces == [3.0], "stop_grace of the spec"
    assert world.runtime.running() == []
    await world.reconcile()  # the pass that a finished stop wakes
    status = await world.status(t1)
    assert (status.state, status.restarts, status.exit_code) == (TaskState.EXITED, 1, -1)
    assert "unhealthy after 6 failed checks" in status.message
    assert world.events("task.unhealthy")

    await world.step(0.5)
    assert world.runtime.running() == [], "the restart waits for its delay"
    await world.step(0.5)
    [second] = world.runtime.running()
    assert second.id != first.id
    status = await world.status(t1)
    assert (status.state, status.health, status.restarts) == (TaskState.RUNNING, "starting", 1)


async def test_unhealthy_with_restart_never_is_stopped_and_stays_failed(world: World) -> None:
    svc = await world.service(health=HTTP, restart={"condition": "never"})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.step()
    world.prober.ok[t1.task_id] = False
    for _ in range(6):
        await world.step(1.0)
    for _ in range(3):
        await world.step(5.0)
    assert world.runtime.running() == []
    assert sum(1 for c in world.runtime.calls if c[0] == "run") == 1
    status = await world.status(t1)
    assert (status.state, status.terminal) == (TaskState.FAILED, True)
    assert "restart condition is never" in status.message


async def test_a_crash_loop_restarts_with_growing_delays(world: World) -> None:
    svc = await world.service(restart={"delay": 0.5})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    starts = [world.clock.now]
    for n in range(1, 6):
        [c] = world.runtime.running()
        world.runtime.crash(c.id, exit_code=1)
        await world.step(0.1)  # the exit is seen
        status = await world.status(t1)
        assert (status.state, status.exit_code, status.restarts) == (TaskState.EXITED, 1, n)
        assert f"restart {n} in" in status.message
        while not world.runtime.running():
            await world.step(0.1)
        starts.append(world.clock.now)
        status = await world.status(t1)
        assert (status.state, status.restarts, status.exit_code) == (TaskState.RUNNING, n, 1)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(starts)]
    assert gaps == [0.6, 1.1, 2.1, 4.1, 8.1], "each crash: 0.1 s to see it, then 0.5 s doubling"
    assert len(world.events("task.exited")) == 5


async def test_restart_never_keeps_the_exited_container_and_says_why(world: World) -> None:
    svc = await world.service(restart={"condition": "never"})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    [c] = world.runtime.running()
    world.runtime.crash(c.id, exit_code=3)
    for _ in range(3):
        await world.step(5.0)
    assert sum(1 for call in world.runtime.calls if call[0] == "run") == 1, "never restarted"
    assert c.id in world.runtime.containers, "kept for its logs"
    status = await world.status(t1)
    assert (status.state, status.exit_code, status.restarts, status.terminal) == (
        TaskState.FAILED,
        3,
        0,
        True,
    )
    assert status.message == "it exited with code 3; restart condition is never"
    assert len(world.events("task.no-restart")) == 1

    await world.store.delete(KEYS.task("web", 1))
    await world.reconcile()
    assert world.runtime.containers == {}, "removed with its task"


async def test_on_failure_does_not_restart_a_clean_exit(world: World) -> None:
    svc = await world.service(restart={"condition": "on-failure", "delay": 0.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    [c] = world.runtime.running()
    world.runtime.crash(c.id, exit_code=0)
    await world.step(1.0)
    await world.step(1.0)
    status = await world.status(t1)
    assert (status.state, status.exit_code, status.terminal) == (TaskState.EXITED, 0, True)
    assert sum(1 for call in world.runtime.calls if call[0] == "run") == 1


@pytest.mark.parametrize("condition", ["on-failure", "never"])
async def test_a_container_created_but_never_started_is_started_again(world: World, condition: str) -> None:
    """The daemon died between create and start: Docker says `created`, StartedAt zero,
    exit code 0. That is not a task that completed (issue 11, item 13)."""
    svc = await world.service(restart={"condition": condition, "delay": 0.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    [c] = world.runtime.running()
    world.runtime.containers[c.id] = replace(c, state="created", started_at="", exit_code=0, host_ports={})
    await world.step(0.0)  # removes it, decides
    await world.step(0.0)  # starts anew
    [again] = world.runtime.running()
    assert again.id != c.id
    status = await world.status(t1)
    assert (status.state, status.terminal, status.restarts) == (TaskState.RUNNING, False, 1)
    assert not world.events("task.no-restart")
    assert any("never started" in m for m in world.events("task.exited"))


@pytest.mark.parametrize("condition", ["on-failure", "never"])
async def test_an_exit_0_across_an_engine_restart_is_started_again(world: World, condition: str) -> None:
    svc = await world.service(restart={"condition": condition, "delay": 0.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.reconcile()  # seen running by a pass
    [c] = world.runtime.running()
    world.runtime.unavailable = True  # the engine goes away: it stops its containers (exit 0)
    with pytest.raises(RuntimeUnavailable):
        await world.agent.reconcile()
    world.runtime.crash(c.id, exit_code=0)
    world.runtime.unavailable = False
    await world.step(0.0)
    await world.step(0.0)
    [again] = world.runtime.running()
    assert again.id != c.id
    status = await world.status(t1)
    assert (status.state, status.terminal) == (TaskState.RUNNING, False)
    assert any("engine restarted" in m for m in world.events("task.exited"))

    world.runtime.crash(again.id, exit_code=0)  # a clean exit with the engine up: completed
    await world.step(0.0)
    await world.step(0.0)
    status = await world.status(t1)
    assert (status.state, status.exit_code, status.terminal) == (TaskState.EXITED, 0, True)


@pytest.mark.parametrize("condition", ["always", "on-failure"])
async def test_a_paused_replica_is_withdrawn_but_not_judged_exited(world: World, condition: str) -> None:
    """Before, a paused container (Docker: Status paused, Running true) was taken for an
    exit with code 0: with `always` it was removed and a second one started, with
    on-failure the task went terminal. It is live, only not routable while paused."""
    svc = await world.service(restart={"condition": condition, "delay": 0.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    [c] = world.runtime.running()
    assert await world.published(t1)
    world.runtime.containers[c.id] = replace(c, state="paused")  # `docker pause`
    for _ in range(3):
        await world.step(1.0)
    assert [x[0] for x in world.runtime.calls if x[0] in ("run", "remove", "stop")] == ["run"]
    assert not await world.published(t1), "a paused replica answers nobody"
    status = await world.status(t1)
    assert (status.state, status.terminal) == (TaskState.RUNNING, False)
    assert "paused" in status.message
    world.runtime.containers[c.id] = replace(c, state="running")  # `docker unpause`
    await world.step(1.0)
    assert await world.published(t1)
    assert world.runtime.running() == [c]


def fail_one_listing(runtime: FakeRuntime, error: Exception) -> None:
    """The runtime's next `list` raises `error`; the ones after answer."""
    listing = runtime.list

    async def once(labels: dict[str, str]) -> list[Container]:
        runtime.list = listing  # type: ignore[method-assign]
        raise error

    runtime.list = once  # type: ignore[method-assign]


@pytest.mark.parametrize("extra", [{"kind": "job"}, {"restart": {"condition": "on-failure", "delay": 0.0}}])
async def test_one_failed_listing_does_not_make_a_finished_job_run_again(
    world: World, extra: dict[str, Any]
) -> None:
    """Before, any EngineError of a listing (a Docker 500 on one inspect) counted as an
    engine gap, so the job's exit 0 after it was "the engine restarted under it" and the
    finished job was started a second time."""
    svc = await world.service(**extra)
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    [c] = world.runtime.running()
    fail_one_listing(world.runtime, EngineError("Docker: 500 Server Error: inspect failed"))
    with pytest.raises(EngineError):
        await world.agent.reconcile()
    world.runtime.crash(c.id, exit_code=0)  # it completes
    await world.step(0.0)
    await world.step(0.0)
    assert len([x for x in world.runtime.calls if x[0] == "run"]) == 1, "run once"
    status = await world.status(t1)
    assert (status.state, status.exit_code, status.terminal) == (TaskState.EXITED, 0, True)


@pytest.mark.parametrize("engine_restarted", [True, False])
async def test_an_exit_0_after_a_gap_is_the_engines_only_if_it_started_since(
    world: World, engine_restarted: bool
) -> None:
    """The engine's start known: a gap (the engine did not answer one listing) makes an
    exit 0 the engine's doing only if the engine started after the container was last
    seen running. Before, the bare gap ran a finished job a second time."""
    world.runtime.engine_since = time.time() - 3600.0  # up well before the job started
    svc = await world.service(kind="job")
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.reconcile()  # seen running by a pass
    [c] = world.runtime.running()
    fail_one_listing(world.runtime, RuntimeUnavailable("read timed out"))
    with pytest.raises(RuntimeUnavailable):
        await world.agent.reconcile()
    world.runtime.crash(c.id, exit_code=0)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")  # the fake's own times are of 2024
    world.runtime.containers[c.id] = replace(world.runtime.containers[c.id], finished_at=now)
    if engine_restarted:
        world.runtime.engine_since = time.time()  # its shutdown stopped the job
    await world.step(0.0)
    await world.step(0.0)
    status = await world.status(t1)
    if engine_restarted:
        [again] = world.runtime.running()
        assert again.id != c.id and (status.state, status.terminal) == (TaskState.RUNNING, False)
        assert any("engine restarted" in m for m in world.events("task.exited"))
    else:
        assert world.runtime.running() == []
        assert (status.state, status.exit_code, status.terminal) == (TaskState.EXITED, 0, True)


@pytest.mark.parametrize("engine_restarted", [True, False])
async def test_an_exit_0_while_shoald_and_the_engine_were_both_down_is_started_again(
    world: World, engine_restarted: bool
) -> None:
    """A host reboot: shoald stops, the engine's shutdown stops the replica (exit 0 on
    SIGTERM), the engine and then shoald start. The new daemon saw no gap; the exit came
    before the engine's process started, so it is not the task's end. Without an engine
    restart, the same exit while shoald was down is a completion, as before."""
    world.runtime.engine_restarted()  # the engine that runs it
    svc = await world.service(restart={"condition": "on-failure", "delay": 0.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.reconcile()
    [c] = world.runtime.running()
    world.runtime.crash(c.id, exit_code=0)  # shoald is down: nobody watches
    if engine_restarted:
        world.runtime.engine_restarted()  # after the exit: the engine that runs now

    a = world.agent
    fresh = Agent(a.store, KEYS, NODE, CLUSTER, world.runtime, a.publisher.session, a.events, ADDRESS, 1.0)
    world.agent = fresh
    await fresh._seed_restarts()
    await fresh.tasks.relist()
    await world.step(0.0)
    await world.step(0.0)
    status = await world.status(t1)
    if engine_restarted:
        [again] = world.runtime.running()
        assert again.id != c.id
        assert (status.state, status.terminal) == (TaskState.RUNNING, False)
        assert any("before the engine's restart" in m for m in world.events("task.exited"))
    else:
        assert world.runtime.running() == []
        assert (status.state, status.exit_code, status.terminal) == (TaskState.EXITED, 0, True)


async def test_max_attempts_then_the_task_stays_failed(world: World) -> None:
    svc = await world.service(restart={"max_attempts": 2, "window": 60.0, "delay": 0.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    for _ in range(3):
        [c] = world.runtime.running()
        world.runtime.crash(c.id, exit_code=2)
        await world.step(1.0)
        await world.step(1.0)
    status = await world.status(t1)
    assert (status.state, status.restarts, status.terminal) == (TaskState.FAILED, 2, True)
    assert "after 2 restarts within 60s" in status.message
    assert world.runtime.running() == []


async def test_a_terminal_task_stays_terminal_after_a_daemon_restart(world: World) -> None:
    svc = await world.service(restart={"condition": "never"})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    [c] = world.runtime.running()
    world.runtime.crash(c.id, exit_code=1)
    await world.step(1.0)
    assert (await world.status(t1)).terminal

    a = world.agent
    fresh = Agent(a.store, KEYS, NODE, CLUSTER, world.runtime, a.publisher.session, a.events, ADDRESS, 1.0)
    await fresh._seed_restarts()
    await fresh.tasks.relist()
    await fresh.reconcile()
    assert sum(1 for call in world.runtime.calls if call[0] == "run") == 1


async def test_docker_healthcheck_is_honoured_without_a_spec_check(world: World) -> None:
    svc = await world.service()
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    [c] = world.runtime.running()
    assert world.runtime.specs[c.id].image_healthcheck is True
    world.runtime.set_docker_health(c.id, DockerHealth("starting"))
    await world.step(1.0)
    assert (await world.status(t1)).health == "starting" and not await world.published(t1)
    world.runtime.set_docker_health(c.id, DockerHealth("healthy", message="ok"))
    await world.step(1.0)
    assert (await world.status(t1)).health == "healthy" and await world.published(t1)
    world.runtime.set_docker_health(
        c.id, DockerHealth("unhealthy", failing_streak=3, retries=3, message="404")
    )
    await world.step(1.0)
    status = await world.status(t1)
    assert (status.health, status.health_message) == ("unhealthy", "404")
    assert not await world.published(t1) and [r.id for r in world.runtime.running()] == [c.id]
    world.runtime.set_docker_health(c.id, DockerHealth("unhealthy", failing_streak=6, retries=3))
    await world.step(1.0)
    assert ("stop", c.id) in world.runtime.calls, "replaced after 2 x retries, as with a spec check"


async def exec_checked(world: World) -> tuple[Assignment, Container]:
    """One replica with an exec check (`test -f /tmp/healthy`, every 1 s, 1 retry), probed
    through the real `Prober` on the fake runtime, started and probed once."""
    from node.agent.probes import Prober

    world.agent.monitor.prober = Prober(world.runtime, ADDRESS)
    check = {"exec": ["test", "-f", "/tmp/healthy"], "interval": 1.0, "retries": 1}
    svc = await world.service(health=check)
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.step()
    [c] = world.runtime.running()
    return t1, c


async def test_exec_checks_run_in_the_container(world: World) -> None:
    t1, c = await exec_checked(world)
    assert ("exec", c.id, "test", "-f", "/tmp/healthy") in world.runtime.calls
    assert await world.published(t1)
    world.runtime.set_exec(c.id, ExecResult(1, ""))
    await world.step(1.0)
    status = await world.status(t1)
    assert (status.health, status.health_message) == ("unhealthy", "exit 1")
    assert not await world.published(t1)
    world.runtime.set_exec(c.id, TimeoutError("test did not finish within 1s"))
    await world.step(1.0)
    assert "did not finish within 1s" in (await world.status(t1)).health_message


async def test_stop_grace_and_the_node_default(world: World) -> None:
    svc = await world.service()
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.store.delete(KEYS.task("web", 1))
    await world.reconcile()
    assert world.runtime.graces == [7.0], "the node's stop_timeout without stop_grace"
    graced = await world.service(stop_grace=0.5)
    t2 = replace(make_task(graced, 2, NODE), version=1)
    await world.assign(t2)
    world.agent.specs.forget("web")
    await world.reconcile()
    await world.store.delete(KEYS.task("web", 2))
    await world.reconcile()
    assert world.runtime.graces == [7.0, 0.5]


async def test_a_verdict_change_wakes_a_pass_by_itself() -> None:
    """The real loop: probes on their own schedule, a failing replica withdrawn without
    any pass being asked for."""
    store = MemoryStore()
    runtime = FakeRuntime()
    session = Session(store, ttl=10)
    await session.start()
    prober = ScriptedProber()
    agent = Agent(
        store,
        KEYS,
        NODE,
        CLUSTER,
        runtime,
        session,
        EventLog(store, KEYS, NODE),
        ADDRESS,
        30.0,
        prober=prober,
    )
    check = {"tcp": {"port": 8080}, "interval": 0.1, "timeout": 0.05, "retries": 2}
    svc = make_service("web", ports=[{"container": 8080}], health=check)
    await store.put(KEYS.service("web"), svc.to_json())
    t1 = make_task(svc, 1, NODE)
    await store.put(KEYS.task("web", 1), t1.to_json())
    endpoint = KEYS.endpoint("web", t1.task_id)
    running = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: store.get(endpoint), 5, message="published once healthy")
        prober.ok[t1.task_id] = False

        async def withdrawn() -> bool:
            return await store.get(endpoint) is None

        await wait_until(withdrawn, 2, message="withdrawn without a resync (resync is 30 s)")
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


async def test_an_exec_check_the_engine_does_not_answer_counts_nothing(world: World) -> None:
    """dockerd away or hanging: the exec check cannot run, which is not the replica's
    failure. Counted, every exec-checked replica turned unhealthy, was withdrawn and then
    replaced once the engine answered again, the very case the engine watch rides out."""
    t1, c = await exec_checked(world)
    assert (await world.status(t1)).health == "healthy"
    world.runtime.set_exec(c.id, RuntimeUnavailable("cannot reach the Docker engine"))
    for _ in range(4):
        await world.step(1.0)
    status = await world.status(t1)
    assert status.health == "healthy" and "not checked" in status.health_message, status
    assert await world.published(t1) and ("stop", c.id) not in world.runtime.calls
    world.runtime.set_exec(c.id, ExecResult(1, ""))  # the engine answers: a real result counts
    await world.step(1.0)
    assert (await world.status(t1)).health == "unhealthy"


async def test_an_exec_the_engine_never_answers_is_not_checked_and_one_that_runs_too_long_fails() -> None:
    from node.agent.health import NotChecked
    from node.agent.probes import Prober

    class Hanging(FakeRuntime):
        async def exec(self, container_id: str, command: Any, timeout: float) -> ExecResult:
            await asyncio.sleep(3600)
            raise AssertionError("never")

    check = Check("exec", command=("true",), timeout=0.05)
    c = make_container(make_task(make_service("web"), 1, NODE))
    with pytest.raises(NotChecked, match="did not answer"):
        await Prober(Hanging(), ADDRESS).probe(check, c)
    runtime = FakeRuntime()
    runtime.containers[c.id] = c
    runtime.set_exec(c.id, TimeoutError("true did not finish within 0.05s"))
    assert await Prober(runtime, ADDRESS).probe(check, c) == (False, "exec true: did not finish within 0.05s")
