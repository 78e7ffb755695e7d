"""`depends_on: {job: completed}` (Compose's `service_completed_successfully`, issue 18):
the stack mapping, the check that the dependency is a job, and the leader's gate, which
places the dependent service's first task only once the job's record says succeeded."""

from __future__ import annotations

import asyncio
import json

import pytest

from leader.loop import LeaderLoop
from node.compose.stackfile import parse_stack
from node.compose.translate import translate
from node.model.domain import Assignment, TaskState, TaskStatus
from node.model.keys import Keys
from node.model.spec import SpecError
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_node, make_service
from tests.helpers import mirrors_caught_up

KEYS = Keys()
COMPOSE = """\
services:
  migrate:
    image: app:1
    restart: "no"
    deploy: {restart_policy: {condition: none}}
  web:
    image: app:1
    depends_on: {migrate: {condition: service_completed_successfully}}
"""


def test_compose_maps_completed_successfully_to_completed() -> None:
    doc = translate(COMPOSE, name="shop").document
    _, specs = parse_stack(json.dumps(doc), "compose.yaml")
    by_name = {s.name: s for s in specs}
    assert by_name["shop_migrate"].kind == "job"
    assert by_name["shop_web"].depends_on == {"shop_migrate": "completed"}


def test_completed_on_a_service_that_is_not_a_job_is_refused() -> None:
    text = COMPOSE.replace('    restart: "no"\n    deploy: {restart_policy: {condition: none}}\n', "")
    doc = translate(text, name="shop").document
    with pytest.raises(SpecError, match=r"services.web.depends_on: 'migrate' is not a job"):
        parse_stack(json.dumps(doc), "compose.yaml")


async def test_the_dependent_service_starts_once_the_job_succeeded() -> None:
    store = MemoryStore()
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    migrate = make_service("migrate", kind="job")
    web = make_service("web", replicas=2, depends_on={"migrate": "completed"})
    for s in (migrate, web):
        await store.put(KEYS.service(s.name), s.to_json())
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
    caches = (loop.services, loop.nodes, loop.tasks, loop.statuses)
    running = [asyncio.create_task(c.run()) for c in caches]

    async def placed() -> dict[str, list[Assignment]]:
        await mirrors_caught_up(store, caches)
        await loop.reconcile()
        kvs, _ = await store.range(KEYS.tasks)
        out: dict[str, list[Assignment]] = {}
        for a in (Assignment.from_json(kv.value) for kv in kvs):
            out.setdefault(a.service, []).append(a)
        return out

    async def end(task: Assignment, code: int) -> None:
        state = TaskState.EXITED if code == 0 else TaskState.FAILED
        status = TaskStatus(
            task.task_id, task.service, task.slot, task.node, state, exit_code=code, terminal=True
        )
        await store.put(KEYS.status(task.task_id), status.to_json())

    try:
        first = await placed()
        assert list(first) == ["migrate"], "web waits while the job runs"
        pending = await store.get(KEYS.pending("web"))
        assert pending is not None and b"migrate (completed)" in pending.value
        await end(first["migrate"][0], 0)
        await placed()  # the job's record says succeeded in this pass
        assert len((await placed()).get("web", [])) == 2
    finally:
        for t in running:
            t.cancel()


async def test_a_failed_job_keeps_its_dependent_waiting() -> None:
    store = MemoryStore()
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    for s in (make_service("migrate", kind="job"), make_service("web", depends_on={"migrate": "completed"})):
        await store.put(KEYS.service(s.name), s.to_json())
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
    caches = (loop.services, loop.nodes, loop.tasks, loop.statuses)
    running = [asyncio.create_task(c.run()) for c in caches]
    try:
        for _ in range(3):
            await mirrors_caught_up(store, caches)
            await loop.reconcile()
            kvs, _ = await store.range(KEYS.tasks)
            for a in (Assignment.from_json(kv.value) for kv in kvs):
                status = TaskStatus(
                    a.task_id, a.service, a.slot, a.node, TaskState.FAILED, exit_code=1, terminal=True
                )
                await store.put(KEYS.status(a.task_id), status.to_json())
        kvs, _ = await store.range(KEYS.tasks)
        assert {Assignment.from_json(kv.value).service for kv in kvs} == {"migrate"}
    finally:
        for t in running:
            t.cancel()
