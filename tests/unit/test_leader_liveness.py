"""The leader acts on gossip: a dead node is marked down (fenced) and its tasks move;
a suspected one is left alone; a revived one is unmarked. On a MemoryStore."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from leader.loop import LeaderLoop
from node.model.domain import Assignment
from node.model.keys import Keys
from node.store import Fenced
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_node, make_service
from tests.helpers import mirrors_caught_up

KEYS = Keys()


@dataclass
class FakeLiveness:
    dead: dict[str, float] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def dead_since(self) -> dict[str, float]:
        return dict(self.dead)

    def alive(self) -> set[str]:
        return set(self.live)

    def listener(self) -> asyncio.Event:
        return self.changed


@dataclass
class World:
    store: MemoryStore
    loop: LeaderLoop
    gossip: FakeLiveness

    async def reconcile(self) -> None:
        caches = (self.loop.services, self.loop.nodes, self.loop.tasks, self.loop.down.cache)
        caches += (self.loop.down.restarts,)

        await mirrors_caught_up(self.store, caches)
        await self.loop.reconcile()

    async def placement(self) -> dict[int, str]:
        kvs, _ = await self.store.range(KEYS.tasks)
        return {a.slot: a.node for a in (Assignment.from_json(kv.value) for kv in kvs)}

    async def marked(self) -> set[str]:
        kvs, _ = await self.store.range(KEYS.down_all)
        return {kv.key.rsplit("/", 1)[1] for kv in kvs}


async def _world(grace: float) -> tuple[World, list[asyncio.Task[None]]]:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    gossip = FakeLiveness(live={"n1", "n2", "n3"})
    loop = LeaderLoop(store, KEYS, epoch, EventLog(store, KEYS, "n1"), liveness=gossip, down_grace=grace)
    watched = (loop.services, loop.nodes, loop.tasks, loop.down.cache, loop.down.restarts)
    caches = [asyncio.create_task(c.run()) for c in watched]
    for n in ("n1", "n2", "n3"):
        await store.put(KEYS.node(n), make_node(n).to_json())
    await store.put(KEYS.service("web"), make_service("web", replicas=3).to_json())
    return World(store, loop, gossip), caches


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w, caches = await _world(grace=0.0)
    try:
        yield w
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


async def test_a_node_dead_to_gossip_is_marked_down_and_its_task_moves(world: World) -> None:
    await world.reconcile()
    assert sorted((await world.placement()).values()) == ["n1", "n2", "n3"]
    world.gossip.dead["n3"] = time.monotonic()  # its etcd lease is still alive: gossip decides
    world.gossip.live.discard("n3")
    await world.reconcile()
    assert await world.marked() == {"n3"}
    placement = await world.placement()
    assert "n3" not in placement.values() and len(placement) == 3


async def test_a_node_restarting_keeps_its_tasks_until_its_mark_expires(world: World) -> None:
    """An upgrade: the daemon stopped with a `restarting/` mark (node.daemon.restarting);
    gossip sees it dead, but its containers run on: nothing moves while the mark lives."""
    await world.reconcile()
    before = await world.placement()
    lease = await world.store.grant(30)
    await world.store.put(KEYS.restarting("n3"), b'{"grace": 30}', lease=lease)
    world.gossip.dead["n3"] = time.monotonic() - 10  # dead to gossip, past the grace
    world.gossip.live.discard("n3")
    await world.reconcile()
    assert await world.placement() == before and await world.marked() == set()
    await world.store.revoke(lease)  # the mark expired: the node did not come back in time
    await world.reconcile()
    assert await world.marked() == {"n3"}
    assert "n3" not in (await world.placement()).values()


async def test_a_suspected_node_is_not_acted_on(world: World) -> None:
    await world.reconcile()
    before = await world.placement()
    # suspect: still in alive(), not in dead_since()
    await world.reconcile()
    assert await world.placement() == before and await world.marked() == set()


async def test_a_revived_node_is_unmarked_and_takes_new_work(world: World) -> None:
    await world.reconcile()
    world.gossip.dead["n3"] = time.monotonic()
    world.gossip.live.discard("n3")
    await world.reconcile()
    del world.gossip.dead["n3"]
    world.gossip.live.add("n3")  # refuted with a higher incarnation
    await world.reconcile()
    assert await world.marked() == set()
    await world.store.put(KEYS.service("web"), make_service("web", replicas=4).to_json())
    await world.reconcile()
    assert (await world.placement())[4] == "n3"  # the emptiest node again


async def test_within_the_grace_a_dead_node_keeps_its_tasks() -> None:
    w, caches = await _world(grace=60.0)
    try:
        await w.reconcile()
        before = await w.placement()
        w.gossip.dead["n2"] = time.monotonic()
        w.gossip.live.discard("n2")
        await w.reconcile()
        assert await w.placement() == before and await w.marked() == set()
        assert 0 < (w.loop.down.next_deadline() or 0) <= 60
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


async def test_a_deposed_leader_cannot_mark_a_node_down(world: World) -> None:
    await world.reconcile()
    await world.store.delete(KEYS.leader)
    await world.store.put(KEYS.leader, b'{"node": "n2"}')  # a new epoch
    world.gossip.dead["n2"] = time.monotonic()
    world.gossip.live.discard("n2")
    with pytest.raises(Fenced):
        await world.reconcile()
    assert await world.marked() == set()


async def test_a_leader_that_sees_a_minority_alive_acts_on_no_death(world: World) -> None:
    """Cut off from its peers but not from etcd, the leader sees everyone else die."""
    await world.reconcile()
    before = await world.placement()
    now = time.monotonic()
    world.gossip.dead.update({"n2": now, "n3": now})
    world.gossip.live = {"n1"}
    await world.reconcile()
    assert await world.placement() == before and await world.marked() == set()
    assert world.loop.down.quorate is False
