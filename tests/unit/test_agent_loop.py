"""The agent's shell (`node.agent.agent.Agent`) on a MemoryStore and a FakeRuntime.

Each test drives passes by hand: re-list the mirror of `tasks/`, then `reconcile()`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from node.agent.agent import Agent
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import Assignment, EndpointRecord, ServiceRecord, TaskState, TaskStatus
from node.model.keys import Keys
from node.runtime.base import LABELS, Container, ContainerSpec, ImageError
from node.store.memory import MemoryStore
from node.store.session import Session
from node.telemetry.events import EventLog
from tests.factories import CLUSTER, make_service, make_task, respec
from tests.helpers import wait_until

NODE = "n1"
ADDRESS = "127.0.0.1"
KEYS = Keys()


class RecordingRuntime(FakeRuntime):
    """A FakeRuntime that also notes the store's revision at each call."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self.store = store
        self.revisions: list[int] = []

    def _record(self, *call: str) -> None:
        self.revisions.append(self.store.revision)
        super()._record(*call)


@dataclass
class World:
    store: MemoryStore
    runtime: RecordingRuntime
    session: Session
    agent: Agent

    async def assign(self, *tasks: Assignment) -> None:
        for t in tasks:
            await self.store.put(KEYS.task(t.service, t.slot), t.to_json())

    async def add_service(self, service: ServiceRecord) -> None:
        await self.store.put(KEYS.service(service.name), service.to_json())

    async def reconcile(self) -> None:
        await self.agent.tasks.relist()
        await self.agent.reconcile()
        await self.agent.stopped()
        await self.agent.flush()

    async def status(self, task_id: str) -> TaskStatus | None:
        kv = await self.store.get(KEYS.status(task_id))
        return None if kv is None else TaskStatus.from_json(kv.value)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = MemoryStore()
    runtime = RecordingRuntime(store)
    session = Session(store, ttl=10)
    await session.start()
    events = EventLog(store, KEYS, NODE)
    agent = Agent(store, KEYS, NODE, CLUSTER, runtime, session, events, ADDRESS, stop_timeout=1.0, drain=0.0)
    yield World(store, runtime, session, agent)


WEB = make_service("web", replicas=2, ports=[{"container": 8080, "protocol": "tcp"}])


async def test_assigned_tasks_are_started_labelled_and_published(world: World) -> None:
    t1, t2 = make_task(WEB, 1, NODE, epoch=3), make_task(WEB, 2, NODE, epoch=3)
    elsewhere = make_task(WEB, 3, "n2")
    await world.add_service(WEB)
    await world.assign(t1, t2, elsewhere)

    await world.reconcile()
    assert [c[1] for c in world.runtime.calls if c[0] == "run"] == [
        f"web.1.{t1.task_id}",
        f"web.2.{t2.task_id}",
    ]
    [c1] = [c for c in world.runtime.running() if c.labels[LABELS.TASK] == t1.task_id]
    assert c1.labels == {
        LABELS.CLUSTER: CLUSTER,
        LABELS.NODE: NODE,
        LABELS.SERVICE: "web",
        LABELS.SLOT: "1",
        LABELS.TASK: t1.task_id,
        LABELS.EPOCH: "3",
        LABELS.VERSION: "1",
    }
    status = await world.status(t1.task_id)
    assert status is not None
    assert (status.state, status.node, status.container_id) == (TaskState.RUNNING, NODE, c1.id)
    assert (status.address, status.host_port) == (ADDRESS, c1.host_ports[8080])
    assert await world.status(elsewhere.task_id) is None

    await world.reconcile()  # a running container is published as an endpoint
    kv = await world.store.get(KEYS.endpoint("web", t1.task_id))
    assert kv is not None and kv.lease == world.session.lease
    assert EndpointRecord.from_json(kv.value) == EndpointRecord(
        t1.task_id, "web", NODE, ADDRESS, c1.host_ports[8080], 8080, {"8080": c1.host_ports[8080]}, c1.ip
    )  # with the container's address (issue 17: the mesh of this node goes there directly)
    status_kv = await world.store.get(KEYS.status(t1.task_id))
    assert status_kv is not None and status_kv.lease == world.session.lease
    assert len((await world.store.range(KEYS.endpoints("web")))[0]) == 2
    assert len(world.runtime.running()) == 2


async def test_an_unassigned_task_is_withdrawn_before_it_is_stopped(world: World) -> None:
    t1 = make_task(WEB, 1, NODE)
    await world.add_service(WEB)
    await world.assign(t1)
    await world.reconcile()
    await world.reconcile()
    endpoint = KEYS.endpoint("web", t1.task_id)
    assert await world.store.get(endpoint) is not None
    [c1] = world.runtime.running()

    await world.store.delete(KEYS.task("web", 1))
    await world.reconcile()
    assert world.runtime.running() == []
    withdrawn = [
        b.revision
        for b in world.store.history
        for ev in b.events
        if ev.kind == "delete" and ev.kv.key == endpoint
    ]
    stop = world.runtime.calls.index(("stop", c1.id))
    assert len(withdrawn) == 1 and withdrawn[0] <= world.runtime.revisions[stop], (
        "the endpoint must be gone from etcd before the container is stopped"
    )
    assert await world.store.get(KEYS.status(t1.task_id)) is None


async def test_a_crashed_container_is_replaced_and_restarts_counted(world: World) -> None:
    t1 = make_task(WEB, 1, NODE)
    # No restart delay: the back-off itself is tested in test_agent_health.py.
    await world.add_service(respec(WEB, restart={"delay": 0.0}))
    await world.assign(t1)
    await world.reconcile()
    await world.reconcile()
    [first] = world.runtime.running()
    world.runtime.crash(first.id, exit_code=137)

    await world.reconcile()  # removes the exited container, reports it
    assert await world.store.get(KEYS.endpoint("web", t1.task_id)) is None
    status = await world.status(t1.task_id)
    assert status is not None
    assert (status.state, status.exit_code, status.restarts) == (TaskState.EXITED, 137, 1)
    assert ("remove", first.id) in world.runtime.calls

    await world.reconcile()  # starts it anew
    [second] = world.runtime.running()
    assert second.id != first.id and second.name == first.name
    status = await world.status(t1.task_id)
    assert status is not None and (status.state, status.restarts) == (TaskState.RUNNING, 1)


async def test_other_nodes_and_clusters_are_never_touched(world: World) -> None:
    t1 = make_task(WEB, 1, NODE)
    await world.add_service(WEB)
    await world.assign(t1)
    rt = world.runtime

    def foreign(name: str, cluster: str, node: str, task_id: str) -> ContainerSpec:
        labels = {LABELS.CLUSTER: cluster, LABELS.NODE: node, LABELS.SERVICE: "web", LABELS.TASK: task_id}
        return ContainerSpec(name=name, image="x", labels=labels)

    other_node = await rt.run(foreign("other-node", CLUSTER, "n2", "stray"))
    other_cluster = await rt.run(foreign("other-cluster", "other", NODE, "stray"))
    same_task_other_cluster = await rt.run(foreign("twin", "other", NODE, t1.task_id))
    rt.crash(other_cluster.id)
    rt.calls.clear()

    for _ in range(3):
        await world.reconcile()
    touched = {c[1] for c in rt.calls if c[0] in ("stop", "remove")}
    assert touched.isdisjoint({other_node.id, other_cluster.id, same_task_other_cluster.id})
    assert {other_node.id, other_cluster.id, same_task_other_cluster.id} <= set(rt.containers)
    lists = [c for c in rt.calls if c[0] == "list"]
    assert lists and all(c[1:] == (f"{LABELS.CLUSTER}={CLUSTER}", f"{LABELS.NODE}={NODE}") for c in lists)
    mine = [c for c in rt.running() if c.labels[LABELS.CLUSTER] == CLUSTER and c.labels[LABELS.NODE] == NODE]
    assert [c.labels[LABELS.TASK] for c in mine] == [t1.task_id]


async def test_a_failed_run_is_retried_with_back_off(world: World) -> None:
    t1 = make_task(WEB, 1, NODE)
    await world.add_service(WEB)
    await world.assign(t1)
    world.runtime.fail_next_run(ImageError("image shoal-demo/web:1 is not present"))
    world.runtime.fail_next_run(ImageError("image shoal-demo/web:1 is still not present"))

    attempts: list[float] = []  # when each `run` was called (not when its pass ended)
    run = world.runtime.run

    async def timed_run(spec: ContainerSpec) -> Container:
        attempts.append(time.monotonic())
        return await run(spec)

    world.runtime.run = timed_run  # type: ignore[method-assign]

    async def attempt_count(n: int) -> bool:
        await world.reconcile()
        return len(attempts) >= n

    await attempt_count(1)
    status = await world.status(t1.task_id)
    assert status is not None and status.state == TaskState.FAILED
    assert "is not present" in status.message
    await world.reconcile()
    # no second attempt before the back-off (on a loaded machine the pass may come after it)
    assert len(attempts) == 1 or attempts[1] - attempts[0] >= 0.5, "a second attempt within the back-off"

    await wait_until(lambda: attempt_count(2), timeout=5, interval=0.02, message="second attempt")
    status = await world.status(t1.task_id)
    assert status is not None and status.state == TaskState.FAILED
    assert "still not present" in status.message
    await wait_until(lambda: attempt_count(3), timeout=5, interval=0.02, message="third attempt")
    first_gap, second_gap = attempts[1] - attempts[0], attempts[2] - attempts[1]
    assert first_gap >= 0.5 and second_gap >= 1.0, "the back-off doubles"
    status = await world.status(t1.task_id)
    assert status is not None and status.state == TaskState.RUNNING
    assert len(world.runtime.running()) == 1


async def test_a_missing_spec_is_reported_as_failed(world: World) -> None:
    t1 = make_task(WEB, 1, NODE)
    await world.assign(t1)  # no services/web in etcd
    await world.reconcile()
    status = await world.status(t1.task_id)
    assert status is not None and status.state == TaskState.FAILED
    assert "spec of web version 1" in status.message
    assert world.runtime.containers == {}


async def test_a_replica_drains_after_withdrawal_before_it_is_stopped(world: World) -> None:
    world.agent.stopper.drain = 0.3
    t1 = make_task(WEB, 1, NODE)
    await world.add_service(WEB)
    await world.assign(t1)
    await world.reconcile()
    [c1] = world.runtime.running()

    await world.store.delete(KEYS.task("web", 1))
    await world.agent.tasks.relist()
    started = time.monotonic()
    await world.agent.reconcile()
    await world.agent.reconcile()  # a pass while it drains does not stop it twice

    async def withdrawn() -> bool:
        return await world.store.get(KEYS.endpoint("web", t1.task_id)) is None

    await wait_until(withdrawn, timeout=0.2, interval=0.01, message="withdrawn at once")
    assert world.runtime.running() == [c1], "still serving what is in flight while it drains"
    await world.agent.stopped()
    assert time.monotonic() - started >= 0.3
    assert world.runtime.running() == []
    assert world.runtime.calls.count(("stop", c1.id)) == 1


async def test_an_old_task_handing_off_keeps_running_until_the_handoff_is_released(world: World) -> None:
    old = make_task(WEB, 1, NODE, task_id="t-old")
    await world.add_service(WEB)
    await world.assign(old)
    await world.reconcile()
    [c_old] = world.runtime.running()

    new = replace(make_task(WEB, 1, NODE, task_id="t-new"), handoff=json.loads(old.to_json()))
    await world.assign(new)
    await world.reconcile()
    assert {c.labels[LABELS.TASK] for c in world.runtime.running()} == {"t-old", "t-new"}
    assert await world.store.get(KEYS.endpoint("web", "t-old")) is not None, "still serving"

    await world.assign(replace(new, handoff={}))  # the leader saw t-new ready: released
    await world.reconcile()
    assert {c.labels[LABELS.TASK] for c in world.runtime.running()} == {"t-new"}
    assert c_old not in world.runtime.running()
