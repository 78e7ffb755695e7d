"""Handoffs in the leader's pure pass: what a moved replacement holds (`leader.updates.
with_handoffs`) and the capacity an old task still serving under a handoff takes
(`leader.scheduler.schedule_all`)."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from leader import updates
from leader.rollout import update_policy
from leader.scheduler import Plan, Snapshot, schedule, schedule_all
from node.model.domain import Assignment, NodeInfo, ServiceRecord
from tests.factories import make_node, make_service, make_task

GIB = 1 << 30


def held_by(task: Assignment, old: Assignment) -> Assignment:
    """`task` handing off `old` (as `with_handoffs` writes it)."""
    return replace(task, handoff={k: v for k, v in asdict(old).items() if k != "handoff"})


def handoffs(plan: Plan, service: ServiceRecord, alive: set[str], over: frozenset[str] = frozenset()) -> Plan:
    policy = update_policy(service.spec)
    return (  # called as before `over` existed when none is given
        updates.with_handoffs(plan, policy, alive, over)
        if over
        else updates.with_handoffs(plan, policy, alive)
    )


# -- what a moved replacement holds --------------------------------------------------------

V1 = make_service("web", version=1, image="img:1")
V2 = make_service("web", version=2, image="img:2")
OLD = make_task(V1, 1, "n1")  # serving
NEW = held_by(make_task(V2, 1, "n2"), OLD)  # its replacement, not ready yet
NODES = {n: make_node(n) for n in ("n1", "n2", "n3")}


@pytest.mark.parametrize(
    ("why", "snap", "now"),
    [
        ("drain", Snapshot(NODES, {("web", 1): NEW}, availability={"n2": "drain"}), V2),
        ("constraints", Snapshot(NODES, {("web", 1): NEW}), make_service(
            "web", version=3, image="img:2", placement={"constraints": ["node.id != n2"]}
        )),
        ("a newer update", Snapshot(NODES, {("web", 1): NEW}), make_service("web", version=3, image="img:3")),
    ],
)  # fmt: skip
def test_a_replacement_moved_before_it_was_ready_hands_on_the_task_it_held(
    why: str, snap: Snapshot, now: ServiceRecord
) -> None:
    """Slot 1's start-first update placed NEW on n2, holding OLD (n1) until NEW is ready.
    NEW was moved before it was (n2 drained, ...): its replacement held NEW, not yet
    serving, and nothing held OLD any more, so OLD's agent stopped it and the slot had no
    replica serving until the third one was ready."""
    plan = handoffs(schedule(snap, now, epoch=2, new_id=lambda: "web-1-third"), now, set(NODES))
    [placed] = plan.place
    assert placed.task_id == "web-1-third", why
    assert placed.handed_off() == OLD, f"{why}: the replica still serving is held until the new one is ready"
    assert "handoff" not in placed.handoff, "a handoff holds one task, never a chain"


def test_a_ready_replacement_moved_off_a_drained_node_is_itself_held() -> None:
    """NEW is ready (its handoff ends this pass: `over`), so it is what serves: the task
    moved off its drained node holds it, and OLD stops as its handoff ended."""
    snap = Snapshot(NODES, {("web", 1): NEW}, availability={"n2": "drain"})
    plan = schedule(snap, V2, epoch=2, new_id=lambda: "web-1-third")
    [placed] = handoffs(plan, V2, set(NODES), frozenset({NEW.task_id})).place
    assert placed.handed_off() == replace(NEW, handoff={})


# -- capacity of an old task held by a handoff ----------------------------------------------


def sized(node_id: str, cpu: float) -> NodeInfo:
    return replace(make_node(node_id), cpu=cpu, memory=int(cpu) * GIB)


def one_core(name: str, version: int, image: str, replicas: int = 1, cpu: float = 1.0) -> ServiceRecord:
    return make_service(name, replicas, version, image=image, resources={"cpu": cpu, "memory": GIB})


def reserved(task: Assignment) -> Assignment:
    return replace(task, cpu=1.0, memory=GIB)


A1, A2 = one_core("a", 1, "img:1"), one_core("a", 2, "img:2")
B = one_core("b", 1, "img:1")


def test_an_old_task_held_by_a_handoff_keeps_its_reservation() -> None:
    """a's old task on n1 serves under a handoff until its replacement on n2 is ready: both
    run, but only the replacement's reservation was counted, and b went onto full n1."""
    old = reserved(make_task(A1, 1, "n1"))
    new = held_by(reserved(make_task(A2, 1, "n2")), old)
    snap = Snapshot({"n1": sized("n1", 1), "n2": sized("n2", 1)}, {("a", 1): new})
    plans = {p.service: p for p in schedule_all(snap, [A2, B], epoch=2)}
    assert plans["a"].place == [] and plans["a"].keep == [new]
    assert plans["b"].place == [] and plans["b"].unplaced == [1], "n1 still runs a's old task"


def test_a_drained_replacement_leaves_the_held_tasks_reservation_counted() -> None:
    """The replacement moves off drained n2; the old task still serves on n1 (held by the
    next one), so n1 has no room for it, and n3 takes it."""
    old = reserved(make_task(A1, 1, "n1"))
    new = held_by(reserved(make_task(A2, 1, "n2")), old)
    nodes = {n: sized(n, 1) for n in ("n1", "n2", "n3")}
    snap = Snapshot(nodes, {("a", 1): new}, availability={"n2": "drain"})
    [plan] = schedule_all(snap, [A2], epoch=2)
    assert [t.node for t in plan.place] == ["n3"]


def test_a_stopped_slot_gives_back_its_held_tasks_reservation() -> None:
    """Scaled to 0 mid-handoff: both of slot 1's tasks stop, so n1 is all free for b."""
    b = one_core("b", 1, "img:1", cpu=2.0)
    old = reserved(make_task(A1, 1, "n1"))
    new = held_by(reserved(make_task(A2, 1, "n1", task_id="a-1-new")), old)
    snap = Snapshot({"n1": sized("n1", 2)}, {("a", 1): new})
    plans = {p.service: p for p in schedule_all(snap, [one_core("a", 3, "img:2", replicas=0), b], epoch=2)}
    assert plans["a"].stop == [new]
    assert [t.node for t in plans["b"].place] == ["n1"]


def test_a_rollback_on_a_full_node_restores_the_held_task() -> None:
    """Rolled back mid-handoff of an update in place (n1 runs both for a while): the slot
    goes back to the old task, whose reservation is counted already; it is restored, not
    left pending for want of room."""
    old = reserved(make_task(A1, 1, "n1"))
    new = held_by(reserved(make_task(A2, 1, "n1", task_id="a-1-new")), old)
    snap = Snapshot({"n1": sized("n1", 1)}, {("a", 1): new})
    back = one_core("a", 3, "img:1")
    [plan] = schedule_all(snap, [back], epoch=2)
    assert handoffs(plan, back, {"n1"}).place == [old]
