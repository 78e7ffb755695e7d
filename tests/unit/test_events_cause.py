"""A cause id from the API's write, through the leader's placements, to the agent's starts
and failures (issue 14); and the API's checks of the event filters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from leader.loop import LeaderLoop
from node.agent.agent import Agent
from node.api.servicer import event_filter
from node.api.services import ServiceWriter
from node.api.stacks import StackWriter
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import Assignment, Event, ServiceRecord
from node.model.errors import InvalidArgument
from node.model.keys import Keys
from node.pb import api_pb2
from node.runtime.base import ImageError
from node.store.memory import MemoryStore
from node.store.session import Session
from node.telemetry.events import EventLog, Filter
from tests.factories import CLUSTER, make_node, make_service, make_task
from tests.helpers import mirrors_caught_up

KEYS = Keys()


def queued(log: EventLog) -> list[Event]:
    out = []
    while not log._queue.empty():
        out.append(log._queue.get_nowait())
    return out


# -- the API's write ----------------------------------------------------------------------


async def test_every_new_version_gets_its_own_cause_and_an_unchanged_apply_keeps_it() -> None:
    writer = ServiceWriter(MemoryStore(), KEYS, "n1")
    v1, changed = await writer.apply("name: web\nimage: shoal/demo:1\n", "web.yaml")
    assert changed and v1.cause.startswith("c") and len(v1.cause) == 13
    same, changed = await writer.apply("name: web\nimage: shoal/demo:1\n", "web.yaml")
    assert not changed and same.cause == v1.cause
    v2 = await writer.scale("web", 3)
    v3, _ = await writer.apply("name: web\nimage: shoal/demo:2\nreplicas: 3\n", "web.yaml")
    v4 = await writer.rollback("web")
    causes = [v1.cause, v2.cause, v3.cause, v4.cause]
    assert len(set(causes)) == 4, causes
    stored = ServiceRecord.from_json((await writer.store.get(KEYS.service("web"))).value)  # type: ignore[union-attr]
    assert stored.cause == v4.cause, "the cause is stored with the version"


async def test_a_stack_deploy_gives_every_version_it_makes_one_cause() -> None:
    store = MemoryStore()
    stacks = StackWriter(ServiceWriter(store, KEYS, "n1"))
    app = "name: shop\nservices:\n  db: {image: shoal/demo}\n  web: {image: shoal/demo, replicas: 2}\n"
    _, changes = await stacks.deploy(app, "app.yaml")
    (cause,) = {c.cause for c in changes}
    kvs, _ = await store.range(KEYS.services)
    assert {ServiceRecord.from_json(kv.value).cause for kv in kvs} == {cause} and cause
    _, again = await stacks.deploy(app, "app.yaml")
    assert {(c.action, c.cause) for c in again} == {("unchanged", "")}, "nothing made, no cause"


# -- the leader ---------------------------------------------------------------------------


@pytest.fixture
async def leader() -> AsyncIterator[tuple[MemoryStore, LeaderLoop, EventLog]]:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    log = EventLog(store, KEYS, "n1")
    loop = LeaderLoop(store, KEYS, epoch, log)
    caches = [asyncio.create_task(c.run()) for c in (loop.services, loop.nodes, loop.tasks)]
    try:
        yield store, loop, log
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


async def test_the_leader_copies_the_versions_cause_into_its_tasks_and_events(
    leader: tuple[MemoryStore, LeaderLoop, EventLog],
) -> None:
    store, loop, log = leader
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    await store.put(KEYS.node("n2"), make_node("n2").to_json())

    async def version(record: ServiceRecord) -> dict[int, Assignment]:
        await store.put(KEYS.service("web"), record.to_json())
        await mirrors_caught_up(store, (loop.services, loop.nodes, loop.tasks))
        await loop.reconcile()
        kvs, _ = await store.range(KEYS.tasks)
        return {a.slot: a for a in (Assignment.from_json(kv.value) for kv in kvs)}

    tasks = await version(replace(make_service("web", replicas=2), cause="c000000000001"))
    assert {t.cause for t in tasks.values()} == {"c000000000001"}
    placed = [e for e in queued(log) if e.kind == "task.placed"]
    assert [(e.cause, e.task) for e in placed] == [("c000000000001", tasks[s].task_id) for s in (1, 2)]

    tasks = await version(replace(make_service("web", replicas=3, version=2), cause="c000000000002"))
    assert [tasks[s].cause for s in (1, 2, 3)] == ["c000000000001", "c000000000001", "c000000000002"]
    placed = [e for e in queued(log) if e.kind == "task.placed"]
    assert [(e.cause, e.task) for e in placed] == [("c000000000002", tasks[3].task_id)]


# -- the agent ----------------------------------------------------------------------------


async def test_the_agent_s_start_and_failure_events_carry_the_task_s_cause() -> None:
    store = MemoryStore()
    runtime = FakeRuntime()
    session = Session(store, ttl=10)
    await session.start()
    log = EventLog(store, KEYS, "n1")
    agent = Agent(store, KEYS, "n1", CLUSTER, runtime, session, log, "127.0.0.1", stop_timeout=1.0, drain=0.0)
    web = make_service("web", replicas=2)
    await store.put(KEYS.service("web"), web.to_json())
    good = replace(make_task(web, 1, "n1"), cause="c00000000000a")
    bad = replace(make_task(web, 2, "n1"), cause="c00000000000b")
    for t in (good, bad):
        await store.put(KEYS.task(t.service, t.slot), t.to_json())
    runtime.fail_next_run(ImageError("pull access denied for web"))
    await agent.tasks.relist()
    await agent.reconcile()
    got = {(e.kind, e.task): e.cause for e in queued(log) if e.kind in ("task.started", "task.failed")}
    assert sorted(got.values()) == ["c00000000000a", "c00000000000b"], got
    assert {kind for kind, _ in got} == {"task.started", "task.failed"}
    assert all(cause == (good if task == good.task_id else bad).cause for (_, task), cause in got.items())


# -- the API's filters --------------------------------------------------------------------


def test_event_filters_are_checked_and_name_what_to_fix() -> None:
    request = api_pb2.StreamEventsRequest(service="web", kind="task.", cause="c0123456789ab", since=5)
    ok = event_filter(request)
    assert ok == Filter(5.0, "web", "task.", "c0123456789ab")
    for request, what in (
        (api_pb2.StreamEventsRequest(kind="Task Started"), "kind"),
        (api_pb2.StreamEventsRequest(cause="abc"), "cause"),
        (api_pb2.StreamEventsRequest(service="Web!"), "service"),
        (api_pb2.StreamEventsRequest(since=-1), "since"),
        (api_pb2.StreamEventsRequest(since=float("nan")), "since"),
        (api_pb2.StreamEventsRequest(since=float("inf")), "since"),
    ):
        with pytest.raises(InvalidArgument, match=f"^{what}: "):
            event_filter(request)
