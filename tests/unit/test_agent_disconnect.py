"""`on_disconnect: {stop_after}`: a node cut off from etcd stops those replicas (issue 11, item 8).

The agent on a MemoryStore made unavailable (a partition between the node and etcd), a
FakeRuntime and a fake clock that also stands for the session's: the session's
`answered` (when etcd last answered a renewal) is set in the clock's terms.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.agent.agent import Agent
from node.agent.diff import Actions
from node.agent.disconnect import cut_off_for, due, hold_back, stop_after
from node.model.domain import TaskState
from node.runtime.base import Container
from tests.factories import CLUSTER, make_service, make_task, typed_spec
from tests.unit.test_agent_health import ADDRESS, KEYS, NODE, World
from tests.unit.test_agent_health import world as world

TTL = 10  # the world's session TTL


def test_the_rules() -> None:
    plain = typed_spec("web")
    spec = typed_spec("web", on_disconnect={"stop_after": 60.0})
    assert stop_after(plain) is None and stop_after(spec) == 60.0
    assert cut_off_for(answered=100.0, ttl=10, now=105.0) == -5.0, "the lease may still be alive"
    assert cut_off_for(answered=100.0, ttl=10, now=175.0) == 65.0
    assert not due(spec, 60.0) and due(spec, 60.5)
    assert not due(plain, 1e9), "no section: kept running however long the cut"
    at_once = typed_spec("web", on_disconnect={"stop_after": 0.0})
    assert due(at_once, 0.1), "0: as soon as the lease is certainly gone"

    svc = make_service("web")
    t1, t2, t3 = (make_task(svc, i, NODE) for i in (1, 2, 3))
    c1 = Container("c1", "web.1", {}, "running")
    c2 = Container("c2", "web.2", {}, "running")
    actions = Actions(start=[t3], keep=[(t1, c1), (t2, c2)])
    specs = {t1.task_id: spec, t3.task_id: spec}  # t2's spec is not known: left alone
    kept, stops = hold_back(actions, specs, 61.0)
    assert kept.keep == [(t2, c2)] and kept.start == []
    assert kept.held == {t1.task_id, t3.task_id}, "not restarted from `replace` either"
    assert [(t, c) for t, c, _ in stops] == [(t1, c1)]
    assert "on_disconnect.stop_after 60s" in stops[0][2]
    assert hold_back(actions, specs, 59.0) == (actions, [])


async def test_a_cut_off_node_stops_only_bounded_services_past_the_bound_and_reconciles_after(
    world: World,
) -> None:
    bounded = await world.service(on_disconnect={"stop_after": 60.0})
    free = make_service("api", replicas=1)
    await world.store.put(KEYS.service("api"), free.to_json())
    t1, t2 = make_task(bounded, 1, NODE), make_task(free, 1, NODE)
    await world.assign(t1, t2)
    session = world.agent.session
    session.answered = world.clock()
    await world.reconcile()
    assert len(world.runtime.running()) == 2
    [c1] = [c for c in world.runtime.running() if c.labels["io.shoal.task"] == t1.task_id]

    world.store.unavailable = True  # the node is cut off from etcd from now on
    world.clock.advance(TTL + 60.0)  # lease certainly expired 60 s ago: not past the bound
    await world.agent.reconcile()
    await world.agent.stopped()
    assert len(world.runtime.running()) == 2, "not before the bound"

    world.clock.advance(1.0)
    await world.agent.reconcile()
    await world.agent.stopped()
    assert [c.labels["io.shoal.task"] for c in world.runtime.running()] == [t2.task_id], "api keeps running"
    assert ("stop", c1.id) in world.runtime.calls
    assert any("on_disconnect.stop_after 60s" in m for m in world.events("task.disconnected"))
    for _ in range(3):  # and it is not started again while cut off
        world.clock.advance(5.0)
        await world.agent.reconcile()
        await world.agent.stopped()
    assert [c.labels["io.shoal.task"] for c in world.runtime.running()] == [t2.task_id]
    assert world.agent.status[t1.task_id].state == TaskState.EXITED
    assert "cut off from etcd" in world.agent.status[t1.task_id].message

    world.store.unavailable = False  # back: a renewal answered; t1 is still assigned here
    session.answered = world.clock()
    await world.reconcile()
    assert {c.labels["io.shoal.task"] for c in world.runtime.running()} == {t1.task_id, t2.task_id}
    status = await world.status(t1)
    assert status.state == TaskState.RUNNING


@pytest.mark.parametrize("answered_ago", [0.0, TTL + 30.0])
async def test_in_touch_or_within_the_bound_nothing_stops(world: World, answered_ago: float) -> None:
    svc = await world.service(on_disconnect={"stop_after": 60.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    world.agent.session.answered = world.clock() - answered_ago
    await world.reconcile()
    await world.reconcile()
    assert len(world.runtime.running()) == 1
    assert not world.events("task.disconnected")


@pytest.fixture
async def kept(world: World) -> World:
    """The world, on a node that keeps 5 exited containers per slot (the default)."""
    a = world.agent
    agent = Agent(
        world.store, KEYS, NODE, CLUSTER, world.runtime, a.session, a.events, ADDRESS,
        1.0, 7.0, 0.0, prober=world.prober, clock=world.clock, history=5,
    )  # fmt: skip
    return replace(world, agent=agent)


async def test_a_cut_off_node_never_restarts_a_held_task_from_its_kept_container(kept: World) -> None:
    """Before, `hold_back` filtered only `keep` and `start`: once the cut-off stopped (and
    removed) the running replica, the task's older kept container, exited in a crash long
    before, was its current one again, went to `replace` and was restarted; the next pass
    stopped it, the one after restarted it, and so on while cut off."""
    world = kept
    svc = await world.service(on_disconnect={"stop_after": 60.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    session = world.agent.session
    session.answered = world.clock()
    await world.reconcile()
    [c] = world.runtime.running()
    world.runtime.crash(c.id, 1)  # an ordinary crash, long before the cut-off: kept for its logs
    for _ in range(3):
        world.clock.advance(2.0)
        session.answered = world.clock()
        await world.reconcile()
    assert len(world.runtime.running()) == 1 and len(world.runtime.containers) == 2

    world.store.unavailable = True  # cut off from now on, past the bound
    world.clock.advance(TTL + 61.0)
    runs = len([x for x in world.runtime.calls if x[0] == "run"])
    for _ in range(6):
        world.clock.advance(1.0)
        await world.agent.reconcile()
        await world.agent.stopped()
    assert world.runtime.running() == []
    assert len([x for x in world.runtime.calls if x[0] == "run"]) == runs, "nothing started while cut off"
    assert "cut off from etcd" in world.agent.status[t1.task_id].message

    world.store.unavailable = False  # back: it runs again
    session.answered = world.clock()
    await world.reconcile()
    assert len(world.runtime.running()) == 1


async def test_a_held_task_that_crashes_while_cut_off_is_not_restarted(kept: World) -> None:
    """A held replica that exits while cut off (not stopped by the cut-off) has its exit
    decided, but before, on a node that keeps exited containers, it was started anew."""
    world = kept
    svc = await world.service(on_disconnect={"stop_after": 60.0})
    t1 = make_task(svc, 1, NODE)
    await world.assign(t1)
    world.agent.session.answered = world.clock()
    await world.reconcile()
    [c] = world.runtime.running()
    world.store.unavailable = True
    world.clock.advance(TTL + 61.0)
    world.runtime.crash(c.id, 1)
    runs = len([x for x in world.runtime.calls if x[0] == "run"])
    for _ in range(4):
        world.clock.advance(5.0)
        await world.agent.reconcile()
        await world.agent.stopped()
    assert world.runtime.running() == []
    assert len([x for x in world.runtime.calls if x[0] == "run"]) == runs
    assert world.agent.status[t1.task_id].state == TaskState.EXITED
