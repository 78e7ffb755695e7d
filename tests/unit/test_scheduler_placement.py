"""`leader.scheduler`: resources, constraints, spread, binpack, global, drain; case tables."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from leader.scheduler import Plan, Snapshot, schedule, schedule_all, template_hash
from node.agent.containers import container_spec
from node.model.config import NodeConfig, detect_capacity, load
from node.model.domain import (
    Assignment,
    NodeInfo,
    NodeSpec,
    ServiceRecord,
    UnreadableRecord,
    effective_labels,
)
from tests.factories import make_service, make_spec, make_task, typed_spec

GIB, MIB = 2**30, 2**20
EPOCH = 7


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"


def node(name: str, cpu: float = 4.0, memory: int = 8 * GIB, **labels: str) -> NodeInfo:
    return NodeInfo(name, "127.0.0.1", 7070, dict(labels), cpu, memory)


def snap(nodes: Iterable[NodeInfo], tasks: Iterable[Assignment] = (), **availability: str) -> Snapshot:
    return Snapshot({n.id: n for n in nodes}, {(t.service, t.slot): t for t in tasks}, 0, availability)


def service(
    name: str = "web",
    replicas: int = 1,
    cpu: float | None = None,
    memory: int | None = None,
    **placement: Any,
) -> ServiceRecord:
    extra: dict[str, Any] = {}
    if cpu is not None or memory is not None:
        extra["resources"] = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    mode = placement.pop("mode", None)
    if mode:
        extra["mode"] = mode
    if placement:
        extra["placement"] = placement
    return make_service(name, replicas=replicas, **extra)


def plan_for(snapshot: Snapshot, record: ServiceRecord) -> Plan:
    return schedule(snapshot, record, EPOCH, now=1.0, new_id=ids())


def nodes_of(plan: Plan) -> Counter[str]:
    return Counter(t.node for t in plan.keep + plan.place)


def after(snapshot: Snapshot, *plans: Plan) -> Snapshot:
    tasks = dict(snapshot.tasks)
    for plan in plans:
        for t in plan.stop:
            del tasks[(t.service, t.slot)]
        for t in plan.place:
            tasks[(t.service, t.slot)] = t
    return Snapshot(snapshot.nodes, tasks, snapshot.revision, snapshot.availability)


# -- resources ------------------------------------------------------------------------------


def test_reservations_are_never_overcommitted_and_the_rest_waits_with_a_reason() -> None:
    plan = plan_for(snap([node("n1", cpu=1), node("n2", cpu=1)]), service(replicas=3, cpu=0.6))
    assert sorted(nodes_of(plan).elements()) == ["n1", "n2"]
    assert plan.unplaced == [3]
    assert plan.reason == "0/2 nodes available: 2 lack cpu (need 0.6, most free 0.4)"


def test_assignments_record_what_they_reserve() -> None:
    [task] = plan_for(snap([node("n1")]), service(cpu=0.5, memory=256 * MIB)).place
    assert (task.cpu, task.memory, task.replaces) == (0.5, 256 * MIB, "")


def test_the_reason_names_memory_constraints_and_availability() -> None:
    cluster = [
        node("n1", memory=4 * GIB, zone="a"),
        node("n2", memory=GIB, zone="a"),
        node("n3", zone="b"),
        node("n4", zone="a"),
    ]
    busy = make_task("db", 1, "n1", template="x")
    busy = Assignment(**{**busy.__dict__, "memory": 2 * GIB + GIB // 2})
    web = service(memory=2 * GIB, constraints=["node.labels.zone == a"])
    plan = plan_for(snap(cluster, [busy], n4="drain"), web)
    assert plan.unplaced == [1] and not plan.place
    assert plan.reason == (
        "0/4 nodes available: 2 lack memory (need 2.0 GiB, most free 1.5 GiB), "
        "1 drained, 1 excluded by node.labels.zone == a"
    )
    assert plan_for(snap([]), web).reason == "no node is alive"


def test_capacity_is_shared_between_the_services_of_one_pass() -> None:
    cluster = snap([node("n1", memory=3 * GIB)])
    plans = schedule_all(
        cluster, [service("a", memory=2 * GIB), service("b", memory=2 * GIB)], EPOCH, new_id=ids()
    )
    assert [len(p.place) for p in plans] == [1, 0]
    assert plans[1].reason.startswith("0/1 nodes available: 1 lack memory")


def test_a_pending_replica_is_placed_once_a_node_with_room_joins() -> None:
    big = service(memory=6 * GIB)
    assert plan_for(snap([node("n1", memory=4 * GIB)]), big).unplaced == [1]
    plan = plan_for(snap([node("n1", memory=4 * GIB), node("n2", memory=8 * GIB)]), big)
    assert [t.node for t in plan.place] == ["n2"] and not plan.unplaced and not plan.reason


def test_an_update_that_no_longer_fits_its_node_moves_and_says_whom_it_replaces() -> None:
    old = service(cpu=1)
    new = make_service("web", version=2, resources={"cpu": 3})
    task = make_task(old, 1, "n1")
    other = Assignment(**{**make_task("db", 1, "n1", template="x").__dict__, "cpu": 2.0})
    plan = plan_for(snap([node("n1", cpu=4), node("n2", cpu=4)], [task, other]), new)
    [placed] = plan.place
    assert (placed.node, placed.replaces) == ("n2", task.task_id)
    assert [(m.old, m.why) for m in plan.moves] == [(task, "update")]


def test_an_update_that_fits_stays_on_its_node() -> None:
    task = make_task(service(cpu=1), 1, "n2")
    plan = plan_for(
        snap([node("n1"), node("n2")], [task]), make_service("web", version=2, resources={"cpu": 2})
    )
    assert [(t.node, t.replaces) for t in plan.place] == [("n2", task.task_id)]


def test_limits_become_docker_limits_and_the_reservation_when_none() -> None:
    task = make_task("web", 1, "n1")
    spec = typed_spec("web", image="x", resources={"cpu": 0.5, "memory": 64 * MIB})
    reserved = container_spec(task, spec, "c", "127.0.0.1")
    assert (reserved.cpu, reserved.memory) == (0.5, 64 * MIB)
    limits = {"cpu": 0.5, "memory": 64 * MIB, "limits": {"cpu": 1.5, "memory": 128 * MIB}}
    limited = container_spec(task, typed_spec("web", image="x", resources=limits), "c", "127.0.0.1")
    assert (limited.cpu, limited.memory) == (1.5, 128 * MIB)


# -- constraints, drain, labels ---------------------------------------------------------------


def test_constraints_exclude_nodes() -> None:
    cluster = [
        node("n1", zone="a", disk="ssd"),
        node("n2", zone="a", disk="hdd"),
        node("n3", zone="b", disk="ssd"),
    ]
    web = service(replicas=4, constraints=["node.labels.zone == a", "node.labels.disk != hdd"])
    assert nodes_of(plan_for(snap(cluster), web)) == {"n1": 4}
    web = service(replicas=4, constraints=["node.id != n1"])
    assert nodes_of(plan_for(snap(cluster), web)) == {"n2": 2, "n3": 2}


def test_a_drained_node_gets_nothing_and_its_tasks_move_naming_the_task_they_replace() -> None:
    web = service(replicas=3)
    tasks = [make_task(web, 1, "n1"), make_task(web, 2, "n2"), make_task(web, 3, "n3")]
    plan = plan_for(snap([node("n1"), node("n2"), node("n3")], tasks, n2="drain"), web)
    assert [t.slot for t in plan.keep] == [1, 3]
    [moved] = plan.place
    assert moved.slot == 2 and moved.node in ("n1", "n3") and moved.replaces == tasks[1].task_id
    assert [(m.old.node, m.why) for m in plan.moves] == [("n2", "drain")]
    assert not plan.stop, "the slot is handed over, not deleted"


def test_a_paused_node_keeps_its_tasks_and_takes_no_new_ones() -> None:
    web = service(replicas=4)
    tasks = [make_task(web, 1, "n1")]
    plan = plan_for(snap([node("n1"), node("n2")], tasks, n1="pause"), web)
    assert plan.keep == tasks and {t.node for t in plan.place} == {"n2"}


def test_a_label_change_moves_the_replicas_it_excludes_and_restarts_nothing_else() -> None:
    web = service(replicas=2, constraints=["node.labels.zone == a"])
    cluster = [node("n1", zone="a"), node("n2", zone="a"), node("n3", zone="a")]
    tasks = [make_task(web, 1, "n1"), make_task(web, 2, "n2")]
    relabelled = [cluster[0], node("n2", zone="b"), cluster[2]]
    plan = plan_for(snap(relabelled, tasks), web)
    assert plan.keep == tasks[:1]
    assert [(t.slot, t.node, t.replaces) for t in plan.place] == [(2, "n3", tasks[1].task_id)]
    assert [m.why for m in plan.moves] == ["constraints"]


def test_a_new_constraint_moves_only_what_it_excludes() -> None:
    web = service(replicas=2)
    tasks = [make_task(web, 1, "n1"), make_task(web, 2, "n2")]
    moved = make_service("web", replicas=2, version=2, placement={"constraints": ["node.id != n2"]})
    assert template_hash(moved.spec) == template_hash(web.spec)
    plan = plan_for(snap([node("n1"), node("n2"), node("n3")], tasks), moved)
    assert plan.keep == tasks[:1] and [(t.slot, t.node) for t in plan.place] == [(2, "n3")]


def test_operator_labels_overlay_the_nodes_own_and_none_removes_one() -> None:
    info = node("n1", zone="a", disk="hdd")
    spec = NodeSpec(labels={"zone": "b", "disk": None, "rack": "r1"})
    assert effective_labels(info, spec) == {"zone": "b", "rack": "r1"}
    assert effective_labels(info, None) == info.labels


# -- spread, binpack, max_per_node ---------------------------------------------------------------


def test_spread_goes_to_the_least_loaded_node_first() -> None:
    busy = Assignment(**{**make_task("db", 1, "n1", template="x").__dict__, "cpu": 3.0})
    plan = plan_for(snap([node("n1"), node("n2")], [busy]), service(replicas=1, cpu=0.5))
    assert [t.node for t in plan.place] == ["n2"]


def test_spread_over_a_label_balances_its_values_not_its_nodes() -> None:
    cluster = [node("a1", zone="a"), node("b1", zone="b"), node("b2", zone="b"), node("b3", zone="b")]
    plan = plan_for(snap(cluster), service(replicas=6, spread="node.labels.zone"))
    zones = Counter(t.node[0] for t in plan.place)
    assert zones == {"a": 3, "b": 3}
    assert nodes_of(plan) == {"a1": 3, "b1": 1, "b2": 1, "b3": 1}


def test_spread_over_a_label_fills_other_values_when_one_is_full() -> None:
    cluster = [node("a1", cpu=1, zone="a"), node("b1", zone="b")]
    plan = plan_for(snap(cluster), service(replicas=4, cpu=0.5, spread="node.labels.zone"))
    assert nodes_of(plan) == {"a1": 2, "b1": 2}
    plan = plan_for(snap(cluster), service(replicas=5, cpu=0.5, spread="node.labels.zone"))
    assert nodes_of(plan) == {"a1": 2, "b1": 3}


def test_max_per_node_caps_a_node_and_leaves_the_rest_pending() -> None:
    plan = plan_for(snap([node("n1"), node("n2")]), service(replicas=3, max_per_node=1))
    assert nodes_of(plan) == {"n1": 1, "n2": 1} and plan.unplaced == [3]
    assert plan.reason == "0/2 nodes available: 2 already run max_per_node=1 of it"


def test_binpack_fills_the_fullest_node_that_fits_first() -> None:
    busy = Assignment(**{**make_task("db", 1, "n2", template="x").__dict__, "cpu": 2.0})
    cluster = snap([node("n1", cpu=4), node("n2", cpu=4), node("n3", cpu=4)], [busy])
    plan = plan_for(cluster, service(replicas=6, cpu=1, strategy="binpack"))
    assert nodes_of(plan) == {"n2": 2, "n1": 4}


def test_binpack_puts_the_largest_services_first() -> None:
    cluster = snap([node("n1", cpu=4), node("n2", cpu=4)])
    small = service("a-small", replicas=4, cpu=1, strategy="binpack")
    large = service("z-large", replicas=1, cpu=3, strategy="binpack")
    plans = schedule_all(cluster, [small, large], EPOCH, new_id=ids())
    assert sum(len(p.place) for p in plans) == 5 and not any(p.unplaced for p in plans)


# -- global --------------------------------------------------------------------------------------


def test_global_runs_one_replica_on_every_eligible_node() -> None:
    cluster = [node("n1", zone="a"), node("n2", zone="a"), node("n3", zone="b")]
    agent = service("agent", mode="global", constraints=["node.labels.zone == a"])
    plan = plan_for(snap(cluster), agent)
    assert sorted((t.slot, t.node) for t in plan.place) == [(1, "n1"), (2, "n2")]


def test_global_follows_nodes_joining_leaving_and_relabelled() -> None:
    agent = service("agent", mode="global", constraints=["node.labels.zone == a"])
    start = snap([node("n1", zone="a"), node("n2", zone="a")])
    state = after(start, plan_for(start, agent))
    changed = snap([node("n1", zone="b"), node("n3", zone="a"), node("n4", zone="a")], state.tasks.values())
    plan = plan_for(changed, agent)
    assert {t.node for t in plan.stop} == {"n1", "n2"}  # relabelled out, and gone
    assert sorted((t.slot, t.node) for t in plan.place) == [(3, "n3"), (4, "n4")]
    again = plan_for(after(changed, plan), agent)
    assert again.empty and len(again.keep) == 2


def test_global_leaves_a_node_without_room_pending_and_says_why() -> None:
    agent = service("agent", mode="global", memory=2 * GIB)
    plan = plan_for(snap([node("n1", memory=1 * GIB), node("n2")]), agent)
    assert [t.node for t in plan.place] == ["n2"] and plan.pending_nodes == ["n1"]
    assert plan.reason == "1 eligible node(s) without room: 1 lack memory (need 2.0 GiB, most free 1.0 GiB)"


def test_global_on_a_drained_node_stops_it_and_does_not_move_it() -> None:
    agent = service("agent", mode="global")
    tasks = [make_task(agent, 1, "n1"), make_task(agent, 2, "n2")]
    plan = plan_for(snap([node("n1"), node("n2")], tasks, n2="drain"), agent)
    assert plan.keep == tasks[:1] and plan.stop == tasks[1:] and not plan.place


def test_a_stored_placement_that_cannot_be_read_is_an_unreadable_record() -> None:
    """Written around the API: the record does not parse, naming the field (the leader
    then leaves the service alone: tests/unit/test_leader_loop.py)."""
    raw = json.dumps(
        {"name": "web", "version": 1, "spec": make_spec("web", placement={"constraints": ["zone is a"]})}
    )
    with pytest.raises(
        UnreadableRecord, match=r"service 'web' cannot be read: placement\.constraints\.0: must be"
    ):
        ServiceRecord.from_json(raw.encode())


def test_detected_capacity_leaves_the_system_reserve_and_a_configured_one_is_kept() -> None:
    detected = detect_capacity(NodeConfig(reserve_cpu=0.0, reserve_memory=0))
    reserved = detect_capacity(NodeConfig(reserve_cpu=0.5, reserve_memory=256 * MIB))
    assert reserved.cpu == max(0.0, detected.cpu - 0.5)
    assert reserved.memory == detected.memory - 256 * MIB
    assert detect_capacity(NodeConfig(cpu=3.0, memory=GIB, reserve_cpu=1.0)).cpu == 3.0
    assert load({}, {"SHOAL_RESERVE_MEMORY": "512Mi"}).reserve_memory == 512 * MIB
