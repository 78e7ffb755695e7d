"""`leader.scheduler.schedule`: case tables, then Hypothesis properties over random clusters."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from leader.scheduler import Plan, Snapshot, schedule, template_hash
from node.model.domain import Assignment, ServiceRecord
from tests.factories import make_node, make_service, make_spec, make_task

EPOCH = 7


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"


def snap(nodes: Iterable[str], tasks: Iterable[Assignment] = ()) -> Snapshot:
    return Snapshot({n: make_node(n) for n in nodes}, {(t.service, t.slot): t for t in tasks})


def plan_for(snapshot: Snapshot, service: ServiceRecord) -> Plan:
    return schedule(snapshot, service, EPOCH, now=123.0, new_id=ids())


def placed(plan: Plan) -> list[tuple[int, str]]:
    return [(t.slot, t.node) for t in plan.place]


def apply(snapshot: Snapshot, plan: Plan) -> Snapshot:
    tasks = dict(snapshot.tasks)
    for t in plan.stop:
        del tasks[(t.service, t.slot)]
    for t in plan.place:
        tasks[(t.service, t.slot)] = t
    return Snapshot(snapshot.nodes, tasks, snapshot.revision)


# -- tables ------------------------------------------------------------------------------


def test_spreads_slots_over_nodes_round_robin_by_id() -> None:
    plan = plan_for(snap(["n2", "n1", "n3"]), make_service("web", replicas=5))
    assert placed(plan) == [(1, "n1"), (2, "n2"), (3, "n3"), (4, "n1"), (5, "n2")]
    assert not plan.stop and not plan.keep and not plan.unplaced


def test_new_tasks_carry_epoch_version_template_and_time() -> None:
    service = make_service("web", replicas=1, version=4)
    [task] = plan_for(snap(["n1"]), service).place
    assert task == Assignment(
        task_id="new1",
        service="web",
        slot=1,
        node="n1",
        version=4,
        epoch=EPOCH,
        template=template_hash(service.spec),
        created_at=123.0,
    )


def test_ties_on_this_service_go_to_the_node_with_fewest_tasks_overall() -> None:
    api = make_service("api", replicas=2)
    busy = [make_task(api, 1, "n1"), make_task(api, 2, "n1")]
    plan = plan_for(snap(["n1", "n2", "n3"], busy), make_service("web", replicas=3))
    assert placed(plan) == [(1, "n2"), (2, "n3"), (3, "n1")]


def test_fewest_of_this_service_comes_before_fewest_overall() -> None:
    web, api = make_service("web", replicas=2), make_service("api", replicas=3)
    tasks = [make_task(web, 1, "n2")] + [make_task(api, s, "n1") for s in (1, 2, 3)]
    plan = plan_for(snap(["n1", "n2"], tasks), web)
    assert placed(plan) == [(2, "n1")]


def test_scale_up_keeps_what_runs_and_places_the_rest() -> None:
    web = make_service("web", replicas=4)
    tasks = [make_task(web, 1, "n1"), make_task(web, 2, "n2")]
    plan = plan_for(snap(["n1", "n2"], tasks), web)
    assert plan.keep == tasks
    assert placed(plan) == [(3, "n1"), (4, "n2")]
    assert not plan.stop


def test_scale_down_stops_the_highest_slots_first() -> None:
    web = make_service("web", replicas=2)
    tasks = [make_task(web, s, f"n{s % 2 + 1}") for s in (1, 2, 3, 4, 5)]
    plan = plan_for(snap(["n1", "n2"], tasks), web)
    assert [t.slot for t in plan.stop] == [5, 4, 3]
    assert [t.slot for t in plan.keep] == [1, 2]
    assert not plan.place


def test_scale_to_zero_stops_everything() -> None:
    web = make_service("web", replicas=0)
    tasks = [make_task(web, 1, "n1"), make_task(web, 2, "gone")]
    plan = plan_for(snap(["n1"], tasks), web)
    assert [t.slot for t in plan.stop] == [2, 1] and not plan.place and not plan.keep


def test_tasks_on_a_vanished_node_are_placed_again() -> None:
    web = make_service("web", replicas=3)
    tasks = [make_task(web, 1, "n1"), make_task(web, 2, "n2"), make_task(web, 3, "n2")]
    plan = plan_for(snap(["n1", "n3"], tasks), web)
    assert [t.slot for t in plan.keep] == [1]
    assert placed(plan) == [(2, "n3"), (3, "n1")]
    assert {t.task_id for t in plan.place}.isdisjoint(t.task_id for t in tasks)
    assert not plan.stop, "a replaced slot is overwritten, not deleted"


def test_an_outdated_template_is_replaced_on_the_same_node() -> None:
    old, new = make_service("web", replicas=2), make_service("web", replicas=2, version=2, image="web:2")
    tasks = [make_task(old, 1, "n2"), make_task(old, 2, "n1")]
    plan = plan_for(snap(["n1", "n2"], tasks), new)
    assert placed(plan) == [(1, "n2"), (2, "n1")]
    assert all(t.version == 2 and t.template == template_hash(new.spec) for t in plan.place)
    assert [t.task_id for t in plan.place] == ["new1", "new2"]


def test_a_new_replica_count_alone_replaces_nothing() -> None:
    old, new = make_service("web", replicas=2), make_service("web", replicas=3, version=2)
    tasks = [make_task(old, 1, "n1"), make_task(old, 2, "n2")]
    plan = plan_for(snap(["n1", "n2"], tasks), new)
    assert plan.keep == tasks and placed(plan) == [(3, "n1")]


def test_no_nodes_leaves_every_slot_unplaced() -> None:
    web = make_service("web", replicas=3)
    plan = plan_for(snap([], [make_task(web, 2, "gone")]), web)
    assert plan.unplaced == [1, 2, 3]
    assert plan.empty


def test_other_services_are_left_alone() -> None:
    web, api = make_service("web", replicas=1), make_service("api", replicas=1)
    tasks = [make_task(api, 1, "gone"), make_task(api, 2, "n1")]
    plan = plan_for(snap(["n1"], tasks), web)
    assert placed(plan) == [(1, "n1")] and not plan.stop and not plan.keep


def test_template_hash_ignores_replicas_only() -> None:
    assert template_hash(make_spec("web", 1)) == template_hash(make_spec("web", 9))
    assert template_hash(make_spec("web", 1)) != template_hash(make_spec("web", 1, image="web:2"))
    assert template_hash(make_spec("web", 1, env={"A": "1"})) != template_hash(make_spec("web", 1))
    assert template_hash({"b": 1, "a": 2}) == template_hash({"a": 2, "b": 1})


# -- properties --------------------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn, existing: bool = True) -> tuple[Snapshot, ServiceRecord]:
    """1-20 alive nodes, 0-200 replicas, assignments of this and another service, some
    on dead nodes, some with an outdated template."""
    alive = [f"n{i:02d}" for i in range(draw(st.integers(1, 20)))]
    dead = [f"dead{i}" for i in range(draw(st.integers(0, 3)))]
    web = make_service("web", replicas=draw(st.integers(0, 200)), version=2)
    stale = make_service("web", version=1, image="web:old")
    api = make_service("api", replicas=5)
    tasks: list[Assignment] = []
    if existing:
        for slot in draw(st.sets(st.integers(1, 220), max_size=60)):
            node = draw(st.sampled_from(alive + dead))
            tasks.append(make_task(draw(st.sampled_from([web, stale])), slot, node))
    for slot in draw(st.sets(st.integers(1, 30), max_size=30)):
        tasks.append(make_task(api, slot, draw(st.sampled_from(alive + dead))))
    return snap(alive, tasks), web


@settings(deadline=None)
@given(clusters())
def test_exactly_the_wanted_slots_on_alive_nodes(cluster: tuple[Snapshot, ServiceRecord]) -> None:
    snapshot, web = cluster
    plan = plan_for(snapshot, web)
    kept, new = [t.slot for t in plan.keep], [t.slot for t in plan.place]
    assert sorted(kept + new) == list(range(1, web.replicas + 1))
    assert all(t.node in snapshot.nodes for t in plan.keep + plan.place)
    assert not plan.unplaced
    current = {slot for (svc, slot) in snapshot.tasks if svc == "web"}
    assert {t.slot for t in plan.stop} == {s for s in current if s > web.replicas}
    assert all(t.service == "web" for t in plan.place + plan.stop + plan.keep)


@settings(deadline=None)
@given(clusters(existing=False))
def test_from_nothing_the_spread_is_even(cluster: tuple[Snapshot, ServiceRecord]) -> None:
    snapshot, web = cluster
    plan = plan_for(snapshot, web)
    counts = Counter(t.node for t in plan.place)
    per_node = [counts[n] for n in snapshot.nodes]
    assert max(per_node) - min(per_node) <= 1


@settings(deadline=None)
@given(clusters())
def test_scheduling_the_result_again_changes_nothing(cluster: tuple[Snapshot, ServiceRecord]) -> None:
    snapshot, web = cluster
    after = apply(snapshot, plan_for(snapshot, web))
    again = plan_for(after, web)
    assert again.empty, (again.place, again.stop)
    assert len(again.keep) == web.replicas
