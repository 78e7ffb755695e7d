"""The leader's reconcile pass (`LeaderLoop.reconcile`) and the election, on a MemoryStore."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from leader.election import Election
from leader.loop import LeaderLoop
from node.model.domain import Assignment, NodeInfo, ServiceRecord
from node.model.keys import Keys
from node.store import Compacted, Fenced, WatchBatch
from node.store.memory import MemoryStore
from node.store.session import Session
from node.telemetry.events import EventLog
from tests.factories import FakeClock, make_node, make_service
from tests.helpers import mirrors_caught_up, wait_until

KEYS = Keys()


@dataclass
class Leader:
    store: MemoryStore
    loop: LeaderLoop

    async def put_service(self, service: ServiceRecord) -> None:
        await self.store.put(KEYS.service(service.name), service.to_json())

    async def put_node(self, node: NodeInfo) -> None:
        await self.store.put(KEYS.node(node.id), node.to_json())

    async def reconcile(self) -> None:
        """One pass, once the loop's mirrors have caught up with the store."""
        caches = (self.loop.services, self.loop.nodes, self.loop.tasks)

        await mirrors_caught_up(self.store, caches)
        await self.loop.reconcile()

    async def tasks(self) -> dict[tuple[str, int], Assignment]:
        kvs, _ = await self.store.range(KEYS.tasks)
        return {(a.service, a.slot): a for a in (Assignment.from_json(kv.value) for kv in kvs)}


@pytest.fixture
async def leader() -> AsyncIterator[Leader]:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"))
    caches = [asyncio.create_task(c.run()) for c in (loop.services, loop.nodes, loop.tasks)]
    try:
        yield Leader(store, loop)
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


async def test_services_and_nodes_become_tasks_with_the_epoch(leader: Leader) -> None:
    await leader.put_node(make_node("n1"))
    await leader.put_node(make_node("n2"))
    await leader.put_service(make_service("web", replicas=3))
    await leader.put_service(make_service("api", replicas=1))
    await leader.reconcile()
    tasks = await leader.tasks()
    assert sorted(tasks) == [("api", 1), ("web", 1), ("web", 2), ("web", 3)]
    assert {t.epoch for t in tasks.values()} == {leader.loop.epoch}
    assert tasks[("api", 1)].node == "n1"  # services are planned by name; api comes first
    assert sorted(t.node for (svc, _), t in tasks.items() if svc == "web") == ["n1", "n2", "n2"]
    revision = leader.store.revision
    await leader.reconcile()
    assert leader.store.revision == revision, "a pass over a converged cluster writes nothing"


async def test_scale_down_deletes_the_highest_slots(leader: Leader) -> None:
    await leader.put_node(make_node("n1"))
    await leader.put_service(make_service("web", replicas=3))
    await leader.reconcile()
    kept = (await leader.tasks())[("web", 1)]
    await leader.put_service(make_service("web", replicas=1, version=2))
    await leader.reconcile()
    assert await leader.tasks() == {("web", 1): kept}


async def test_a_removed_service_loses_its_tasks(leader: Leader) -> None:
    await leader.put_node(make_node("n1"))
    await leader.put_service(make_service("web", replicas=2))
    await leader.put_service(make_service("api", replicas=1))
    await leader.reconcile()
    await leader.store.delete(KEYS.service("web"))
    await leader.reconcile()
    assert sorted(await leader.tasks()) == [("api", 1)]


async def test_a_service_whose_stored_spec_cannot_be_read_is_left_alone(leader: Leader) -> None:
    """A record written around the API (or by a newer shoal) that does not check: its tasks
    are neither removed (as for a deleted service) nor changed; the others go on."""
    await leader.put_node(make_node("n1"))
    await leader.put_service(make_service("web", replicas=2))
    await leader.put_service(make_service("api", replicas=1))
    await leader.reconcile()
    before = await leader.tasks()
    bad = json.loads(make_service("web", replicas=5).to_json())
    bad["version"], bad["spec"]["placement"] = 2, {"constraints": ["zone is a"]}
    await leader.store.put(KEYS.service("web"), json.dumps(bad).encode())
    await leader.put_service(make_service("api", replicas=2, version=2))
    await leader.reconcile()
    after = await leader.tasks()
    assert {k: v for k, v in after.items() if k[0] == "web"} == {
        k: v for k, v in before.items() if k[0] == "web"
    }
    assert sorted(k for k in after if k[0] == "api") == [("api", 1), ("api", 2)]
    assert leader.loop.unreadable == {"web"}


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        ("record", "name", 5),  # sorted with the others' names: TypeError in every pass
        ("record", "version", "three"),  # written into its tasks, compared in rollouts
        ("record", "uid", None),
        ("record", "name", "api"),  # under web's key: web's tasks were removed as orphans
        ("spec", "replicas", "three"),  # the spec's model refuses it (as before)
    ],
)
async def test_a_service_record_with_a_field_of_the_wrong_type_is_left_alone(
    leader: Leader, where: str, field: str, value: object
) -> None:
    """A record that parses but whose fields have the wrong types (an old or hostile writer
    around the API) failed every pass, so no service was reconciled, or was acted on as it
    stood; it is left alone like a record that cannot be read, and the others go on."""
    await leader.put_node(make_node("n1"))
    await leader.put_service(make_service("web", replicas=2))
    await leader.put_service(make_service("api", replicas=1))
    await leader.reconcile()
    before = await leader.tasks()
    bad = json.loads(make_service("web", replicas=5, version=2).to_json())
    (bad if where == "record" else bad["spec"])[field] = value
    await leader.store.put(KEYS.service("web"), json.dumps(bad).encode())
    await leader.put_service(make_service("api", replicas=2, version=2))
    await leader.reconcile()
    after = await leader.tasks()
    assert {k: v for k, v in after.items() if k[0] == "web"} == {
        k: v for k, v in before.items() if k[0] == "web"
    }, "its tasks are left as they are"
    assert sorted(k for k in after if k[0] == "api") == [("api", 1), ("api", 2)], "the others go on"
    assert leader.loop.unreadable == {"web"}


async def test_a_pass_that_fails_unexpectedly_is_logged_once_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop's backstop: a pass that raises what no check foresaw (a bug, a record of a
    shape nobody expected) is logged with its traceback once, not on every retry, and
    tried again on the next wake; the leader leads on. Without it the loop ends, and the
    next leader meets the same failure."""
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"), resync=0.05)
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    await store.put(KEYS.service("web"), make_service("web").to_json())
    real, failures = loop.reconcile, 3

    async def reconcile() -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("a failure no check foresaw")
        await real()

    monkeypatch.setattr(loop, "reconcile", reconcile)
    task = asyncio.create_task(loop.run())
    try:

        async def placed_or_ended() -> bool:
            kvs, _ = await store.range(KEYS.service_tasks("web"))
            return (bool(kvs) and "reconcile" not in loop._failing) or task.done()

        await wait_until(placed_or_ended, timeout=5, message="web placed after the failed passes")
        assert not task.done(), f"the leader's loop ended: {task.exception()!r}"
        assert failures == 0
        logged = [r for r in caplog.records if r.name == "leader.loop" and r.exc_info]
        assert len(logged) == 1, "logged with its traceback once, then quietly while it repeats"
        assert "reconcile failed" in logged[0].getMessage()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _running_leader_with_a_rollout(store: MemoryStore) -> tuple[LeaderLoop, asyncio.Task[None]]:
    """A leader's whole loop (`LeaderLoop.run`) with service `web` mid-rollout (a monitor
    window of 30 s: the rollout stays active and arms a deadline)."""
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"), resync=0.2)
    await store.put(KEYS.node("n1"), make_node("n1").to_json())
    task = asyncio.create_task(loop.run())
    update = {"monitor": 30.0}
    await store.put(KEYS.service("web"), make_service("web", replicas=2, update=update).to_json())

    async def placed(version: int) -> bool:
        kvs, _ = await store.range(KEYS.service_tasks("web"))
        return any(Assignment.from_json(kv.value).version == version for kv in kvs)

    await wait_until(lambda: placed(1), timeout=5, message="web placed")
    web2 = make_service("web", replicas=2, version=2, image="img:2", update=update)
    await store.put(KEYS.service("web"), web2.to_json())
    await wait_until(lambda: store.get(KEYS.rollout("web")), timeout=5, message="web's rollout started")
    return loop, task


async def _the_leader_goes_on(store: MemoryStore, task: asyncio.Task[None]) -> None:
    await store.put(KEYS.service("api"), make_service("api", replicas=1).to_json())

    async def api_placed_or_loop_ended() -> bool:
        kvs, _ = await store.range(KEYS.service_tasks("api"))
        return bool(kvs) or task.done()

    await wait_until(api_placed_or_loop_ended, timeout=5, message="api placed by the same leader")
    assert not task.done(), f"the leader's loop ended: {task.exception()!r}"


async def test_an_unreadable_spec_of_a_service_mid_rollout_does_not_end_the_leaders_loop() -> None:
    """The rollout deadline the loop waits for read every active rollout's service spec,
    outside the pass's error handling: one spec this build cannot read raised
    `UnreadableRecord` there, the leader's loop died, and the next leader did the same."""
    store = MemoryStore()
    loop, task = await _running_leader_with_a_rollout(store)
    try:
        bad = json.loads(make_service("web", replicas=2, version=3).to_json())
        bad["spec"]["future_field"] = 1
        await store.put(KEYS.service("web"), json.dumps(bad).encode())
        await wait_until(lambda: loop.unreadable == {"web"}, timeout=5, message="web's spec unreadable")
        await _the_leader_goes_on(store, task)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_malformed_rollout_record_does_not_end_the_leaders_loop() -> None:
    """A `rollouts/` record that does not parse (written around the leader, or by a newer
    shoal) raised out of the pass and ended the leader's loop, on every node in turn."""
    store = MemoryStore()
    _, task = await _running_leader_with_a_rollout(store)
    try:
        await store.put(KEYS.rollout("ghost"), b"{not json")
        await store.put(KEYS.rollout("old"), b'{"service": "old"}')
        await _the_leader_goes_on(store, task)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_tasks_of_a_lost_node_are_placed_again(leader: Leader) -> None:
    await leader.put_node(make_node("n1"))
    await leader.put_node(make_node("n2"))
    await leader.put_service(make_service("web", replicas=4))
    await leader.reconcile()
    before = await leader.tasks()
    await leader.store.delete(KEYS.node("n2"))
    await leader.reconcile()
    after = await leader.tasks()
    assert sorted(after) == sorted(before)
    assert {t.node for t in after.values()} == {"n1"}
    for slot, task in before.items():
        if task.node == "n1":
            assert after[slot] == task, "tasks on the surviving node stay as they are"
        else:
            assert after[slot].task_id != task.task_id


async def test_a_stale_epoch_is_fenced_and_writes_nothing(leader: Leader) -> None:
    await leader.put_node(make_node("n1"))
    await leader.put_service(make_service("web", replicas=2))
    await leader.put_service(make_service("gone", replicas=1))
    await leader.reconcile()
    await leader.store.delete(KEYS.leader)
    await leader.store.put(KEYS.leader, b'{"node": "n2"}')  # someone else leads now
    await leader.put_service(make_service("web", replicas=5, version=2))
    revision = leader.store.revision
    with pytest.raises(Fenced):
        await leader.reconcile()
    assert leader.store.revision == revision
    await leader.store.delete(KEYS.service("gone"))  # the orphan path is fenced as well
    revision = leader.store.revision
    with pytest.raises(Fenced):
        await leader.reconcile()
    assert leader.store.revision == revision
    assert sorted(await leader.tasks()) == [("gone", 1), ("web", 1), ("web", 2)]


# -- election ----------------------------------------------------------------------------


async def candidate(store: MemoryStore, node: str) -> tuple[Election, Session]:
    session = Session(store, ttl=10)
    await session.start()
    return Election(store, KEYS, node, f"{node}:7070", session), session


async def test_one_of_two_candidates_wins_and_the_other_follows_on_resign() -> None:
    store = MemoryStore()
    (e1, _), (e2, _) = await candidate(store, "n1"), await candidate(store, "n2")
    campaigns = {asyncio.create_task(e.campaign()): e for e in (e1, e2)}
    done, pending = await asyncio.wait(campaigns, return_when=asyncio.FIRST_COMPLETED)
    [won] = done
    winner, loser = campaigns[won], campaigns[pending.pop()]
    epoch = won.result()
    kv = await store.get(KEYS.leader)
    assert kv is not None and kv.create_revision == epoch
    current = await winner.current()
    assert current is not None and (current.node, current.epoch) == (winner.node, epoch)

    assert await winner.resign(epoch)
    [next_epoch] = [await t for t in campaigns if t is not won]
    assert next_epoch > epoch
    current = await loser.current()
    assert current is not None and (current.node, current.epoch) == (loser.node, next_epoch)
    assert not await winner.resign(epoch), "a resign at an old epoch deletes nothing"
    assert await store.get(KEYS.leader) is not None


async def test_the_leader_key_dies_with_its_lease_and_the_follower_takes_over() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    (e1, _), (e2, s2) = await candidate(store, "n1"), await candidate(store, "n2")
    epoch = await e1.campaign()
    follower = asyncio.create_task(e2.campaign())
    deposed = asyncio.create_task(e1.watch_deposed(epoch))
    try:
        await asyncio.sleep(0)  # one turn: the store never blocks, so both now wait in a watch
        clock.advance(9)
        assert await store.keepalive(s2.lease) == 10  # only n2 renews its lease
        clock.advance(2)
        store.expire_leases()
        next_epoch = await asyncio.wait_for(follower, 2)  # woken by the watch, not a re-check
        assert next_epoch > epoch
        assert "deleted" in await asyncio.wait_for(deposed, 2)
    finally:
        for task in (follower, deposed):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_campaign_deletes_a_leader_key_left_in_its_own_name() -> None:
    """A step-down whose resign never reached etcd leaves the key on a lease etcd keeps
    renewing; the node's next campaign must not wait on itself forever."""
    store = MemoryStore()
    (e1, s1), (e2, _) = await candidate(store, "n1"), await candidate(store, "n2")
    stale = await e1.campaign()
    # n1 stepped down without its resign landing: the key still names it, on its live lease.
    kv = await store.get(KEYS.leader)
    assert kv is not None and kv.lease == s1.lease
    epoch = await asyncio.wait_for(e1.campaign(), 2)
    assert epoch > stale
    current = await e2.current()
    assert current is not None and (current.node, current.epoch) == ("n1", epoch)


async def test_a_campaign_leaves_another_nodes_key_alone() -> None:
    store = MemoryStore()
    (e1, _), (e2, _) = await candidate(store, "n1"), await candidate(store, "n2")
    epoch = await e1.campaign()
    follower = asyncio.create_task(e2.campaign())
    try:
        done, _ = await asyncio.wait({follower}, timeout=0.2)
        assert not done, "n2 waits while n1 leads"
        current = await e2.current()
        assert current is not None and (current.node, current.epoch) == ("n1", epoch)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def test_a_leader_whose_lease_is_about_to_expire_resigns_and_can_lead_again() -> None:
    """The step-down on an expiring lease deletes the key: the lease often survives
    (etcd renews it once it answers again), and a key left on it would stop every
    election for good (the testbed's no-leader-after-raft-leader-loss)."""
    import time

    from node.daemon.leadership import Leadership
    from tests.helpers import wait_until

    store = MemoryStore()
    session = Session(store, ttl=10)
    await session.start()
    leadership = Leadership(store, KEYS, "n1", "127.0.0.1:7070", session, EventLog(store, KEYS, "n1"), 1.0)
    task = asyncio.create_task(leadership.run())
    try:
        await wait_until(lambda: leadership.epoch, timeout=10, message="leading")
        first = leadership.epoch
        session.deadline = 0.0  # about to expire: the leader steps down
        stepped_down: list[bool] = []

        async def key_gone() -> bool:
            kv = await store.get(KEYS.leader)
            if kv is None or kv.create_revision != first:
                stepped_down.append(True)
            return bool(stepped_down)

        await wait_until(key_gone, timeout=10, message="the key of the stepped-down epoch deleted")
        # No campaign on a lease about to expire: it would lead for an instant and step
        # down again, an epoch per turn (the soak's 1,149 epochs in 10 minutes).
        led: list[int] = []
        await asyncio.wait_for(_sample_epochs(leadership, led, 0.5), 2)
        assert set(led) <= {0, first}, f"new epochs while the lease was expiring: {sorted(set(led))}"
        assert await store.get(KEYS.leader) is None
        session.deadline = time.monotonic() + 1000  # the lease was renewed after all
        await wait_until(
            lambda: leadership.epoch not in (0, first), timeout=10, message="leading again, at a new epoch"
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class CompactionCountingStore(MemoryStore):
    """A MemoryStore that counts its watches, and those refused as compacted."""

    def __init__(self) -> None:
        super().__init__()
        self.watches = 0
        self.compacted_watches = 0

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        self.watches += 1
        try:
            async for batch in super().watch(prefix, start_revision):
                yield batch
        except Compacted:
            self.compacted_watches += 1
            raise


async def test_the_election_watches_survive_a_compaction_past_the_leader_keys_revision() -> None:
    """The leader key is never rewritten (only its lease renewed), so its mod revision stays
    at the epoch. Both watches started after it: once the leader's upkeep compacted past
    it, they failed at once, and every node retried twice a second forever, logging a
    WARNING each time."""
    store = CompactionCountingStore()
    (e1, _), (e2, _) = await candidate(store, "n1"), await candidate(store, "n2")
    epoch = await e1.campaign()
    for i in range(5):
        await store.put(KEYS.service(f"s{i}"), b"{}")
    await store.compact(store.revision)
    follower = asyncio.create_task(e2.campaign())
    deposed = asyncio.create_task(e1.watch_deposed(epoch))
    try:
        await wait_until(lambda: store.watches >= 2, timeout=5, message="both watching")
        assert await e1.resign(epoch)
        assert "deleted" in await asyncio.wait_for(deposed, 2), "woken by the watch"
        assert await asyncio.wait_for(follower, 2) > epoch
        assert store.compacted_watches == 0
    finally:
        for task in (follower, deposed):
            task.cancel()
        await asyncio.gather(follower, deposed, return_exceptions=True)


async def _sample_epochs(leadership: object, out: list[int], seconds: float) -> None:
    """The epochs a Leadership holds, read every 10 ms for `seconds` (bounded)."""
    for _ in range(int(seconds / 0.01)):
        out.append(leadership.epoch)  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
