"""`launch: dedicated` in the leader's pool keeper (issue 15 item 3, decision 68), on a
MemoryStore with a real provider command: the provider gets the replica's size and the
`shoal.dedicated` label; a leader that dies between the request and the placement leaves
a record the next leader asks for again with the same size, never a second node; the
node goes back as soon as its task is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from leader.scheduler import Plan
from node.store.memory import MemoryStore
from tests.factories import make_service, make_task
from tests.unit.test_pools_keeper import (  # the same provider script, store and leader
    calls,
    lead,
    provider,
    records,
    settle,
    setup,
    snap,
)

__all__ = ["provider"]  # a fixture, used by name
GI, MI = 2**30, 2**20
WEB = {
    "web": make_service(
        "web", replicas=1, launch={"dedicated": {}}, resources={"cpu": 0.3, "memory": 600 * MI}
    )
}
WAITING = [Plan("web", unplaced=[1])]


async def test_the_provider_gets_the_size_from_the_table_and_the_owner_label(provider: Path) -> None:
    store = MemoryStore()
    await setup(store, provider)
    keeper = await lead(store)
    await keeper.step(WEB, snap(), WAITING, now=100)
    await settle(keeper)
    [call] = calls(provider)
    assert call["action"] == "create"
    assert (call["node"]["cpu"], call["node"]["memory"]) == (0.5, GI)  # 0.3 cpu 600Mi -> 0.5 vCPU 1 GiB
    assert call["node"]["labels"] == {"shoal.pool": "burst", "shoal.dedicated": "web"}
    [r] = (await records(store)).values()
    assert (r.dedicated, r.cpu, r.memory, r.state) == ("web", 0.5, GI, "created")


async def test_a_leader_dead_between_the_request_and_the_placement_neither_loses_nor_doubles(
    provider: Path,
) -> None:
    store = MemoryStore()
    await setup(store, provider)
    first = await lead(store)
    await first.step(WEB, snap(), WAITING, now=100)
    for task in first.calls.values():  # dies before its provider call ran
        task.cancel()
    await asyncio.gather(*first.calls.values(), return_exceptions=True)
    (node,) = await records(store)
    assert calls(provider) == []

    second = await lead(store)
    for now in (101, 102, 103):  # the same need over several passes: the same node, asked once
        await second.step(WEB, snap(), WAITING, now=now)
        await settle(second)
    assert list(await records(store)) == [node]
    [call] = calls(provider)
    assert (call["node"]["id"], call["node"]["cpu"], call["node"]["memory"]) == (node, 0.5, GI)
    assert call["node"]["labels"]["shoal.dedicated"] == "web"

    third = await lead(store)  # another failover once it joined and the replica runs there
    busy = {("web", 1): make_task("web", 1, node)}
    await third.step(WEB, snap(node, tasks=busy), [], now=104)
    assert (await records(store))[node].state == "joined"

    # the task goes (scale to 0): the node is given back in that very pass, no idle_timeout
    await third.step(
        {"web": make_service("web", replicas=0, launch={"dedicated": {}})}, snap(node), [], now=105
    )
    await settle(third)
    assert [c["action"] for c in calls(provider)] == ["create", "delete"]
    assert (await records(store))[node].state == "released"
