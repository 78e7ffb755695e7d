"""The agent while etcd is away: local actions go on, writes are queued and flushed after.

Two kinds of outage, on a MemoryStore: `unavailable` (every call fails at once, etcd
down) and `frozen` (every call hangs until thawed, a SIGSTOPped etcd: the worst case,
since a pass that awaits etcd just stops). Passes are driven by hand, as in
test_agent_health.py, with a fake clock and a scripted prober.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from node.agent.agent import Agent
from node.agent.publisher import Publisher
from node.agent.writes import WriteQueue
from node.model.domain import EndpointRecord, TaskState, TaskStatus
from node.store.base import KV, Compare, Op, TxnResult
from node.store.memory import MemoryStore
from node.store.session import Session
from tests.factories import CLUSTER, FakeClock, make_task
from tests.helpers import wait_until
from tests.unit.test_agent_health import (
    ADDRESS,
    HTTP,
    KEYS,
    NODE,
    GraceRuntime,
    RecordingEvents,
    ScriptedProber,
    World,
)

PASS_BOUND = 10.0  # s: a pass that takes this long is hanging on etcd (it should take ms)


class FreezableStore(MemoryStore):
    """`frozen.clear()`: every read and write hangs until `frozen.set()` (etcd SIGSTOPped)."""

    def __init__(self) -> None:
        super().__init__()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.hung = 0

    async def _wait(self) -> None:
        if not self.thawed.is_set():
            self.hung += 1
            await self.thawed.wait()

    async def get(self, key: str) -> KV | None:
        await self._wait()
        return await super().get(key)

    async def range(self, prefix: str) -> tuple[list[KV], int]:
        await self._wait()
        return await super().range(prefix)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        await self._wait()
        return await super().put(key, value, lease)

    async def delete(self, key: str, prefix: bool = False) -> int:
        await self._wait()
        return await super().delete(key, prefix)

    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], else_ops: Sequence[Op] = ()
    ) -> TxnResult:
        await self._wait()
        return await super().txn(compares, ops, else_ops)


class Outage:
    def __init__(self, store: FreezableStore, kind: str) -> None:
        self.store, self.kind = store, kind

    def begin(self) -> None:
        if self.kind == "frozen":
            self.store.thawed.clear()
        else:
            self.store.unavailable = True

    def end(self) -> None:
        self.store.thawed.set()
        self.store.unavailable = False


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = FreezableStore()
    runtime = GraceRuntime()
    session = Session(store, ttl=10)
    await session.start()
    prober, clock = ScriptedProber(), FakeClock()
    agent = Agent(
        store, KEYS, NODE, CLUSTER, runtime, session, RecordingEvents(store), ADDRESS, 1.0, 7.0, 0.0,
        prober=prober, clock=clock,
    )  # fmt: skip
    agent.stopper.withdraw_wait = 0.2
    yield World(store, runtime, prober, clock, agent)
    assert isinstance(store, FreezableStore)
    store.thawed.set()  # nothing left hanging


async def local_pass(world: World, advance: float = 0.0) -> None:
    """A pass as the agent runs it during an outage: no re-list (the mirror keeps its view),
    no flush; it must not wait on etcd."""
    world.clock.advance(advance)
    async with asyncio.timeout(PASS_BOUND):
        await world.agent.monitor.probe_due()
        await world.agent.reconcile()
        await world.agent.stopped()


@pytest.mark.parametrize("kind", ["unavailable", "frozen"])
async def test_a_container_that_exits_during_an_outage_is_restarted_and_reported_after(
    world: World, kind: str
) -> None:
    svc = await world.service(restart={"delay": 1.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    [first] = world.runtime.running()
    outage = Outage(world.store, kind)  # type: ignore[arg-type]

    outage.begin()
    world.runtime.crash(first.id, exit_code=137)
    await local_pass(world)  # removes the exited container, decides the restart
    assert ("remove", first.id) in world.runtime.calls
    assert world.runtime.running() == []
    await local_pass(world, 0.5)
    assert world.runtime.running() == [], "the restart waits for its delay, outage or not"
    await local_pass(world, 0.5)
    [second] = world.runtime.running()
    assert second.id != first.id and second.name == first.name
    assert len(world.agent.publisher.writes) > 0, "status and endpoint queued, not lost"

    outage.end()
    await world.agent.flush()
    status = await world.status(t1)
    assert (status.state, status.container_id, status.restarts, status.exit_code) == (
        TaskState.RUNNING,
        second.id,
        1,
        137,
    )
    kv = await world.store.get(KEYS.endpoint("web", t1.task_id))
    assert kv is not None and kv.lease == world.agent.publisher.session.lease
    assert EndpointRecord.from_json(kv.value).port == second.host_ports[8080], "the new container's port"
    assert len(world.agent.publisher.writes) == 0


@pytest.mark.parametrize("kind", ["unavailable", "frozen"])
async def test_an_unhealthy_replica_is_replaced_during_an_outage(world: World, kind: str) -> None:
    svc = await world.service(health=HTTP, restart={"delay": 1.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.step()
    [first] = world.runtime.running()
    assert await world.published(t1)

    Outage(world.store, kind).begin()
    world.prober.ok[t1.task_id] = False
    for _ in range(6):  # 2 x retries failed checks
        await local_pass(world, 1.0)
    assert ("stop", first.id) in world.runtime.calls, "replaced although its withdrawal is not in etcd"
    await local_pass(world, 1.0)
    [second] = world.runtime.running()
    assert second.id != first.id

    Outage(world.store, kind).end()
    await world.agent.flush()
    status = await world.status(t1)
    assert (status.state, status.container_id, status.restarts) == (TaskState.RUNNING, second.id, 1)
    assert not await world.published(t1), "the new replica is published once it passes its check"


async def test_an_unassigned_replica_is_not_stopped_before_its_withdrawal_is_in_etcd(world: World) -> None:
    svc = await world.service()
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    await world.reconcile()
    await world.reconcile()
    [c1] = world.runtime.running()
    assert await world.published(t1)

    await world.store.delete(KEYS.task("web", 1))
    await world.agent.tasks.relist()
    world.store.unavailable = True
    await local_pass(world)
    assert world.runtime.running() == [c1], "it may still be in a rotation: not stopped"
    world.store.unavailable = False
    await local_pass(world)
    assert world.runtime.running() == []
    assert not await world.published(t1)


async def test_the_write_queue_keeps_the_latest_value_per_key_and_writes_on_the_lease_of_the_flush() -> None:
    store = MemoryStore()
    session = Session(store, ttl=10)
    await session.start()
    queue = WriteQueue(store, session)
    await store.put("/k/gone", b"old")
    store.unavailable = True
    for i in range(1000):  # a long outage: one pending entry per key, whatever the churn
        queue.put("/k/a", f"v{i}".encode())
        queue.put("/k/b", b"x")
        queue.delete("/k/b")
    queue.delete("/k/gone")
    with pytest.raises(Exception, match="unreachable"):
        await queue.flush()
    assert len(queue) == 3

    lost = session.lease
    session.valid.clear()  # the lease is lost meanwhile: nothing is written on it
    store.unavailable = False
    with pytest.raises(Exception, match="no valid etcd lease"):
        await queue.flush()
    await session.start()
    assert session.lease != lost
    await queue.flush()
    a = await store.get("/k/a")
    assert a is not None and (a.value, a.lease) == (b"v999", session.lease)
    assert await store.get("/k/b") is None and await store.get("/k/gone") is None
    assert len(queue) == 0


async def test_the_write_queue_retries_apart_until_etcd_answers() -> None:
    store = MemoryStore()
    session = Session(store, ttl=10)
    await session.start()
    queue = WriteQueue(store, session)
    store.unavailable = True
    runner = asyncio.create_task(queue.run())
    try:
        queue.put("/k/a", b"1")

        async def failed_twice() -> bool:
            return queue.failures >= 2

        await wait_until(failed_twice, timeout=5, interval=0.02, message="retried")
        store.unavailable = False

        async def written() -> Any:
            return await store.get("/k/a")

        await wait_until(written, timeout=5, interval=0.02, message="flushed on reconnect")
        assert len(queue) == 0
    finally:
        runner.cancel()


async def test_overlapping_flushes_never_land_an_older_value_after_a_newer_one() -> None:
    """A stop's withdrawal flushes while the writer's flush of an older put is in flight."""
    store = FreezableStore()
    session = Session(store, ttl=10)
    await session.start()
    queue = WriteQueue(store, session)
    queue.put("/k/endpoint", b"published")
    store.thawed.clear()  # the writer's txn hangs in etcd
    first = asyncio.create_task(queue.flush())
    await wait_until(lambda: store.hung == 1, timeout=5, interval=0.01, message="first flush in etcd")
    queue.delete("/k/endpoint")  # the withdrawal, flushed by the stop itself
    second = asyncio.create_task(queue.flush())
    store.thawed.set()
    await asyncio.gather(first, second)
    assert await store.get("/k/endpoint") is None, "the delete is the last write"
    assert len(queue) == 0


async def test_a_lease_replaced_while_a_flush_is_in_etcd_is_written_again_on_the_new_lease() -> None:
    """The flush's txn puts on lease L1 and hangs; meanwhile the session gives L1 up and
    gets L2, and the publisher queues the same bytes again for L2. The txn then succeeds
    (on L1, which is going away): before, the entries matched their pending value and left
    the queue, so nothing was ever put on L2 and the status and endpoint vanished with L1."""
    store = FreezableStore()
    session = Session(store, ttl=10)
    await session.start()
    publisher = Publisher(store, KEYS, session)
    status = TaskStatus("t1", "web", 1, "n1", "running")
    await publisher.publish([status], [])
    key = KEYS.status("t1")
    gone = KEYS.endpoint("web", "t0")
    publisher.writes.delete(gone)  # a withdrawal in the same flush: it holds whatever the lease
    old = session.lease
    store.thawed.clear()  # the flush's txn hangs in etcd
    first = asyncio.create_task(publisher.flush())
    await wait_until(lambda: store.hung == 1, timeout=5, interval=0.01, message="the flush in etcd")
    session.lease = await store.grant(10)  # lost and replaced meanwhile (grant does not wait)
    await publisher.publish([status], [])  # the same bytes, for the new lease
    store.thawed.set()
    await first
    assert publisher.writes.pending(key), "not taken as written on the new lease"
    assert not publisher.writes.pending(gone), "a delete is done, lease or not"
    await publisher.flush()
    await store.revoke(old)  # the session revokes the lost lease once etcd answers
    kv = await store.get(key)
    assert kv is not None and kv.lease == session.lease != old
