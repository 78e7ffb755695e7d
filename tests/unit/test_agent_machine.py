"""The agent's per-task state machine (`node.agent.machine.Slots`) and its invariants
(`node.agent.invariants`): tables of events and the actions they give, then random
event sequences, driven as the agent's shell drives them, that keep every invariant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from node.agent.diff import diff
from node.agent.health import Health, Verdict
from node.agent.invariants import InvariantError, validate
from node.agent.machine import LIVE, Action, Emit, Forget, Phase, Remove, Slots, Start, Stop, Withdraw
from node.agent.restart import MAX_DELAY, START_DELAY, Policy
from node.model.domain import Assignment, Desired, TaskState, TaskStatus
from node.runtime.base import LABELS, Container
from tests.factories import make_task

NODE, ADDRESS = "n1", "127.0.0.1"
ALWAYS = Policy(delay=1.0)
HEALTHY, SICK = Verdict(Health.HEALTHY, "ok"), Verdict(Health.UNHEALTHY, "500", 6, replace=True)


def container(task: Assignment, n: int = 1, state: str = "running", code: int = 0) -> Container:
    return Container(
        f"c{n}-{task.task_id}",
        f"{task.service}.{task.slot}.{task.task_id}",
        {LABELS.TASK: task.task_id, LABELS.SERVICE: task.service},
        state,
        code,
        {8080: 30000 + n},
        "2026-12-05T21:00:00Z",
    )


def slots() -> Slots:
    return Slots(NODE, ADDRESS, wall=lambda: 1.7e9)


def running(m: Slots, task: Assignment, c: Container, now: float = 0.0) -> None:
    m.desired({task.task_id: task})
    [start] = m.starts([task], now)
    assert start == Start(task)
    m.started(task, c, Verdict(), now)


def test_a_started_task_runs_is_routable_and_published() -> None:
    m, t = slots(), make_task("web", 1, NODE)
    m.desired({t.task_id: t})
    assert m.starts([t], 0.0) == [Start(t)]
    assert m.status[t.task_id].state == TaskState.PENDING
    [emit] = m.started(t, container(t), Verdict(), 0.0)
    assert isinstance(emit, Emit) and emit.kind == "task.started"
    s = m.slots[t.task_id]
    assert (s.phase, s.routable, m.status[t.task_id].state) == (Phase.RUNNING, True, TaskState.RUNNING)
    [ep] = m.endpoints()
    assert (ep.task_id, ep.port, ep.container_port) == (t.task_id, 30001, 8080)
    validate(m)


@pytest.mark.parametrize(
    ("policy", "code", "kinds", "state", "terminal"),
    [
        (ALWAYS, 137, [Forget, Withdraw, Emit, Remove], TaskState.EXITED, False),
        (Policy(condition="on-failure"), 0, [Forget, Withdraw, Emit], TaskState.EXITED, True),
        (Policy(condition="never"), 3, [Forget, Withdraw, Emit], TaskState.FAILED, True),
    ],
)
def test_an_exit_is_decided_once_by_the_policy(
    policy: Policy, code: int, kinds: list[type], state: TaskState, terminal: bool
) -> None:
    m, t = slots(), make_task("web", 1, NODE)
    c = container(t)
    running(m, t, c)
    dead = replace(c, state="exited", exit_code=code)
    m.listed([], [(t, dead)])
    actions = m.exited(t, dead, policy, 5.0)
    assert [type(a) for a in actions] == kinds, "kept for its logs when the policy gave up"
    status = m.status[t.task_id]
    assert (status.state, status.exit_code, status.terminal) == (state, code, terminal)
    if not terminal:
        assert m.next_start == 6.0 and m.starts([t], 5.5) == [] and m.starts([t], 6.0) == [Start(t)]
    else:
        assert not m.deciding(t, dead) and m.exited(t, dead, policy, 9.0) == []
        assert m.starts([t], 100.0) == [], "never started again"
    validate(m)


def test_an_exit_whose_policy_cannot_be_read_is_decided_later() -> None:
    m, t = slots(), make_task("web", 1, NODE)
    c = container(t)
    running(m, t, c)
    dead = replace(c, state="exited", exit_code=1)
    assert [type(a) for a in m.exited(t, dead, None, 1.0)] == [Forget, Withdraw], "not removed yet"
    assert m.deciding(t, dead) and m.slots[t.task_id].restart.restarts == 0
    assert Remove(dead.id) in m.exited(t, dead, ALWAYS, 2.0)
    assert m.slots[t.task_id].restart.restarts == 1


def test_failed_starts_back_off_from_one_delay_doubling_and_start_over_once_started() -> None:
    m, t = slots(), make_task("web", 1, NODE)
    m.desired({t.task_id: t})
    now, waits = 0.0, []
    for _ in range(9):
        assert m.starts([t], now) == [Start(t)]
        m.start_failed(t, "image x is not present", now)
        assert m.status[t.task_id].state == TaskState.FAILED
        at = m.slots[t.task_id].restart.next_at
        assert m.starts([t], at - 0.01) == [] and m.status[t.task_id].state == TaskState.FAILED
        waits.append(at - now)
        now = at
    assert waits == [START_DELAY * 2**n for n in range(6)] + [MAX_DELAY] * 3
    m.starts([t], now)
    m.started(t, container(t), Verdict(), now)
    m.starts([t], now)
    m.start_failed(t, "again", now)
    assert m.slots[t.task_id].restart.next_at - now == START_DELAY
    validate(m)


def test_an_unhealthy_replica_is_replaced_once_through_the_drain_path() -> None:
    m, t = slots(), make_task("web", 1, NODE)
    c = container(t)
    running(m, t, c)
    assert m.seen(t, c, HEALTHY, ALWAYS, 1.0) == [] and m.slots[t.task_id].routable
    first = m.seen(t, c, SICK, ALWAYS, 2.0, drained=3.0)
    assert [type(a) for a in first] == [Emit, Stop] and first[1] == Stop(c, 3.0, must_withdraw=False)
    again = m.seen(t, c, SICK, ALWAYS, 3.0, drained=4.0)
    assert again == [Stop(c, 4.0, must_withdraw=False)], "decided once per container"
    s = m.slots[t.task_id]
    assert (s.phase, s.routable, s.restart.restarts, s.restart.exit_code) == (Phase.UNHEALTHY, False, 1, -1)
    assert "unhealthy after 6 failed checks" in m.status[t.task_id].message
    assert m.endpoints() == []
    validate(m)


def test_a_cut_off_replica_stops_without_waiting_for_its_withdrawal() -> None:
    m, t = slots(), make_task("web", 1, NODE)
    c = container(t)
    running(m, t, c)
    actions = m.cut_off(t, c, "cut off from etcd")
    assert actions[-1] == Stop(c, must_withdraw=False, keep=False)  # removed: a kept one would restart
    assert m.slots[t.task_id].phase == Phase.STOPPING and m.endpoints() == []
    m.listed([], [])  # stopped and gone
    assert m.slots[t.task_id].phase == Phase.WANTED
    validate(m)


def test_a_sweep_forgets_every_unassigned_task_and_the_engine_down_says_unknown() -> None:
    m = slots()
    t1, t2 = make_task("web", 1, NODE), make_task("web", 2, NODE)
    running(m, t1, container(t1))
    m.desired({t1.task_id: t1, t2.task_id: t2})
    m.desired({t2.task_id: t2})
    assert set(m.slots) == {t2.task_id} and m.owned == {t2.task_id}
    m.engine_down({t2.task_id: t2}, "the engine has not answered for 15s")
    assert m.status[t2.task_id].state == TaskState.UNKNOWN and m.endpoints() == []
    validate(m)


def test_a_seeded_terminal_task_is_not_started_after_a_daemon_restart() -> None:
    m, t = slots(), make_task("web", 1, NODE)
    m.seed(TaskStatus(t.task_id, "web", 1, NODE, "failed", restarts=2, terminal=True, message="gave up"), 0.0)
    m.desired({t.task_id: t})
    assert m.starts([t], 0.0) == []
    assert m.status[t.task_id].terminal
    validate(m)


def test_the_validator_names_what_is_broken() -> None:
    m = slots()
    t1, t2 = make_task("web", 1, NODE), make_task("web", 2, NODE)
    c = container(t1)
    running(m, t1, c)
    m.desired({t1.task_id: t1, t2.task_id: t2})
    m.slots[t2.task_id].container, m.slots[t2.task_id].phase = c, Phase.RUNNING  # one container, two slots
    m.slots[t1.task_id].restart = replace(m.slots[t1.task_id].restart, next_at=-1.0)
    m.owned = frozenset({t2.task_id})
    with pytest.raises(InvariantError) as err:
        validate(m)
    text = str(err.value)
    assert "also held by task" in text and "negative" in text and "no longer owned" in text
    assert f"holds container {c.id} of task {t1.task_id}" in text


# -- random event sequences, driven as the shell drives them ----------------------------

TASKS = [make_task("web", n, NODE, task_id=f"t{n}") for n in (1, 2, 3)]
VERDICTS = [Verdict(), Verdict(Health.STARTING), HEALTHY, Verdict(Health.UNHEALTHY, "500", 3), SICK]
POLICIES = [ALWAYS, Policy(delay=0.0), Policy(condition="on-failure"), Policy(condition="never")]


class AgentSim(RuleBasedStateMachine):
    """A node: assignments, containers in a fake engine, stops that finish later."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.m = Slots(NODE, ADDRESS, wall=lambda: 1.7e9 + self.now)
        self.assigned: dict[str, Assignment] = {}
        self.containers: dict[str, Container] = {}
        self.stopping: set[str] = set()
        self.verdict: dict[str, Verdict] = {}
        self.policy = ALWAYS
        self.made = 0

    def live(self, tid: str) -> list[Container]:
        return [
            c
            for c in self.containers.values()
            if c.labels[LABELS.TASK] == tid and c.running and c.id not in self.stopping
        ]

    @rule(n=st.integers(0, 2), desired=st.sampled_from([Desired.RUNNING, Desired.STOPPED]))
    def assign(self, n: int, desired: Desired) -> None:
        t = replace(TASKS[n], desired=desired.value)
        self.assigned[t.task_id] = t

    @rule(n=st.integers(0, 2))
    def unassign(self, n: int) -> None:
        self.assigned.pop(TASKS[n].task_id, None)

    @rule(policy=st.sampled_from(POLICIES))
    def respec(self, policy: Policy) -> None:
        self.policy = policy

    @rule(n=st.integers(0, 2), code=st.sampled_from([0, 1, 137]), never_started=st.booleans())
    def crash(self, n: int, code: int, never_started: bool) -> None:
        for c in self.live(TASKS[n].task_id):
            started = "" if never_started else c.started_at
            state = "created" if never_started else "exited"
            self.containers[c.id] = replace(c, state=state, exit_code=code, started_at=started)

    @rule(n=st.integers(0, 2), verdict=st.sampled_from(VERDICTS))
    def health(self, n: int, verdict: Verdict) -> None:
        self.verdict[TASKS[n].task_id] = verdict

    @rule(seconds=st.sampled_from([0.0, 0.3, 1.0, 5.0, 40.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def stops_finish(self) -> None:
        for cid in self.stopping:
            self.containers.pop(cid, None)
        self.stopping.clear()

    @rule()
    def engine_gap(self) -> None:
        self.m.engine_gap()

    @rule()
    def engine_down_and_up(self) -> None:
        self.m.engine_down(self.assigned, "the engine has not answered")
        assert self.m.endpoints() == []
        self.m.engine_up()

    @rule(n=st.integers(0, 2))
    def cut_off(self, n: int) -> None:
        t = self.assigned.get(TASKS[n].task_id)
        if t is None or t.desired != Desired.RUNNING:
            return
        self.m.desired(self.assigned)
        for c in self.live(t.task_id):
            self.carry_out(self.m.cut_off(t, c, "cut off"))

    @rule(
        outcome=st.sampled_from(["ok", "ok", "fail", "pull", "exits"]),
        policy_known=st.booleans(),
    )
    def a_pass(self, outcome: str, policy_known: bool) -> None:
        m = self.m
        m.begin_pass()
        actions = diff(self.assigned, list(self.containers.values()))
        m.desired(self.assigned)
        m.listed(actions.keep, actions.replace)
        self.carry_out(m.adopt(actions.keep))
        for c in actions.stop:
            self.carry_out([Stop(c)])
        for t, c in actions.replace:
            policy = self.policy if policy_known or not m.deciding(t, c) else None
            self.carry_out(m.exited(t, c, policy, self.now))
        for t, c in actions.keep:
            if c.id in self.stopping:
                m.stopping(t)
                continue
            verdict = self.verdict.get(t.task_id, Verdict())
            self.carry_out(m.seen(t, c, verdict, self.policy, self.now, drained=0.5))
        for start in m.starts(actions.start, self.now):
            t = start.task
            assert m.slots[t.task_id].restart.next_at <= self.now, "started before its back-off"
            assert not self.live(t.task_id), "a second live container for one slot"
            if outcome == "fail":
                m.start_failed(t, "image not present", self.now)
            elif outcome == "pull":
                m.pulling(t, "pulling web:1")
            else:
                self.made += 1
                c = container(t, self.made, "running" if outcome == "ok" else "exited", 1)
                self.containers[c.id] = c
                self.carry_out(m.started(t, c, self.verdict.get(t.task_id, Verdict()), self.now))
        for ep in m.endpoints():  # after a pass: only what it saw running and assigned
            assert self.assigned[ep.task_id].desired == Desired.RUNNING
            assert self.live(ep.task_id), "an endpoint without a running container"

    def carry_out(self, actions: Sequence[Action]) -> None:
        for a in actions:
            if isinstance(a, Stop):
                self.stopping.add(a.container.id)
            elif isinstance(a, Remove):
                self.containers.pop(a.container_id, None)

    @invariant()
    def state_is_valid(self) -> None:
        validate(self.m)
        for s in self.m.slots.values():
            assert s.phase in LIVE or not s.routable

    @invariant()
    def at_most_one_live_container_per_task(self) -> None:
        for t in TASKS:
            assert len(self.live(t.task_id)) <= 1


TestRandomEventSequences = AgentSim.TestCase
TestRandomEventSequences.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
