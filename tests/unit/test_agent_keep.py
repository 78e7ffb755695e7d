"""The agent keeps the last N exited containers per slot for their logs (decision 71).

On a MemoryStore and a FakeRuntime, passes driven by hand: a replaced task's container
is stopped and kept (never started again, never published), a crashed one is kept and
its task restarts in a new container beside it, only the newest N per slot stay, a
removed service or a job takes its kept containers with it, and the engine not
answering a removal, or a daemon dying between a stop and a removal, is made good by a
later pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from node.agent.agent import Agent
from node.agent.volumes import blocked
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import Assignment, ServiceRecord, TaskState, TaskStatus
from node.model.keys import Keys
from node.runtime.base import LABELS, Container, EngineError
from node.store.memory import MemoryStore
from node.store.session import Session
from node.telemetry.events import EventLog
from tests.factories import CLUSTER, make_container, make_service, make_task, respec

NODE = "n1"
KEYS = Keys()
WEB = make_service("web", replicas=1, ports=[{"container": 8080, "protocol": "tcp"}], restart={"delay": 0.0})


class FlakyRuntime(FakeRuntime):
    """`refuse_removals`: every `remove` raises, as an engine that does not answer."""

    refuse_removals = False

    async def remove(self, container_id: str) -> None:
        if self.refuse_removals:
            self._record("remove-refused", container_id)
            raise EngineError("the engine did not answer")
        await super().remove(container_id)


@dataclass
class World:
    store: MemoryStore
    runtime: FlakyRuntime
    session: Session
    agent: Agent

    async def assign(self, *tasks: Assignment) -> None:
        for t in tasks:
            await self.store.put(KEYS.task(t.service, t.slot), t.to_json())

    async def add_service(self, service: ServiceRecord) -> None:
        await self.store.put(KEYS.service(service.name), service.to_json())

    async def reconcile(self, times: int = 1) -> None:
        for _ in range(times):
            await self.agent.tasks.relist()
            await self.agent.history.services.relist()
            await self.agent.reconcile()
            await self.agent.stopped()
            await self.agent.flush()

    def of(self, service: str = "web") -> list[Container]:
        return [c for c in self.runtime.containers.values() if c.labels.get(LABELS.SERVICE) == service]

    def exited(self, service: str = "web") -> list[Container]:
        return [c for c in self.of(service) if not c.running]

    async def status(self, task_id: str) -> TaskStatus | None:
        kv = await self.store.get(KEYS.status(task_id))
        return None if kv is None else TaskStatus.from_json(kv.value)


async def make_world(
    history: int, runtime: FlakyRuntime | None = None, store: MemoryStore | None = None
) -> World:
    store = store or MemoryStore()
    runtime = runtime or FlakyRuntime()
    session = Session(store, ttl=10)
    await session.start()
    events = EventLog(store, KEYS, NODE)
    agent = Agent(
        store,
        KEYS,
        NODE,
        CLUSTER,
        runtime,
        session,
        events,
        "127.0.0.1",
        stop_timeout=1.0,
        drain=0.0,
        history=history,
    )
    return World(store, runtime, session, agent)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    yield await make_world(history=2)


_IDS = iter(range(1, 1_000_000))


async def replace_task(world: World, slot: int = 1, service: ServiceRecord = WEB) -> Assignment:
    """An update: the slot gets a new task; its old task's container is stopped."""
    task = replace(
        make_task(service, slot, NODE, task_id=f"{service.name}-{slot}-t{next(_IDS)}"), uid=service.uid
    )
    await world.assign(task)
    await world.reconcile(2)
    return task


async def test_a_replaced_task_s_container_is_stopped_and_kept(world: World) -> None:
    await world.add_service(WEB)
    old = await replace_task(world)
    [first] = world.runtime.running()
    new = await replace_task(world)

    [kept] = world.exited()
    assert kept.id == first.id and ("stop", first.id) in world.runtime.calls
    assert ("remove", first.id) not in world.runtime.calls
    [running] = world.runtime.running()
    assert running.labels[LABELS.TASK] == new.task_id
    endpoints, _ = await world.store.range(KEYS.endpoints("web"))
    assert [e.key for e in endpoints] == [KEYS.endpoint("web", new.task_id)], "a kept one is never published"
    assert await world.status(old.task_id) is None, "nor counted: its status went with its assignment"

    await world.reconcile(3)  # never started again, never touched
    assert [c.id for c in world.exited()] == [first.id]
    assert not [c for c in world.runtime.calls if c[0] in ("run", "stop") and c[1] == first.id][1:]


async def test_a_crashed_task_restarts_beside_its_kept_container(world: World) -> None:
    await world.add_service(WEB)
    task = await replace_task(world)
    [first] = world.runtime.running()
    world.runtime.crash(first.id, exit_code=3)

    await world.reconcile()  # decided, kept, renamed out of the way, started anew
    [second] = world.runtime.running()
    [kept] = world.exited()
    assert kept.id == first.id and kept.name == f"{first.name}.{first.id[:12]}"
    assert second.name == first.name and second.labels[LABELS.TASK] == task.task_id
    status = await world.status(task.task_id)
    assert status is not None and (status.state, status.restarts) == (TaskState.RUNNING, 1)

    await world.reconcile(2)
    assert [c.id for c in world.runtime.running()] == [second.id], "the kept one is never restarted"


async def test_only_the_newest_n_per_slot_stay(world: World) -> None:
    await world.add_service(WEB)
    await world.add_service(respec(make_service("api"), restart={"delay": 0.0}))
    await replace_task(world, service=make_service("api"))  # another service's slot 1: its own count
    firsts = []
    for _ in range(5):
        await replace_task(world)
        firsts.append(
            world.runtime.running()[-1].id if False else next(c.id for c in world.of() if c.running)
        )
    await world.reconcile()
    kept = sorted(world.exited(), key=lambda c: c.finished_at)
    assert [c.id for c in kept] == firsts[-3:-1], "limit 2: the two newest exited (the running one apart)"
    assert len(world.of("api")) == 1


async def test_a_removed_service_takes_its_kept_containers(world: World) -> None:
    await world.add_service(WEB)
    await replace_task(world)
    await replace_task(world)
    assert len(world.of()) == 2
    await world.store.delete(KEYS.task("web", 1))
    await world.store.delete(KEYS.service("web"))
    await world.reconcile(2)
    assert world.of() == []


async def test_a_service_created_again_does_not_keep_the_old_one_s(world: World) -> None:
    first = replace(WEB, uid="u-1")
    await world.add_service(first)
    await replace_task(world, service=first)
    await replace_task(world, service=first)
    second = replace(WEB, uid="u-2")
    await world.add_service(second)
    await world.assign(replace(make_task(second, 1, NODE, task_id="web-again"), uid="u-2"))
    await world.reconcile(3)
    assert {c.labels.get(LABELS.UID) for c in world.of()} == {"u-2"}


async def test_a_job_keeps_nothing_past_its_assignment(world: World) -> None:
    job = make_service("batch", kind="job", command=["true"])
    await world.add_service(job)
    await replace_task(world, service=job)
    world.runtime.crash(world.runtime.running()[0].id, exit_code=0)
    await world.reconcile()
    assert len(world.exited("batch")) == 1, "its task is assigned: its container stays (decision 69)"
    await world.store.delete(KEYS.task("batch", 1))
    await world.reconcile(2)
    assert world.of("batch") == []


async def test_the_engine_not_answering_a_removal_is_retried_next_pass(world: World) -> None:
    await world.add_service(WEB)
    for _ in range(3):
        await replace_task(world)
    world.runtime.refuse_removals = True
    await replace_task(world)
    assert len(world.exited()) == 3, "past the limit while the engine does not answer"
    world.runtime.refuse_removals = False
    await world.reconcile()
    assert len(world.exited()) == 2


async def test_a_daemon_dying_between_stop_and_removal_leaves_nothing_past_the_limit() -> None:
    runtime, store = FlakyRuntime(), MemoryStore()
    before = await make_world(history=5, runtime=runtime, store=store)
    await before.add_service(WEB)
    for _ in range(6):
        await replace_task(before)
    assert len(before.exited()) == 5
    after = await make_world(history=2, runtime=runtime, store=store)  # restarted, a lower limit
    await after.reconcile()
    kept = sorted(after.exited(), key=lambda c: c.finished_at)
    assert len(kept) == 2 and len(runtime.running()) == 1


async def test_limit_zero_removes_at_once() -> None:
    world = await make_world(history=0)
    await world.add_service(WEB)
    await replace_task(world)
    [first] = world.runtime.running()
    await replace_task(world)
    world.runtime.crash(world.runtime.running()[0].id)
    await world.reconcile(2)
    assert world.exited() == [] and first.id not in world.runtime.containers


def test_a_kept_container_does_not_block_its_slot_s_volumes() -> None:
    old, new = make_task("db", 1, NODE, task_id="old"), make_task("db", 1, NODE, task_id="new")
    assert blocked(new, [make_container(old, state="exited")]) == ""
    assert "waiting for" in blocked(new, [make_container(old, state="running")])
    assert "waiting for" in blocked(new, [make_container(old, state="created")])


async def test_a_container_that_never_started_is_removed_not_kept(world: World) -> None:
    """A daemon killed between create and start leaves a `created` container: when its task
    is replaced it is removed (no logs to keep), where keeping it blocked the slot's
    volumes for good (a `created` one counts as not stopped yet)."""
    await world.add_service(WEB)
    old = await replace_task(world)
    [first] = world.runtime.running()
    world.runtime.containers[first.id] = replace(first, state="created")  # as if never started
    new = await replace_task(world)
    assert [c.labels[LABELS.TASK] for c in world.of()] == [new.task_id], "the old one removed, not kept"
    [running] = world.runtime.running()
    assert running.labels[LABELS.TASK] == new.task_id != old.task_id
    assert blocked(new, list(world.runtime.containers.values())) == ""


async def test_a_removal_the_engine_refuses_does_not_stop_the_pass() -> None:
    """History 0: an exited container is removed by the pass itself. Docker refusing it
    ("device or resource busy") ended every pass there: no other task started, no status
    was published. Its own task waits for the removal (the new one takes its name)."""
    world = await make_world(history=0)
    await world.add_service(WEB)
    await replace_task(world)
    [first] = world.runtime.running()
    world.runtime.crash(first.id, exit_code=3)
    world.runtime.refuse_removals = True
    api = make_service("api", replicas=1, ports=[{"container": 8080, "protocol": "tcp"}])
    await world.add_service(api)
    other = await replace_task(world, service=api)
    [started] = world.runtime.running()
    assert started.labels[LABELS.TASK] == other.task_id, "the other service's task started all the same"
    status = await world.status(other.task_id)
    assert status is not None and status.state == TaskState.RUNNING, "and its status published"
    world.runtime.refuse_removals = False
    await world.reconcile(2)
    assert first.id not in world.runtime.containers or world.runtime.containers[first.id].running
    assert len(world.runtime.running()) == 2, "the crashed one restarted once the engine lets it go"
