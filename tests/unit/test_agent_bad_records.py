"""One unreadable record (a volume claim, a secret) written around the API must cost only
what depends on it: the agent's pass goes on for every other task and claim."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from node.agent.agent import Agent
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import TaskStatus, UnreadableRecord, VolumeClaim, read_claim
from node.model.keys import Keys
from node.runtime.base import LABELS
from node.security.objects import ObjectRecord
from node.store.memory import MemoryStore
from node.store.session import Session
from node.telemetry.events import EventLog
from tests.factories import CLUSTER, make_service, make_task

NODE = "n1"
KEYS = Keys()
GOOD = VolumeClaim("db", 1, "data", NODE, "t0", uid="u1", removing=True)
BAD_CLAIMS = [
    b"not json",
    b"[1, 2]",
    b'{"service": "x"}',
    json.dumps({**json.loads(GOOD.to_json()), "slot": "1"}).encode(),
    json.dumps({**json.loads(GOOD.to_json()), "removing": "yes"}).encode(),
    json.dumps({**json.loads(GOOD.to_json()), "node": ["n1"]}).encode(),
]


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    store = MemoryStore()
    session = Session(store, ttl=10)
    await session.start()
    yield Agent(store, KEYS, NODE, CLUSTER, FakeRuntime(), session, EventLog(store, KEYS, NODE), "127.0.0.1")


@pytest.mark.parametrize("raw", BAD_CLAIMS)
def test_a_claim_of_the_wrong_shape_is_unreadable(raw: bytes) -> None:
    assert read_claim(GOOD.to_json()) == GOOD
    with pytest.raises(UnreadableRecord):
        read_claim(raw)


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"kind": "secret"}', b'{"kind": 5, "version": "1"}'])
def test_an_object_record_of_the_wrong_shape_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="stored record"):
        ObjectRecord.from_json(raw)


async def test_a_corrupt_claim_or_secret_fails_only_what_depends_on_it(agent: Agent) -> None:
    """A claim or secret record that is not JSON (or of the wrong types) raised out of the
    pass: no task on the node was started, stopped or reported, and no volume removed."""
    store = agent.store
    web, app = make_service("web"), make_service("app", secrets=[{"source": "db_pw"}])
    for i, raw in enumerate(BAD_CLAIMS):
        await store.put(KEYS.volume(f"bad{i}", 1, "data"), raw)
    await store.put(KEYS.volume("db", 1, "data"), GOOD.to_json())  # marked removing here
    await store.put(KEYS.object("secret", "db_pw"), b'{"kind": "secret", "data": 5}')
    for record in (web, app):
        await store.put(KEYS.service(record.name), record.to_json())
        task = make_task(record, 1, NODE)
        await store.put(KEYS.task(task.service, task.slot), task.to_json())
    runtime = agent.runtime
    assert isinstance(runtime, FakeRuntime)
    runtime.volumes.add(GOOD.docker_name)
    await agent.tasks.relist()
    await agent.volumes.claims.relist()
    await agent.reconcile()
    await agent.flush()
    assert [c.labels[LABELS.SERVICE] for c in runtime.running()] == ["web"]
    kv = await store.get(KEYS.status(make_task(app, 1, NODE).task_id))
    assert kv is not None
    assert "secret 'db_pw' cannot be read from etcd" in TaskStatus.from_json(kv.value).message
    assert await store.get(KEYS.volume("db", 1, "data")) is None  # the readable claim was still removed
    assert GOOD.docker_name not in runtime.volumes


async def test_volume_ls_leaves_an_unreadable_claim_out_and_lists_the_rest() -> None:
    from node.api.volumes import VolumeClaims

    store = MemoryStore()
    await store.put(KEYS.volume("bad", 1, "data"), b"not json")
    await store.put(KEYS.volume("db", 1, "data"), GOOD.to_json())
    assert await VolumeClaims(store, KEYS).list() == [(GOOD, False)]


@pytest.mark.parametrize("service", ["db/1", "db/", "../db", "/", "DB", "db\n", "x" * 64, "db.1"])
async def test_volume_ls_of_a_name_that_is_no_service_is_refused(service: str) -> None:
    """`db/1` was a key prefix: it listed slot 1 of db as if it were a service's volumes."""
    from node.api.volumes import VolumeClaims
    from node.model.errors import InvalidArgument

    store = MemoryStore()
    await store.put(KEYS.volume("db", 1, "data"), GOOD.to_json())
    claims = VolumeClaims(store, KEYS)
    with pytest.raises(InvalidArgument, match="is not a service name"):
        await claims.list(service)
    assert await claims.list("") == await claims.list("db") == [(GOOD, False)]
