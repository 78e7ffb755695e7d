"""The agent and its engine: an engine that stops answering (`node.agent.engine`), and
pulls apart from the passes (`node.agent.pulls`). MemoryStore, FakeRuntime, fake clocks.

Named paths: the engine refuses or hangs (a ping that never returns); it is down past
`engine_timeout` (endpoints withdrawn, tasks unknown, the leader moves them) and back
(passes resume); a pull is slow (no pass waits: a crashed replica of another service
restarts meanwhile), fails (reported in the task's status), or passes its deadline.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from leader.loop import LeaderLoop
from node.agent import engine as engine_module
from node.agent.agent import Agent
from node.agent.engine import EngineWatch
from node.agent.pulls import Pulls
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import Assignment, TaskState, TaskStatus
from node.model.keys import Keys
from node.runtime import docker as docker_runtime
from node.runtime.base import LABELS, ImageError, RuntimeUnavailable
from node.store.memory import MemoryStore
from node.store.session import Session
from node.telemetry.events import EventLog
from tests.factories import CLUSTER, FakeClock, make_node, make_service, make_task
from tests.helpers import wait_until

NODE = "n1"
KEYS = Keys()
WEB = make_service("web", replicas=1, ports=[{"container": 8080, "protocol": "tcp"}], restart={"delay": 0.0})
SLOW = make_service("slow", replicas=1, image="registry.test/slow:1")


# -- EngineWatch ---------------------------------------------------------------------------


async def test_the_engine_is_down_after_the_timeout_without_an_answer_and_up_at_the_first() -> None:
    clock = FakeClock()
    answers: list[Exception | None] = []

    async def ping() -> None:
        error = answers.pop(0)
        if error is not None:
            raise error

    watch = EngineWatch(ping, down_after=15.0, clock=clock)
    changes: list[bool] = []
    watch.on_change(changes.append)
    answers += [None, RuntimeUnavailable("connection refused")]
    await watch.check()
    clock.advance(14.0)
    await watch.check()
    assert watch.up and changes == [], "one failed ping within the timeout is not an outage"
    clock.advance(1.0)
    answers.append(RuntimeUnavailable("connection refused"))
    await watch.check()
    assert not watch.up and changes == [False]
    answers.append(RuntimeUnavailable("connection refused"))
    await watch.check()
    assert changes == [False], "said once"
    assert "has not answered for 15s" in watch.reason and "connection refused" in watch.reason
    answers.append(None)
    await watch.check()
    assert watch.up and watch.reason == "" and changes == [False, True]


async def test_a_ping_that_hangs_is_a_failed_ping_not_a_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "PING_BOUND", 0.05)
    clock = FakeClock()

    async def hang() -> None:
        await asyncio.Event().wait()

    watch = EngineWatch(hang, down_after=0.0, interval=0.01, clock=clock)
    async with asyncio.timeout(5):
        await watch.check()  # bounded by PING_BOUND
    assert not watch.up and "no answer to a ping" in watch.reason


# -- the agent while the engine is down ---------------------------------------------------


@dataclass
class World:
    store: MemoryStore
    runtime: FakeRuntime
    agent: Agent
    clock: FakeClock

    async def assign(self, *tasks: Assignment) -> None:
        for t in tasks:
            await self.store.put(KEYS.task(t.service, t.slot), t.to_json())

    async def reconcile(self) -> None:
        await self.agent.tasks.relist()
        await self.agent.reconcile()
        await self.agent.stopped()
        await self.agent.flush()  # status and endpoints go through the write queue

    async def status(self, task_id: str) -> TaskStatus:
        kv = await self.store.get(KEYS.status(task_id))
        assert kv is not None, f"no status for {task_id}"
        return TaskStatus.from_json(kv.value)

    async def endpoints(self, service: str) -> int:
        return len((await self.store.range(KEYS.endpoints(service)))[0])


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = MemoryStore()
    runtime = FakeRuntime()
    session = Session(store, ttl=10)
    await session.start()
    clock = FakeClock()
    engine = EngineWatch(runtime.ping, down_after=15.0, clock=clock)
    agent = Agent(
        store, KEYS, NODE, CLUSTER, runtime, session, EventLog(store, KEYS, NODE), "127.0.0.1",
        stop_timeout=1.0, drain=0.0, engine=engine,
    )  # fmt: skip
    for service in (WEB, SLOW):
        await store.put(KEYS.service(service.name), service.to_json())
    yield World(store, runtime, agent, clock)
    agent.pulls.cancel()


async def test_an_engine_down_past_its_timeout_withdraws_every_endpoint_and_reports_tasks_unknown(
    world: World,
) -> None:
    task = make_task(WEB, 1, NODE)
    await world.assign(task)
    await world.reconcile()
    await world.reconcile()
    assert await world.endpoints("web") == 1

    world.runtime.unavailable = True  # dockerd gone
    world.clock.advance(16.0)
    await world.agent.engine.check()
    assert not world.agent.engine.up
    await world.agent._engine_down()  # what `run` does instead of a pass while it is down
    await world.agent.flush()
    assert await world.endpoints("web") == 0, "a node whose engine is silent publishes no endpoint"
    status = await world.status(task.task_id)
    assert status.state == TaskState.UNKNOWN and "has not answered" in status.message

    world.runtime.unavailable = False
    await world.agent.engine.check()
    assert world.agent.engine.up
    await world.reconcile()  # re-adopts the container that kept running
    assert await world.endpoints("web") == 1
    assert (await world.status(task.task_id)).state == TaskState.RUNNING
    assert [c for c in world.runtime.calls if c[0] == "run"] == [("run", f"web.1.{task.task_id}")]


async def test_a_pass_that_ends_while_the_engine_is_down_publishes_no_endpoint(world: World) -> None:
    task = make_task(WEB, 1, NODE)
    await world.assign(task)
    await world.reconcile()
    world.clock.advance(16.0)
    world.agent.engine.failed("no answer to a ping within 1s")  # declared down mid-pass
    await world.agent._publish()
    await world.agent.flush()
    assert await world.endpoints("web") == 0


async def test_a_pass_hung_in_the_engine_does_not_delay_the_withdrawal(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = make_task(WEB, 1, NODE)
    await world.assign(task)
    await world.reconcile()
    await world.reconcile()
    assert await world.endpoints("web") == 1

    async def hang(labels: dict[str, str]) -> list[object]:
        await asyncio.Event().wait()
        return []

    monkeypatch.setattr(world.runtime, "list", hang)  # dockerd frozen: the next pass hangs in it
    stuck = asyncio.create_task(world.agent.reconcile())
    await asyncio.sleep(0.01)
    world.clock.advance(16.0)
    world.agent.engine.failed("no answer to a ping within 3s")

    async def withdrawn() -> bool:
        await world.agent.flush()  # the write queue's writer (`Agent.run` runs it)
        return await world.endpoints("web") == 0

    await wait_until(withdrawn, 5, 0.01, "the endpoint withdrawn while the pass still hangs")
    assert not stuck.done()
    assert (await world.status(task.task_id)).state == TaskState.UNKNOWN
    stuck.cancel()


async def test_the_leader_places_nothing_on_a_node_that_is_not_ready_and_moves_its_tasks() -> None:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
    caches = [asyncio.create_task(c.run()) for c in (loop.services, loop.nodes, loop.tasks)]
    try:
        for node in ("n1", "n2"):
            await store.put(KEYS.node(node), make_node(node).to_json())
        await store.put(KEYS.service("web"), make_service("web", replicas=4).to_json())

        async def tasks() -> dict[int, str]:
            kvs, _ = await store.range(KEYS.tasks)
            return {a.slot: a.node for a in (Assignment.from_json(kv.value) for kv in kvs)}

        async def settled() -> bool:
            await loop.reconcile()
            return len(await tasks()) == 4

        await wait_until(settled, 5, 0.01, "4 tasks placed")
        assert set((await tasks()).values()) == {"n1", "n2"}
        sick = replace(make_node("n2"), not_ready="the container engine has not answered for 15s")
        await store.put(KEYS.node("n2"), sick.to_json())

        async def moved() -> bool:
            await loop.reconcile()
            return set((await tasks()).values()) == {"n1"}

        await wait_until(moved, 5, 0.01, "every task on n1")
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


# -- pulls apart from the passes ----------------------------------------------------------


async def test_a_slow_pull_holds_up_no_pass_and_a_crashed_replica_restarts_meanwhile(world: World) -> None:
    web, slow = make_task(WEB, 1, NODE), make_task(SLOW, 1, NODE)
    world.runtime.missing_images.add("registry.test/slow:1")
    await world.assign(web, slow)
    async with asyncio.timeout(5):  # a pass that waited for the pull would never end here
        await world.reconcile()
    assert ("pull", "registry.test/slow:1") in world.runtime.calls
    status = await world.status(slow.task_id)
    assert status.state == TaskState.PULLING and status.message.startswith("pulling registry.test/slow:1")
    [first] = world.runtime.running()
    world.runtime.crash(first.id, exit_code=137)

    async with asyncio.timeout(5):
        await world.reconcile()  # the exited container is removed
        await world.reconcile()  # and its task started again, the pull still under way
    [second] = world.runtime.running()
    assert second.labels[LABELS.TASK] == web.task_id and second.id != first.id
    assert (await world.status(slow.task_id)).state == TaskState.PULLING
    assert world.agent.pulls.pulling() == ["registry.test/slow:1"]
    assert [c for c in world.runtime.calls if c[0] == "pull"] == [("pull", "registry.test/slow:1")], (
        "one pull per image, however many passes ask"
    )

    world.runtime.release_pull("registry.test/slow:1")
    await wait_until(lambda: not world.agent.pulls.pulling(), 5, 0.01, "the pull finished")
    await world.reconcile()
    assert (await world.status(slow.task_id)).state == TaskState.RUNNING


async def test_a_failed_pull_is_reported_in_the_task_status(world: World) -> None:
    slow = make_task(SLOW, 1, NODE)
    world.runtime.missing_images.add("registry.test/slow:1")
    await world.assign(slow)
    await world.reconcile()
    world.runtime.release_pull("registry.test/slow:1", error="manifest for registry.test/slow:1 not found")
    await wait_until(lambda: not world.agent.pulls.pulling(), 5, 0.01, "the pull finished")
    await world.reconcile()
    status = await world.status(slow.task_id)
    assert (
        status.state == TaskState.FAILED and "manifest for registry.test/slow:1 not found" in status.message
    )
    assert world.runtime.running() == []


async def test_a_pull_past_its_deadline_is_abandoned_and_reported() -> None:
    runtime = FakeRuntime()
    runtime.missing_images.add("registry.test/slow:1")
    woken = asyncio.Event()
    pulls = Pulls(runtime, woken.set, timeout=0.05)
    assert await pulls.ready("registry.test/slow:1") is False
    async with asyncio.timeout(5):
        await woken.wait()
    with pytest.raises(ImageError, match=r"did not finish within 0.05s \(pull_timeout\)"):
        await pulls.ready("registry.test/slow:1")
    assert await pulls.ready("registry.test/slow:1") is False, "asked again (after a back-off): a new pull"
    pulls.cancel()


# -- DockerRuntime.ping against an engine socket that accepts and never answers ----------


async def test_a_docker_ping_to_a_hung_engine_fails_within_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker_runtime, "PING_TIMEOUT", 0.3)
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, never answered: a hung dockerd

    server = await asyncio.start_unix_server(hold, str(tmp_path / "docker.sock"))
    runtime = docker_runtime.DockerRuntime(f"unix://{tmp_path / 'docker.sock'}")
    try:
        async with asyncio.timeout(5):
            results = await asyncio.gather(runtime.ping(), runtime.ping(), return_exceptions=True)
        assert all(isinstance(r, RuntimeUnavailable) for r in results), results
        assert "cannot reach the Docker engine" in str(results[0])
        assert len(held) == 1, "two callers at once share one ping"
    finally:
        server.close()
        for writer in held:
            writer.close()
        await runtime.close()


async def test_a_ping_every_caller_gave_up_on_leaves_no_unread_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's own deadline (shorter than PING_TIMEOUT) cancels its wait; the shared ping
    then failed with no reader, and asyncio logged "Future exception was never retrieved"
    at ERROR when it was collected: noise in the daemon's log, and in whichever test ran."""
    monkeypatch.setattr(docker_runtime, "PING_TIMEOUT", 0.3)
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_unix_server(hold, str(tmp_path / "docker.sock"))
    runtime = docker_runtime.DockerRuntime(f"unix://{tmp_path / 'docker.sock'}")
    unread: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unread.append(context))
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(runtime.ping(), 0.05)
        pinging = runtime._pinging
        assert pinging is not None
        await wait_until(pinging.done, 5, message="the abandoned ping ends at PING_TIMEOUT")
        del pinging
        runtime._pinging = None
        gc.collect()
        assert not unread, unread
    finally:
        server.close()
        for writer in held:
            writer.close()
        await runtime.close()
