"""status/ is written on a change only: a healthy replica whose checks keep passing
costs etcd no revision (liveness is the node's lease, not a periodic rewrite)."""

from __future__ import annotations

from tests.unit.test_agent_health import HTTP, KEYS, World, make_task, world  # noqa: F401

HOUR_OF_CHECKS = 3600  # one-second probe intervals


async def test_an_unchanged_health_result_is_never_rewritten(world: World) -> None:  # noqa: F811
    world.agent.monitor.wall = lambda: 1.7e9 + world.clock()  # wall time moves with the test clock
    svc = await world.service(health=HTTP)
    t1 = make_task(svc, 1, "n1")
    await world.assign(t1)
    await world.reconcile()
    await world.step()
    assert (await world.status(t1)).health == "healthy"
    key = KEYS.status(t1.task_id)
    written = await world.store.get(key)
    assert written is not None
    for _ in range(120):  # two minutes of passing checks, one a second
        await world.step(1.0)
    after = await world.store.get(key)
    assert after is not None and after.mod_revision == written.mod_revision, "rewritten without a change"

    world.prober.ok[t1.task_id] = False  # a change is still written at once
    await world.step(1.0)
    changed = await world.store.get(key)
    assert changed is not None and changed.mod_revision > written.mod_revision
    assert (await world.status(t1)).health_failures == 1
