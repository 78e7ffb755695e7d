"""The rolling-update state machine (`leader.rollout`), step by step with a hand-moved clock."""

from __future__ import annotations

from leader.rollout import (
    PROGRESS_DEADLINE,
    Health,
    RolloutState,
    SlotView,
    Step,
    UpdatePolicy,
    start,
    step,
    update_policy,
)
from node.model.domain import RolloutRecord
from tests.factories import typed_spec

OLD, NEW = "old-template", "new-template"


class Sim:
    """Slots whose tasks follow the rollout's writes: a replaced slot starts, then is ready
    when the test says so."""

    def __init__(self, n: int, policy: UpdatePolicy, start_first: bool = True) -> None:
        self.policy = policy
        self.slots = {s: SlotView(OLD, Health.READY) for s in range(1, n + 1)}
        self.record = start("web", 1, 2, NEW, now=0.0)
        self.start_first = start_first
        self.replaced: list[int] = []
        self.released: list[int] = []

    def step(self, now: float) -> Step:
        out = step(self.record, self.policy, self.slots, now)
        for slot in out.replace:
            self.replaced.append(slot)
            self.slots[slot] = SlotView(NEW, Health.STARTING, handoff=self.start_first)
        self.record = out.record
        return out

    def ready(self, *slots: int) -> None:
        for s in slots:
            if self.slots[s].handoff:
                self.released.append(s)  # what leader.updates.releases does
            self.slots[s] = SlotView(NEW, Health.READY)

    def fail(self, *slots: int) -> None:
        for s in slots:
            self.slots[s] = SlotView(NEW, Health.FAILED, self.slots[s].handoff)

    @property
    def state(self) -> RolloutState:
        return RolloutState(self.record.state)


def test_a_sliding_window_of_parallelism_slots_then_monitor_then_completed() -> None:
    sim = Sim(6, UpdatePolicy(parallelism=2, monitor=5.0))
    assert sim.step(0.0).replace == [1, 2]
    assert sim.step(1.0).replace == [], "nothing new until a place frees up"
    sim.ready(1)
    out = sim.step(2.0)
    assert out.replace == [3], "slot 1 healthy: slot 3 starts"
    sim.ready(2, 3)
    assert sim.step(3.0).replace == [4, 5]
    sim.ready(4, 5)
    assert sim.step(4.0).replace == [6]
    sim.ready(6)
    sim.step(5.0)
    assert sim.state is RolloutState.UPDATING, "still monitoring the last slots"
    assert sim.record.updated == 6 and sim.record.total == 6
    sim.step(10.0)
    assert sim.state is RolloutState.COMPLETED
    assert sorted(sim.released) == [1, 2, 3, 4, 5, 6] and sorted(sim.replaced) == [1, 2, 3, 4, 5, 6]
    assert not sim.step(11.0).changed, "a finished rollout does nothing"


def test_delay_rests_a_freed_place_before_it_takes_the_next_slot() -> None:
    sim = Sim(3, UpdatePolicy(parallelism=1, delay=2.0, monitor=0.0))
    assert sim.step(0.0).replace == [1]
    sim.ready(1)
    assert sim.step(1.0).replace == []
    assert sim.step(2.9).replace == []
    assert sim.step(3.0).replace == [2]


def test_stop_first_replaces_without_a_handoff() -> None:
    sim = Sim(2, UpdatePolicy(parallelism=2, order="stop-first", monitor=0.0), start_first=False)
    sim.step(0.0)
    sim.ready(1, 2)
    sim.step(1.0)
    assert sim.released == [] and sim.state is RolloutState.COMPLETED


def test_a_failed_new_replica_triggers_rollback_by_default() -> None:
    sim = Sim(4, UpdatePolicy(parallelism=2))
    sim.step(0.0)
    sim.fail(2)
    out = sim.step(1.0)
    assert out.rollback and sim.state is RolloutState.FAILED
    assert "rolling back to version 1" in sim.record.message and sim.record.failed == [2]
    assert out.replace == [], "no new slot starts once it failed"


def test_pause_and_continue() -> None:
    paused = Sim(4, UpdatePolicy(parallelism=1, failure_action="pause"))
    paused.step(0.0)
    paused.fail(1)
    out = paused.step(1.0)
    assert not out.rollback and paused.state is RolloutState.PAUSED and out.replace == []
    assert "paused" in paused.record.message

    going = Sim(3, UpdatePolicy(parallelism=1, failure_action="continue", monitor=0.0))
    going.step(0.0)
    going.fail(1)
    assert going.step(1.0).replace == [2]
    going.ready(2)
    assert going.step(2.0).replace == [3]
    going.ready(3)
    going.step(3.0)
    assert going.state is RolloutState.COMPLETED and going.record.failed == [1]


def test_max_failure_ratio_tolerates_some_failures() -> None:
    sim = Sim(4, UpdatePolicy(parallelism=4, max_failure_ratio=0.25, monitor=0.0))
    sim.step(0.0)
    sim.fail(1)
    sim.ready(2, 3, 4)
    sim.step(1.0)
    assert sim.state is RolloutState.COMPLETED, "1 of 4 is within 0.25"


def test_a_failure_during_monitor_counts() -> None:
    sim = Sim(2, UpdatePolicy(parallelism=2, monitor=5.0))
    sim.step(0.0)
    sim.ready(1, 2)
    sim.step(1.0)
    sim.fail(2)
    out = sim.step(3.0)
    assert out.rollback and sim.record.failed == [2]


def test_a_replica_never_healthy_fails_after_the_progress_deadline() -> None:
    sim = Sim(1, UpdatePolicy())
    sim.step(0.0)
    sim.step(PROGRESS_DEADLINE - 1)
    assert sim.state is RolloutState.UPDATING
    assert sim.step(PROGRESS_DEADLINE + 1).rollback


def test_a_lost_write_is_made_again() -> None:
    """A new leader continues: the record says slot 1 is in flight but the assignment
    still has the old template (the write was lost)."""
    record = RolloutRecord("web", 1, 2, NEW, batch={"1": 0.0}, monitored={"2": 0.0})
    slots = {1: SlotView(OLD, Health.READY), 2: SlotView(NEW, Health.READY)}
    out = step(record, UpdatePolicy(parallelism=2), slots, 1.0)
    assert out.replace == [1] and out.record.batch == {"1": 0.0}


def test_a_rollback_that_fails_pauses_instead_of_rolling_back_again() -> None:
    record = start("web", 3, 4, NEW, now=0.0, rollback_of=3)
    assert record.state == RolloutState.ROLLING_BACK
    slots = {1: SlotView(OLD, Health.READY)}
    out = step(record, UpdatePolicy(), slots, 0.0)
    assert out.replace == [1]
    slots = {1: SlotView(NEW, Health.FAILED)}
    out = step(out.record, UpdatePolicy(), slots, 1.0)
    assert not out.rollback and out.record.state == RolloutState.PAUSED


def test_a_completed_rollback_says_rolled_back() -> None:
    record = start("web", 3, 4, NEW, now=0.0, rollback_of=3)
    slots = {1: SlotView(NEW, Health.READY)}
    out = step(record, UpdatePolicy(monitor=0.0), slots, 0.0)
    assert out.record.state == RolloutState.ROLLED_BACK


def test_policy_from_a_spec_uses_defaults_for_what_is_missing() -> None:
    policy = update_policy(typed_spec("web", update={"parallelism": 3, "order": "stop-first", "drain": 5.0}))
    assert (policy.parallelism, policy.order, policy.monitor, policy.failure_action) == (
        3,
        "stop-first",
        5.0,
        "rollback",
    )
    assert update_policy(typed_spec("web")) == UpdatePolicy()
