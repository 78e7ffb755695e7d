"""leader.jobs: a job's state machine, pass by pass, with no cluster (issue 18)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from leader import jobs
from node.model.domain import Assignment, TaskState, TaskStatus
from node.model.jobs import JobRecord
from node.model.spec_job import MAX_BACKOFF, JobSpec, backoff
from tests.factories import make_task, typed_spec

ALIVE = {"n1", "n2"}


def job_spec(**job: object):  # type: ignore[no-untyped-def]
    return typed_spec("batch", kind="job", job=job)


class Sim:
    """Steps a job the way the leader does: the record is stored after each step, the
    starts become tasks (as the scheduler would place them), statuses are set by hand."""

    def __init__(self, **job: object) -> None:
        self.spec = job_spec(**job)
        self.record: JobRecord | None = None
        self.tasks: dict[int, Assignment] = {}
        self.status: dict[str, TaskStatus] = {}
        self.n = 0
        self.most_live = 0

    def step(self, now: float, alive: set[str] = ALIVE) -> jobs.JobStep:
        st = jobs.step("batch", "u1", self.spec, self.record, self.tasks, self.status.get, alive, now)
        self.record = st.record
        for slot in sorted(st.start):
            self.n += 1
            self.tasks[slot] = make_task("batch", slot, sorted(alive)[0], task_id=f"t{self.n}")
        for task in st.stop:
            del self.tasks[task.slot]
        self.most_live = max(self.most_live, len(self.live()))
        return st

    def live(self) -> list[Assignment]:
        return [t for t in self.tasks.values() if not self.ended(t)]

    def ended(self, t: Assignment) -> bool:
        s = self.status.get(t.task_id)
        return s is not None and s.terminal

    def finish(self, slot: int, code: int) -> None:
        t = self.tasks[slot]
        state = TaskState.EXITED if code == 0 else TaskState.FAILED
        self.status[t.task_id] = TaskStatus(
            t.task_id, "batch", slot, t.node, state, exit_code=code, terminal=True
        )


def test_six_completions_two_at_a_time() -> None:
    sim = Sim(completions=6, parallelism=2)
    now = 100.0
    st = sim.step(now)
    assert st.start == {1, 2}
    for _ in range(10):
        for t in sim.live():
            sim.finish(t.slot, 0)
        now += 1
        st = sim.step(now)
        if sim.record and sim.record.state != "running":
            break
    assert sim.record is not None and sim.record.state == "succeeded"
    assert sim.n == 6 and sim.most_live == 2
    assert sorted(sim.record.counted) == sorted(f"t{i}" for i in range(1, 7))
    assert jobs.summary(sim.record, 6)["succeeded"] == 6
    assert st.ended == "succeeded" and not st.start


def test_a_finished_task_is_counted_once_when_the_pass_is_repeated() -> None:
    """A leader that wrote the record and died before starting the next task: the next
    pass reads the record back and counts nothing twice."""
    sim = Sim(completions=3)
    sim.step(0.0)
    sim.finish(1, 0)
    st = jobs.step("batch", "u1", sim.spec, sim.record, sim.tasks, sim.status.get, ALIVE, 1.0)
    again = jobs.step("batch", "u1", sim.spec, st.record, sim.tasks, sim.status.get, ALIVE, 2.0)
    assert st.record.counted == again.record.counted == ["t1"]
    assert again.record.indexes["1"]["attempts"] == 1
    assert again.start == {2} and again.hide == {1}


def test_failures_back_off_then_the_job_fails_and_stops_its_tasks() -> None:
    sim = Sim(completions=2, parallelism=2, retries=2, backoff=5)
    sim.step(0.0)
    sim.finish(1, 3)
    st = sim.step(1.0)
    assert sim.record is not None and sim.record.failures == 1
    assert sim.record.indexes["1"]["state"] == "backoff" and st.wake == 6.0 and 1 not in st.start
    assert sim.step(5.9).start == set()
    assert sim.step(6.0).start == {1}  # retried after 5 s
    sim.finish(1, 3)
    st = sim.step(7.0)
    assert sim.record.failures == 2 and st.wake == 7.0 + 10.0  # doubled
    sim.step(17.0)
    sim.finish(1, 1)
    st = sim.step(18.0)
    assert sim.record.state == "failed" and st.ended == "failed"
    assert "3 failure(s), more than retries (2)" in sim.record.message
    assert [t.slot for t in st.stop] == [2]  # the index still running is unassigned
    assert sim.record.indexes["1"]["attempts"] == 3 and sim.record.indexes["1"]["exit_code"] == 1


def test_a_task_lost_with_its_node_is_retried_elsewhere_and_not_counted() -> None:
    sim = Sim(completions=1)
    sim.step(0.0)
    st = sim.step(1.0, alive={"n2"})  # n1 (where t1 ran) is gone
    assert st.start == {1} and sim.record is not None and sim.record.failures == 0
    assert sim.tasks[1].node == "n2"
    sim.finish(1, 0)
    sim.step(2.0, alive={"n2"})
    assert sim.record.state == "succeeded" and sim.record.counted == ["t2"]


def test_active_deadline_fails_a_running_job() -> None:
    sim = Sim(active_deadline=30)
    assert sim.step(0.0).wake == 30.0
    st = sim.step(30.0)
    assert sim.record is not None and sim.record.state == "failed" and "active_deadline" in sim.record.message
    assert [t.slot for t in st.stop] == [1]


def test_ttl_after_finished_unassigns_every_task() -> None:
    sim = Sim(completions=2, parallelism=2, ttl_after_finished=60)
    sim.step(0.0)
    sim.finish(1, 0)
    sim.finish(2, 0)
    st = sim.step(1.0)
    assert st.ended == "succeeded" and not st.stop and st.wake == 61.0
    st = sim.step(61.0)
    assert sorted(t.slot for t in st.stop) == [1, 2]
    assert sim.record is not None and sim.record.cleaned and not sim.tasks


def test_a_record_of_another_incarnation_starts_afresh() -> None:
    old = JobRecord("batch", "u0", state="failed", failures=9, counted=["x"])
    st = jobs.step("batch", "u1", job_spec(), old, {}, {}.get, ALIVE, 5.0)
    assert st.record.uid == "u1" and st.record.failures == 0 and st.record.started_at == 5.0
    assert st.start == {1}


def test_a_task_that_has_not_ended_is_not_an_outcome() -> None:
    sim = Sim()
    sim.step(0.0)
    t = sim.tasks[1]
    sim.status[t.task_id] = TaskStatus(t.task_id, "batch", 1, "n1", TaskState.EXITED, exit_code=0)
    st = sim.step(1.0)  # exited but not terminal (not the agent's verdict yet)
    assert sim.record is not None and sim.record.counted == [] and st.start == set()
    sim.status[t.task_id] = replace(sim.status[t.task_id], task_id="other")
    assert sim.step(2.0).record.counted == []  # a status of another task


@pytest.mark.parametrize(("failures", "wait"), [(1, 10.0), (2, 20.0), (3, 40.0), (10, MAX_BACKOFF)])
def test_backoff_doubles_up_to_the_cap(failures: int, wait: float) -> None:
    assert backoff(JobSpec(), failures) == wait


def lowered(sim: Sim, **job: object) -> None:
    """The job's spec applied again with other settings (its record and tasks stay)."""
    sim.spec = job_spec(**job)


def test_lowered_completions_count_only_the_indices_below_the_new_count() -> None:
    """Indices 1, 4 and 5 of 5 succeeded, then completions went to 3: the job is not done
    (it was: 3 successes >= 3) until 2 and 3 succeed, as Kubernetes counts an Indexed Job."""
    sim = Sim(completions=5, parallelism=5)
    sim.step(0.0)
    for slot in (1, 4, 5):
        sim.finish(slot, 0)
    sim.step(1.0)
    lowered(sim, completions=3, parallelism=5)
    st = sim.step(2.0)
    assert sim.record is not None and sim.record.state == "running" and not st.ended
    counts = {"pending": 0, "running": 2, "backoff": 0, "succeeded": 1, "failed": 0}
    assert jobs.summary(sim.record, 3) == counts
    sim.finish(2, 0)
    sim.finish(3, 0)
    sim.step(3.0)
    assert sim.record.state == "succeeded" and sim.record.message == "3 of 3 completed"


def test_tasks_above_lowered_completions_are_stopped_and_not_counted() -> None:
    """Three running, completions lowered to 2: the third is unassigned (it held a place of
    `parallelism`, and its failure counted against `retries`), the others go on."""
    sim = Sim(completions=3, parallelism=3, retries=0)
    sim.step(0.0)
    third = sim.tasks[3]
    lowered(sim, completions=2, parallelism=3)
    st = sim.step(1.0)
    assert st.stop == [third] and 3 in st.hide and 3 not in st.start
    assert 3 not in sim.tasks
    sim.tasks[3] = third  # the stop was lost: the next pass stops it again, and counts nothing
    sim.finish(3, 1)
    st = sim.step(2.0)
    assert st.stop == [third] and sim.record is not None and sim.record.failures == 0
    assert sim.record.state == "running" and third.task_id not in sim.record.counted
    sim.finish(1, 0)
    sim.finish(2, 0)
    sim.step(3.0)
    assert sim.record.state == "succeeded"
