"""The one rule for "routable" (`node.model.domain`): every place that decides which replicas may
receive traffic (agent, leader, proxy, API resolve) asks it, so they cannot disagree."""

from __future__ import annotations

import asyncio

import pytest

from leader.updates import Health as SlotHealth
from leader.updates import health as slot_health
from node.agent.health import Health, Verdict
from node.api.nodes import routable as api_routable
from node.model.domain import (
    Assignment,
    EndpointRecord,
    TaskHealth,
    TaskState,
    TaskStatus,
    routable,
    routable_endpoints,
    serving,
)
from node.model.keys import Keys
from node.proxy import routes
from node.store import Put
from node.store.memory import MemoryStore

ROUTABLE = {(TaskState.RUNNING, TaskHealth.NONE), (TaskState.RUNNING, TaskHealth.HEALTHY)}
CASES = [(state, health) for state in TaskState for health in TaskHealth]


@pytest.mark.parametrize(("state", "health"), CASES)
def test_running_and_healthy_or_unchecked_and_nothing_else(state: TaskState, health: TaskHealth) -> None:
    expected = (state, health) in ROUTABLE
    status = TaskStatus("t1", "web", 1, "n1", state.value, health=health.value)
    assert routable(state.value, health.value) is expected
    assert status.routable is expected
    if state == TaskState.RUNNING:  # the agent's verdict is about a running replica
        assert Verdict(health=Health(health.value)).routable is expected


@pytest.mark.parametrize(("state", "health"), CASES)
def test_the_leader_counts_a_new_replica_ready_exactly_when_it_is_routable(
    state: TaskState, health: TaskHealth
) -> None:
    task = Assignment("t1", "web", 1, "n1", 1, 1)
    status = TaskStatus("t1", "web", 1, "n1", state.value, health=health.value)
    assert (slot_health(task, status) is SlotHealth.READY) is ((state, health) in ROUTABLE)


def _endpoint(task: str, node: str) -> EndpointRecord:
    return EndpointRecord(task, "web", node, "127.0.0.9", 30000, 80, {"80": 30000})


def test_serving_leaves_out_a_removed_namesakes_tasks_and_keeps_handoffs() -> None:
    old = Assignment("t-old", "web", 1, "n1", 1, 1, uid="u1")
    new = Assignment("t-new", "web", 1, "n2", 2, 1, uid="u1", handoff={"task_id": "t-old", "node": "n1"})
    stale = Assignment("t-stale", "web", 2, "n3", 1, 1, uid="u0")
    legacy = Assignment("t-legacy", "web", 3, "n3", 1, 1)  # its leader predates uids
    everything = {("t-new", "n2"), ("t-old", "n1"), ("t-stale", "n3"), ("t-legacy", "n3")}
    assert serving([new, stale, legacy]) == everything
    assert serving([new, stale, legacy], {"web": "u1"}) == everything - {("t-stale", "n3")}
    assert serving([old], {}) == {("t-old", "n1")}  # a service not named: kept


def test_routable_endpoints_need_the_assignment_and_a_live_node_and_the_proxy_uses_them() -> None:
    eps = [_endpoint("t2", "n2"), _endpoint("t1", "n1"), _endpoint("t3", "n3")]
    assigned = {("t1", "n1"), ("t2", "n9"), ("t3", "n3")}  # t2 moved to n9: n2's endpoint is stale
    assert [e.task_id for e in routable_endpoints(eps, assigned, gone={"n3"})] == ["t1"]
    assert routes.routable is routable_endpoints and routes.assignments is serving


def test_resolve_uses_the_same_rule_as_the_mesh_stale_incarnations_included() -> None:
    keys, store = Keys(), MemoryStore()
    current = Assignment("t1", "web", 1, "n1", 2, 1, uid="u2")
    stale = Assignment("t0", "web", 2, "n2", 1, 1, uid="u1")  # a removed namesake's, not yet swept
    writes = [
        Put(keys.task("web", 1), current.to_json()),
        Put(keys.task("web", 2), stale.to_json()),
        Put(keys.endpoint("web", "t1"), _endpoint("t1", "n1").to_json()),
        Put(keys.endpoint("web", "t0"), _endpoint("t0", "n2").to_json()),
    ]

    async def run() -> tuple[list[str], list[str]]:
        await store.txn([], writes)
        unfiltered = await api_routable(store, keys, "web", None)
        filtered = await api_routable(store, keys, "web", None, uid="u2")
        return [e.task_id for e in unfiltered], [e.task_id for e in filtered]

    assert asyncio.run(run()) == (["t0", "t1"], ["t1"])
