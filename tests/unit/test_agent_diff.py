"""`node.agent.diff.diff`: assigned tasks vs containers found, into start/keep/replace/stop/retired."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from node.agent.diff import diff
from node.model.domain import Assignment, Desired
from node.runtime.base import LABELS, Container
from tests.factories import make_container, make_task

A = make_task("web", 1, "n1", task_id="ta")
B = make_task("web", 2, "n1", task_id="tb")
STOPPED = make_task("web", 3, "n1", task_id="tc", desired=Desired.STOPPED)


def by_id(*tasks: Assignment) -> dict[str, Assignment]:
    return {t.task_id: t for t in tasks}


def test_nothing_assigned_nothing_found_is_idle() -> None:
    assert diff({}, []).idle


def test_an_assigned_task_without_container_is_started() -> None:
    actions = diff(by_id(B, A), [])
    assert actions.start == [A, B]  # in task id order
    assert not actions.keep and not actions.replace and not actions.stop


def test_a_running_container_is_kept() -> None:
    c = make_container(A)
    actions = diff(by_id(A), [c])
    assert actions.keep == [(A, c)] and actions.idle


def test_an_exited_container_is_replaced() -> None:
    c = make_container(A, state="exited")
    actions = diff(by_id(A), [c])
    assert actions.replace == [(A, c)] and not actions.start and not actions.stop


def test_a_paused_or_restarting_container_is_kept_not_replaced() -> None:
    """Before, only "running" was live: a paused container (`docker pause`, a `docker
    commit`) went to `replace` and the agent decided an exit (code 0) for it."""
    for state in ("paused", "restarting"):
        c = make_container(A, state=state)
        assert diff(by_id(A), [c]).keep == [(A, c)], state
        gone = make_container(B, state=state)
        assert diff(by_id(A), [gone]).stop == [gone], "unassigned: stopped, not retired"
    paused = make_container(A, state="paused", cid="c-p", started_at="2024-01-01T00:00:01Z")
    newer = make_container(A, state="exited", cid="c-x", started_at="2024-01-01T00:00:09Z")
    actions = diff(by_id(A), [newer, paused])
    assert actions.keep == [(A, paused)] and actions.retired == [newer]


def test_containers_of_unassigned_or_unlabelled_tasks_are_stopped_exited_ones_retired() -> None:
    gone, exited = make_container(B), make_container(B, state="exited", cid="c-old")
    bare = Container(id="c-bare", name="bare", labels={}, state="running")
    actions = diff(by_id(A), [gone, exited, bare])
    assert actions.stop == [gone, bare]
    assert actions.retired == [exited]  # history (decision 71): never stopped or started again
    assert actions.start == [A]


def test_of_duplicates_the_running_one_is_kept() -> None:
    running = make_container(A, cid="c-run", started_at="2024-01-01T00:00:01Z")
    newer_exited = make_container(A, state="exited", cid="c-exit", started_at="2024-01-01T00:00:09Z")
    actions = diff(by_id(A), [newer_exited, running])
    assert actions.keep == [(A, running)]
    assert actions.retired == [newer_exited] and not actions.stop


def test_of_two_running_duplicates_the_newest_is_kept() -> None:
    old = make_container(A, cid="c-old", started_at="2024-01-01T00:00:01Z")
    new = make_container(A, cid="c-new", started_at="2024-01-01T00:00:02Z")
    actions = diff(by_id(A), [old, new])
    assert actions.keep == [(A, new)] and actions.stop == [old]


def test_of_exited_duplicates_the_newest_is_replaced_the_rest_retired() -> None:
    old = make_container(A, state="exited", cid="c-old", started_at="2024-01-01T00:00:01Z")
    new = make_container(A, state="exited", cid="c-new", started_at="2024-01-01T00:00:02Z")
    actions = diff(by_id(A), [new, old])
    assert actions.replace == [(A, new)] and actions.retired == [old] and not actions.stop


def test_a_restarted_task_s_earlier_container_is_retired() -> None:
    crashed = make_container(A, state="exited", cid="c-1", started_at="2024-01-01T00:00:01Z")
    again = make_container(A, cid="c-2", started_at="2024-01-01T00:00:05Z")
    actions = diff(by_id(A), [crashed, again])
    assert actions.keep == [(A, again)] and actions.retired == [crashed] and actions.idle


def test_an_exited_container_of_a_desired_stopped_task_is_retired() -> None:
    c = make_container(STOPPED, state="exited")
    actions = diff(by_id(STOPPED), [c])
    assert actions.retired == [c] and actions.idle


def test_desired_stopped_is_never_started_and_its_container_stopped() -> None:
    assert diff(by_id(STOPPED), []).idle
    c = make_container(STOPPED)
    actions = diff(by_id(STOPPED), [c])
    assert actions.stop == [c] and not actions.keep and not actions.start


# -- property ----------------------------------------------------------------------------

TASK_IDS = [f"t{i}" for i in range(8)]
World = tuple[dict[str, Assignment], list[Container]]


@st.composite
def worlds(draw: st.DrawFn) -> World:
    assigned = {}
    for i, task_id in enumerate(draw(st.sets(st.sampled_from(TASK_IDS)))):
        desired = draw(st.sampled_from(list(Desired)))
        assigned[task_id] = make_task("web", i + 1, "n1", task_id=task_id, desired=desired)
    containers = []
    for n in range(draw(st.integers(0, 12))):
        label = draw(st.sampled_from([*TASK_IDS, "stray", ""]))
        state = draw(st.sampled_from(["running", "exited", "created", "dead"]))
        started = f"2024-01-01T00:00:{draw(st.integers(0, 59)):02d}Z"
        task = assigned.get(label) or make_task("web", 99, "n1", task_id=label)
        c = make_container(task, state=state, cid=f"c{n}", started_at=started)
        if not label:
            c = replace(c, labels={k: v for k, v in c.labels.items() if k != LABELS.TASK})
        containers.append(c)
    return assigned, containers


@given(worlds())
def test_applying_the_actions_converges_in_one_step(
    world: tuple[dict[str, Assignment], list[Container]],
) -> None:
    assigned, containers = world
    actions = diff(assigned, containers)
    fresh = itertools.count()
    gone = {c.id for c in actions.stop} | {c.id for _, c in actions.replace} | {c.id for c in actions.retired}
    after = [c for c in containers if c.id not in gone]
    for task in actions.start + [t for t, _ in actions.replace]:
        after.append(make_container(task, cid=f"new{next(fresh)}", started_at="2024-01-02T00:00:00Z"))

    again = diff(assigned, after)
    assert again.idle, again
    wanted = sorted(t for t, a in assigned.items() if a.desired == Desired.RUNNING)
    assert sorted(t.task_id for t, _ in again.keep) == wanted
    assert sorted(c.labels[LABELS.TASK] for c in after) == wanted, "one container per running task"
    assert all(c.running for c in after)
    kept_before = {c.id for _, c in actions.keep}
    assert kept_before <= {c.id for c in after}, "what ran as assigned is never touched"


@given(worlds())
def test_every_container_goes_in_one_bucket_and_retired_ones_never_run(world: World) -> None:
    assigned, containers = world
    actions = diff(assigned, containers)
    placed = [c.id for c in actions.stop + actions.retired] + [
        c.id for _, c in actions.keep + actions.replace
    ]
    assert sorted(placed) == sorted(c.id for c in containers)
    assert not any(c.running for c in actions.retired)
    assert all(c.running for c in actions.stop)
