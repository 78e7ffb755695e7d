"""A daemon restart while a task's restart waits out its back-off: the new agent neither
decides the same exit again nor forgets the decision (`node.agent.machine.Slots.seed`,
`recall`; `node.agent.restart.recalled`).

On a MemoryStore, a FakeRuntime and a fake monotonic clock, passes driven by hand; a
restart of shoald is a new `Agent` on the same store and engine, seeded from `status/`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from node.agent.agent import Agent
from node.agent.machine import NOT_COUNTED, Slots
from node.agent.restart import RESET_AFTER, RestartState, recalled
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import Assignment, TaskState, TaskStatus
from node.model.keys import Keys
from node.runtime.base import LABELS, Container, ContainerSpec
from node.store.memory import MemoryStore
from node.store.session import Session
from node.telemetry.events import EventLog
from tests.factories import CLUSTER, FakeClock, make_service, make_task

NODE = "n1"
KEYS = Keys()


class Runtime(FakeRuntime):
    """Ids that differ in their first 12 characters, as Docker's do (a kept container is
    renamed `<name>.<first 12 of its id>`: the fake's ids share them)."""

    async def run(self, spec: ContainerSpec) -> Container:
        c = await super().run(spec)
        made = replace(c, id=c.id[-12:] + c.id[:-12])
        del self.containers[c.id]
        self.containers[made.id], self.specs[made.id] = made, self.specs.pop(c.id)
        return made


@dataclass
class World:
    store: MemoryStore
    runtime: Runtime
    clock: FakeClock
    session: Session
    history: int
    agent: Agent

    def daemon(self) -> Agent:
        return Agent(
            self.store, KEYS, NODE, CLUSTER, self.runtime, self.session, EventLog(self.store, KEYS, NODE),
            "127.0.0.1", stop_timeout=1.0, drain=0.0, clock=self.clock, history=self.history,
        )  # fmt: skip

    async def restart_daemon(self) -> None:
        """shoald stops (its state goes) and starts again on the same etcd and engine."""
        self.agent = self.daemon()
        await self.agent._seed_restarts()

    async def task(self, **restart: Any) -> Assignment:
        svc = make_service("web", ports=[{"container": 8080, "protocol": "tcp"}], restart=restart)
        await self.store.put(KEYS.service("web"), svc.to_json())
        task = make_task(svc, 1, NODE)
        await self.store.put(KEYS.task("web", 1), task.to_json())
        await self.reconcile()
        return task

    async def reconcile(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        await self.agent.tasks.relist()
        await self.agent.history.services.relist()
        await self.agent.reconcile()
        await self.agent.stopped()
        await self.agent.flush()

    async def crash(self, code: int = 3) -> Container:
        """The task's running container exits (its pass decides)."""
        [c] = self.runtime.running()
        self.runtime.crash(c.id, exit_code=code)
        await self.reconcile()
        return c

    async def status(self, task: Assignment) -> TaskStatus:
        kv = await self.store.get(KEYS.status(task.task_id))
        assert kv is not None
        return TaskStatus.from_json(kv.value)

    def runs(self) -> int:
        return sum(1 for call in self.runtime.calls if call[0] == "run")


async def make_world(history: int) -> World:
    store, runtime, clock = MemoryStore(), Runtime(), FakeClock()
    session = Session(store, ttl=10)
    await session.start()
    world = World(store, runtime, clock, session, history, None)  # type: ignore[arg-type]
    world.agent = world.daemon()
    return world


async def test_an_exit_kept_in_its_back_off_is_not_decided_again_after_a_daemon_restart() -> None:
    world = await make_world(history=2)
    task = await world.task(delay=10.0)
    c = await world.crash()
    before = await world.status(task)
    assert (before.state, before.restarts, before.container_id) == (TaskState.EXITED, 1, c.id)
    assert before.message.endswith("restart 1 in 10.0s")

    await world.restart_daemon()
    await world.reconcile(1.0)
    after = await world.status(task)
    assert after == before, "the same exit is not decided again (restarts counted once)"
    runs = world.runs()
    await world.reconcile(7.0)  # 8 s after the decision: still in its back-off
    assert world.runs() == runs and world.runtime.running() == []
    await world.reconcile(2.5)
    [again] = world.runtime.running()
    status = await world.status(task)
    assert again.id != c.id and (status.state, status.restarts) == (TaskState.RUNNING, 1)


async def test_the_back_off_of_a_removed_exit_survives_a_daemon_restart() -> None:
    """History 0: the exited container went with the decision; only its status says
    when the restart is due. The restarted daemon used to start the task at once."""
    world = await make_world(history=0)
    task = await world.task(delay=10.0)
    c = await world.crash()
    assert c.id not in world.runtime.containers
    runs = world.runs()

    await world.restart_daemon()
    await world.reconcile(1.0)
    await world.reconcile(5.0)
    assert world.runs() == runs and world.runtime.running() == []
    status = await world.status(task)
    assert (status.state, status.restarts, status.container_id) == (TaskState.EXITED, 1, c.id)
    await world.reconcile(4.5)
    assert len(world.runtime.running()) == 1 and (await world.status(task)).restarts == 1


@pytest.mark.parametrize("history", [0, 2])
async def test_a_decided_exit_outlives_an_engine_outage_and_a_daemon_restart(history: int) -> None:
    """The engine goes down while a restart waits: the task's status becomes `unknown`.
    That status used to drop the decision (`restart_due`, the container), so a daemon
    restarted before the restart decided the same exit again (history 2: counted twice)
    or started the task at once (history 0: the back-off lost)."""
    world = await make_world(history=history)
    task = await world.task(delay=60.0)
    c = await world.crash()
    runs = world.runs()
    world.runtime.unavailable = True
    await world.agent._engine_down()  # what `run` does instead of a pass while it is down
    await world.agent.flush()
    down = await world.status(task)
    assert (down.state, down.container_id, down.restarts) == (TaskState.UNKNOWN, c.id, 1)
    assert down.restart_due > 0

    await world.restart_daemon()  # while the engine is still down
    world.runtime.unavailable = False
    await world.reconcile(1.0)
    await world.reconcile(30.0)  # 31 s after the decision: still in its back-off
    assert world.runs() == runs and world.runtime.running() == []
    assert (await world.status(task)).restarts == 1, "the exit is not decided again"
    await world.reconcile(30.0)
    assert len(world.runtime.running()) == 1 and (await world.status(task)).restarts == 1


async def test_max_attempts_counts_the_restarts_made_before_a_daemon_restart() -> None:
    world = await make_world(history=2)
    task = await world.task(delay=0.0, max_attempts=2)
    await world.crash()  # decided and restarted in one pass (no delay)
    await world.crash()  # restart 2: both exits kept
    await world.restart_daemon()
    await world.reconcile()
    assert len(world.runtime.running()) == 1 and len(world.runtime.containers) == 3
    await world.crash()
    status = await world.status(task)
    assert (status.state, status.restarts, status.terminal) == (TaskState.FAILED, 2, True)
    assert "after 2 restarts in all" in status.message
    await world.reconcile(1.0)
    assert world.runtime.running() == []


async def test_the_back_off_keeps_doubling_across_a_daemon_restart() -> None:
    world = await make_world(history=5)
    task = await world.task(delay=1.0)
    await world.crash()  # restart 1 in 1 s
    await world.reconcile(1.0)
    await world.crash()
    assert (await world.status(task)).message.endswith("restart 2 in 2.0s")
    await world.restart_daemon()
    await world.reconcile(2.0)
    await world.crash()
    assert (await world.status(task)).message.endswith("restart 3 in 4.0s"), "the crash loop goes on"


async def test_a_replica_up_long_before_a_daemon_restart_restarts_after_the_first_delay() -> None:
    """Its crash loop is over: it has run a minute when the restarted daemon first sees it,
    so its next exit restarts after `delay`, whatever the streak its kept exits show."""
    world = await make_world(history=5)
    task = await world.task(delay=1.0)
    for n in (1, 2):
        await world.crash()
        await world.reconcile(float(n))
    [c] = world.runtime.running()
    minute_ago = datetime.fromtimestamp(time.time() - 60, UTC).isoformat().replace("+00:00", "Z")
    world.runtime.containers[c.id] = replace(c, started_at=minute_ago)
    await world.restart_daemon()
    await world.reconcile()
    await world.crash()
    assert (await world.status(task)).message.endswith("restart 3 in 1.0s")


# -- the pure parts -----------------------------------------------------------------------

TASK = make_task("web", 1, NODE)


def exited(n: int, started: str, finished: str, code: int = 1, error: str = "") -> Container:
    return Container(
        f"c{n}", f"web.1.{n}", {LABELS.TASK: TASK.task_id}, "exited", code, {}, started, finished, error
    )


def seeded(status: TaskStatus, now: float = 100.0, wall: float = 5000.0) -> Slots:
    m = Slots(NODE, "127.0.0.1", lambda: wall)
    m.seed(status, now)
    m.desired({TASK.task_id: TASK})
    return m


def test_an_exit_noted_in_a_status_is_not_decided_again() -> None:
    status = TaskStatus(
        TASK.task_id, "web", 1, NODE, "exited", "c7", restarts=4, exit_code=1,
        message="exited with code 1; restart 4 in 8.0s", updated_at=4997.0, restart_due=5005.0,
        restart_counted=True,
    )  # fmt: skip
    m = seeded(status)
    s, rs = m.slots[TASK.task_id], m.slots[TASK.task_id].restart
    assert s.handled == "c7" and s.status == status
    assert (rs.restarts, rs.next_at, rs.times, rs.streak) == (4, 105.0, (97.0,), 1)
    assert not m.deciding(TASK, exited(7, "", ""))


def test_an_exit_not_counted_as_an_attempt_seeds_no_restart_time() -> None:
    message = f"exited with code 0 (the engine restarted under it); restart 4 {NOT_COUNTED}"
    status = TaskStatus(
        TASK.task_id, "web", 1, NODE, "exited", "c7", restarts=4, message=message, updated_at=4990.0,
        restart_due=4990.0,
    )  # fmt: skip
    rs = seeded(status).slots[TASK.task_id].restart
    assert (rs.next_at, rs.times, rs.streak) == (100.0, (), 0)


def test_a_status_of_an_exit_not_decided_yet_is_decided_after_a_daemon_restart() -> None:
    """A container that exited at once after its start is `exited` in its status, named,
    before any decision (the next pass decides): it is decided, not skipped. The message
    is for people: one that reads like a decision's note decides nothing."""
    for message in ("", "OCI runtime error", "restart 4 in 8.0s"):
        status = TaskStatus(TASK.task_id, "web", 1, NODE, "exited", "c7", restarts=4, message=message)
        m = seeded(status)
        assert m.slots[TASK.task_id].handled == "" and m.deciding(TASK, exited(7, "", ""))


def test_recall_rebuilds_times_and_streak_from_the_kept_exits() -> None:
    t = "2026-01-01T00:00:{:02d}Z"
    wall = 1767225600.0 + 60  # 2026-01-01T00:01:00Z
    exits: Sequence[Container] = [
        exited(3, t.format(30), t.format(32)),
        exited(1, t.format(0), t.format(int(RESET_AFTER) + 5)),  # stayed up: the streak started over
        exited(2, t.format(20), t.format(21)),
        exited(4, "", "", code=0),  # never started: no attempt
        exited(5, t.format(40), t.format(41), code=0, error="shim died"),  # the engine's doing
    ]
    rs = recalled(RestartState(restarts=9), exits, now=1000.0, wall=wall)
    assert rs.times == (1000.0 - 45, 1000.0 - 39, 1000.0 - 28)
    assert (rs.streak, rs.restarts) == (3, 9)
    assert recalled(RestartState(restarts=9), exits[3:], 1000.0, wall) == RestartState(restarts=9)


def test_recall_counts_the_current_exit_only_once_it_was_decided() -> None:
    t = "2026-01-01T00:00:{:02d}Z"
    old, current = exited(1, t.format(0), t.format(1)), exited(2, t.format(10), t.format(11))
    undecided = seeded(TaskStatus(TASK.task_id, "web", 1, NODE, "running", "c2", restarts=1))
    undecided.recall([], [(TASK, current)], [old], 1000.0)
    assert len(undecided.slots[TASK.task_id].restart.times) == 1
    status = TaskStatus(
        TASK.task_id, "web", 1, NODE, "exited", "c2", restarts=2, message="x; restart 2 in 2.0s",
        restart_due=5002.0, restart_counted=True,
    )  # fmt: skip
    decided = seeded(status)
    decided.recall([], [(TASK, current)], [old], 1000.0)
    decided.recall([], [(TASK, current)], [old, old], 1000.0)  # once: only the first listing
    assert len(decided.slots[TASK.task_id].restart.times) == 2
