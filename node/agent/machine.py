"""The agent's pure core per task: one `Slot` per assigned task, events in, actions out.

`Slots` holds everything the agent knows about the tasks assigned to this node: the
phase of each, its live container, its restart history (`node.agent.restart`, the one
back-off for restarts and failed starts), its last status, whether it is routable.
It does no I/O and reads no clock: every input carries `now` (monotonic seconds; the
wall clock for `status/` times is passed in once). The async shell
(`node.agent.agent.Agent`) lists containers, reads specs, asks the health monitor,
feeds what it saw here, and carries out the actions returned (like `node.gossip.state`
for the member table).

Phases of a slot:

    wanted --start--> starting --started--> running --health replace--> unhealthy
       ^                 |  (pulling)          |  \\--cut off (on_disconnect)--> stopping
       |            start failed               exited
       +--- back-off ----+--------------------- exited (restart, or terminal: stays)

A slot leaves the table (gone) when its task is no longer assigned here (`desired`).

Events (methods) and the actions they return:

- `desired(assigned)`: the assignments now; slots of unassigned tasks are swept.
- `listed(keep, replaced)`: the containers the runtime lists, per task (from `diff`).
- `seen(task, c, verdict, policy, now, drained)`: a kept container's health verdict;
  a verdict that says replace returns `Stop` (drain path; decided once per container).
- `paused(task, c)`: a kept container that is live but not running (paused, restarting):
  not routable, and no exit to decide.
- `exited(task, c, policy, now, keep)`: its container exited: `Forget`, `Withdraw`,
  `Remove` (unless the policy gave up, or `keep`: kept for its logs) and the back-off of
  its restart; `restarting(task, c)` then says the kept one's task is to start anew.
- `starts(tasks, now)`: which of the tasks to start now (`Start`), past their back-off.
- `pulling`, `start_failed`, `started`: the outcome of a `Start`.
- `cut_off(task, c, why)`: on_disconnect stops it (`Stop`, no withdrawal wait).
- `stopping(task)`: its container drains and stops (not routable).
- `engine_down(assigned, reason)`, `engine_up()`, `engine_gap()`: the engine's verdict.

A daemon restart: `seed(status, now)` reads back each task's last status. An exit that
was decided and waits for its restart (its status `exited`, naming the container, with
`restart_due` set; `unknown` with the same fields while the engine is down) stays
decided: the container is not judged again (`handled`), its restart comes when it was
due (`next_at`), and the status stays as it was until then. At the first listing
`recall` rebuilds each task's restart times and streak from the exits the engine kept
(`node.agent.restart.recalled`), so attempts within `window` and the back-off go on
where they were, not from zero, and dates a live container's time up from its start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from node.agent.health import Verdict
from node.agent.restart import (
    UNHEALTHY,
    Policy,
    RestartState,
    interrupted,
    may_start,
    on_exit,
    on_running,
    on_start_failed,
    on_started,
    recalled,
    restarted_under,
)
from node.model.domain import Assignment, EndpointRecord, TaskState, TaskStatus
from node.runtime.base import LABELS, Container, engine_time

# s: an unchanged health result is never rewritten to status/ (liveness is the node's lease;
# a periodic rewrite cost etcd one revision per replica per period: issue 11)
HEALTH_REFRESH = math.inf


class Phase(StrEnum):
    WANTED = "wanted"  # assigned, no container: started once its back-off allows
    STARTING = "starting"  # a start is under way (the image pulled, the container made)
    RUNNING = "running"  # its container runs (or has just exited: the next listing says)
    UNHEALTHY = "unhealthy"  # replaced for being unhealthy: its container drains and stops
    STOPPING = "stopping"  # stopped while cut off from etcd (on_disconnect)
    EXITED = "exited"  # its container exited: restarted after its back-off, or never (terminal)


LIVE = frozenset({Phase.RUNNING, Phase.UNHEALTHY, Phase.STOPPING})  # the phases holding a container


@dataclass(frozen=True)
class Start:
    task: Assignment


@dataclass(frozen=True)
class Stop:
    """Withdraw, drain and stop (`node.agent.stopper`)."""

    container: Container
    drained: float = 0.0  # s out of rotation already
    must_withdraw: bool = True
    keep: bool = True  # stopped, not removed, when the node keeps exited containers (decision 71)


@dataclass(frozen=True)
class Remove:
    container_id: str


@dataclass(frozen=True)
class Withdraw:
    """Queue the deletion of the task's endpoint (no wait)."""

    service: str
    task_id: str


@dataclass(frozen=True)
class Forget:
    """Stop checking the container's health."""

    container_id: str


@dataclass(frozen=True)
class Emit:
    kind: str
    message: str
    service: str
    task_id: str


Action = Start | Stop | Remove | Withdraw | Forget | Emit


@dataclass
class Slot:
    task: Assignment
    phase: Phase = Phase.WANTED
    container: Container | None = None  # the live container (None outside LIVE phases)
    routable: bool = False  # published in endpoints/
    routable_since: float = 0.0  # wall clock its container became routable (0: not)
    restart: RestartState = field(default_factory=RestartState)
    status: TaskStatus | None = None  # what status/ says (None: nothing yet)
    handled: str = ""  # the last container whose exit (or unhealthiness) was decided on
    seen: tuple[str, int, float] = ("", 0, 0.0)  # (container id, engine gaps, wall s) last seen running


@dataclass(frozen=True)
class _Seed:
    """What a slot starts from after a daemon restart, read back from its task's status."""

    restart: RestartState
    handled: str = ""  # the container whose exit was decided (and waits for its restart)
    status: TaskStatus | None = None  # kept as it is while the restart waits


NOT_COUNTED = "now, not counted as an attempt"


def _note(rs: RestartState, now: float, counted: bool) -> str:
    """The end of the status message of a decided exit that restarts (for people: `seed`
    reads the status's `restart_due` and `restart_counted`)."""
    wait = f"in {rs.next_at - now:.1f}s" if counted else NOT_COUNTED
    return f"restart {rs.restarts} {wait}"


def _wall_of(engine: str) -> float:
    """An engine time as wall-clock seconds; 0.0 when unknown or not a time."""
    try:
        return engine_time(engine)
    except ValueError:
        return 0.0


def _decided(status: TaskStatus) -> bool:
    """Whether `status` was written by a decided exit whose restart waits (`Slots.exited`),
    or carries one over an engine outage (`Slots.engine_down`)."""
    return (
        status.restart_due > 0
        and status.state in (TaskState.EXITED, TaskState.UNKNOWN)
        and not status.terminal
        and bool(status.container_id)
    )


class Slots:
    """This node's tasks; see the module docstring."""

    def __init__(self, node: str, address: str, wall: Callable[[], float]) -> None:
        self.node, self.address, self.wall = node, address, wall
        self.slots: dict[str, Slot] = {}
        self.owned: frozenset[str] = frozenset()  # the task ids of the last sweep
        self.gaps = 0  # times the engine did not answer a listing
        self.engine_since = 0.0  # when the engine's process started (epoch s; 0: not known)
        self.adopted = False  # the first pass (after a start, or the engine's return) re-adopts
        self.next_start: float | None = None  # earliest start waiting for its back-off
        self._seeded: dict[str, _Seed] = {}  # restart history read back from status/
        self.recalled = False  # the first listing rebuilt restart times from the kept exits

    # -- queries --------------------------------------------------------------------

    @property
    def status(self) -> dict[str, TaskStatus]:
        return {tid: s.status for tid, s in self.slots.items() if s.status is not None}

    def statuses(self) -> list[TaskStatus]:
        return list(self.status.values())

    def endpoints(self) -> list[EndpointRecord]:
        out = []
        for s in self.slots.values():
            if not s.routable or s.container is None:
                continue
            c, task = s.container, s.task
            cport, hport = next(iter(sorted(c.host_ports.items())), (0, 0))
            ports = {str(k): v for k, v in sorted(c.host_ports.items())}
            out.append(
                EndpointRecord(task.task_id, task.service, self.node, self.address, hport, cport, ports, c.ip)
            )
        return out

    def deciding(self, task: Assignment, c: Container) -> bool:
        """Whether the exit of `c` is still to be decided (the shell reads its policy then)."""
        rs = self._slot(task).restart
        return not rs.terminal and self._slot(task).handled != c.id

    # -- events ---------------------------------------------------------------------

    def seed(self, status: TaskStatus, now: float) -> None:
        """Carry restart counts, last exit code and a given-up verdict over a daemon
        restart (from the old status), and an exit decided whose restart waits: it is not
        decided again, and its restart comes when it was to (see the module docstring)."""
        if status.node != self.node:
            return
        given_up = (status.message or "the restart policy gave up") if status.terminal else ""
        rs = RestartState(restarts=status.restarts, exit_code=status.exit_code, given_up=given_up)
        if not _decided(status):
            self._seeded[status.task_id] = _Seed(rs)
            return
        wall, counted = self.wall(), status.restart_counted
        ago = max(0.0, wall - status.updated_at)  # since the decision
        rs = replace(
            rs,
            next_at=now + max(0.0, status.restart_due - wall),
            times=(now - ago,) if counted else (),  # the kept exits tell more (`recall`)
            streak=1 if counted else 0,
        )
        self._seeded[status.task_id] = _Seed(rs, status.container_id, status)

    def begin_pass(self) -> None:
        self.next_start = None

    def engine_gap(self) -> None:
        """The engine did not answer a listing: an exit 0 seen after is its doing (unless
        it is known to have started before the container was last seen running)."""
        self.gaps += 1

    def engine_up(self) -> None:
        self.adopted = False

    def engine_down(self, assigned: Mapping[str, Assignment], reason: str) -> None:
        """Nothing is routable; every assigned task is `unknown`, and why. A decided exit
        whose restart waits keeps its decision in that status (the container, when the
        restart is due), so a daemon restarted before the engine is back does not decide
        the same exit again."""
        self.desired(assigned)
        for s in self.slots.values():
            s.routable = False
            old = s.status
            if old is not None and _decided(old):
                self._set(
                    s, TaskState.UNKNOWN, message=reason, container_id=old.container_id,
                    restart_due=old.restart_due, restart_counted=old.restart_counted,
                )  # fmt: skip
            else:
                self._set(s, TaskState.UNKNOWN, message=reason)

    def desired(self, assigned: Mapping[str, Assignment]) -> None:
        """The assignments now: a slot per task, none for a task not assigned (swept)."""
        for tid in [t for t in self.slots if t not in assigned]:
            del self.slots[tid]
        self._seeded = {t: seed for t, seed in self._seeded.items() if t in assigned}
        for tid, task in assigned.items():
            s = self.slots.get(tid)
            if s is None:
                self.slots[tid] = self._new(task)
            else:
                s.task = task
        self.owned = frozenset(assigned)

    def adopt(self, keep: Sequence[tuple[Assignment, Container]]) -> list[Action]:
        """The first pass says which running containers it found."""
        if self.adopted:
            return []
        self.adopted = True
        return [
            Emit("task.adopted", f"{c.name} re-adopted ({c.id[:12]})", t.service, t.task_id) for t, c in keep
        ]

    def listed(
        self, keep: Sequence[tuple[Assignment, Container]], replaced: Sequence[tuple[Assignment, Container]]
    ) -> None:
        """The runtime's listing: each task's container (live: `keep`; exited: `replaced`)."""
        found = {t.task_id: c for t, c in (*keep, *replaced)}
        for tid, s in self.slots.items():
            c = found.get(tid)
            if c is None:
                if s.phase in LIVE:
                    s.phase, s.container = Phase.WANTED, None
                s.routable, s.routable_since = False, 0.0
            elif s.container is not None and s.container.id != c.id:
                s.routable_since = 0.0
        for t, c in keep:
            if t.task_id in self.slots:
                self.slots[t.task_id].seen = (c.id, self.gaps, self.wall())

    def recall(
        self,
        keep: Sequence[tuple[Assignment, Container]],
        replaced: Sequence[tuple[Assignment, Container]],
        retired: Sequence[Container],
        now: float,
    ) -> None:
        """The first listing after a start: each task's restart times and streak rebuilt
        from its exited containers whose exits were decided (kept: its older ones, and its
        current one when `handled`), as they were before the daemon restarted; a live
        container is up since it started, not since this daemon first saw it (a crash
        loop long over does not lengthen the back-off of its next exit)."""
        if self.recalled:
            return
        self.recalled = True
        for t, c in keep:
            s = self.slots.get(t.task_id)
            up = _wall_of(c.started_at)
            if s is not None and s.restart.up_since is None and up:
                s.restart = replace(s.restart, up_since=now - max(0.0, self.wall() - up))
        exits: dict[str, list[Container]] = {}
        for c in retired:
            exits.setdefault(c.labels.get(LABELS.TASK, ""), []).append(c)
        for t, c in replaced:
            s = self.slots.get(t.task_id)
            if s is not None and s.handled == c.id:
                exits.setdefault(t.task_id, []).append(c)
        for tid, cs in exits.items():
            s = self.slots.get(tid)
            if s is not None and not s.restart.terminal:
                s.restart = recalled(s.restart, cs, now, self.wall())

    def stopping(self, task: Assignment) -> None:
        """Its container drains and stops: out of rotation."""
        s = self._slot(task)
        s.routable, s.routable_since = False, 0.0

    def cut_off(self, task: Assignment, c: Container, why: str) -> list[Action]:
        s = self._slot(task)
        s.phase, s.container, s.routable = Phase.STOPPING, c, False
        self._set(s, TaskState.EXITED, container_id=c.id, message=f"stopped: {why}")
        return [
            Emit("task.disconnected", f"{c.name} stopped: {why}", task.service, task.task_id),
            Stop(c, must_withdraw=False, keep=False),  # removed: a kept one would be restarted
        ]

    def seen(
        self,
        task: Assignment,
        c: Container,
        verdict: Verdict,
        policy: Policy,
        now: float,
        drained: float = 0.0,
    ) -> list[Action]:
        """A running container of the task and its health verdict."""
        s = self._slot(task)
        if s.container is not None and s.container.id != c.id:
            s.routable_since = 0.0
        s.container = c
        s.restart = on_running(s.restart, now)
        if verdict.replace:
            return self._unhealthy(s, c, verdict, policy, now, drained)
        s.phase, s.routable = Phase.RUNNING, verdict.routable
        self._observe(s, c, verdict)
        return []

    def paused(self, task: Assignment, c: Container) -> None:
        """Its container is live but not running (`docker pause`, restarting): it answers
        nobody, so it is withdrawn; it has not exited, so nothing is decided. Its health
        checks start over once it runs again."""
        s = self._slot(task)
        s.phase, s.container, s.routable, s.routable_since = Phase.RUNNING, c, False, 0.0
        self._set(
            s, TaskState.RUNNING, container_id=c.id, address=self.address, message=f"container {c.state}"
        )

    def exited(
        self, task: Assignment, c: Container, policy: Policy | None, now: float, keep: bool = False
    ) -> list[Action]:
        """Its container exited: decide once whether the task restarts (and when).
        `policy` None: not known yet (etcd away and not cached): decided on a later pass.

        When the task will restart, the container is removed at once (the restart makes a
        new one after the back-off), unless `keep` (the node keeps exited containers for
        their logs, decision 71: it becomes history once its task has a newer one). It is
        kept, for its logs, when the policy gave up (history once the task is unassigned).
        """
        s = self._slot(task)
        s.phase, s.container, s.routable, s.routable_since = Phase.EXITED, None, False, 0.0
        if s.restart.terminal:
            self._final(s, c.id)
            return []
        out: list[Action] = [Forget(c.id), Withdraw(task.service, task.task_id)]
        if s.handled != c.id:
            if policy is None:
                return out
            s.handled = c.id
            gap = s.seen[0] == c.id and s.seen[1] < self.gaps
            engine_restarted = restarted_under(gap, s.seen[2], self.engine_since)
            not_done = interrupted(c, engine_restarted, self.engine_since)  # not a completion: started again
            rs = s.restart = on_exit(s.restart, policy, c.exit_code, now, not_done)
            if rs.terminal:
                self._final(s, c.id)
                return [*out, Emit("task.no-restart", f"{c.name}: {rs.given_up}", task.service, task.task_id)]
            why = f"exited with code {c.exit_code}" + (f" ({c.error})" if c.error else "")
            if not_done:
                why = f"exited with code {c.exit_code} ({not_done})"
            counted = not not_done
            wait = _note(rs, now, counted)
            due = self.wall() + max(0.0, rs.next_at - now)
            self._set(
                s, TaskState.EXITED, container_id=c.id, message=f"{why}; {wait}", restart_due=due,
                restart_counted=counted,
            )  # fmt: skip
            out.append(Emit("task.exited", f"{c.name} {why}; {wait}", task.service, task.task_id))
            self._wait(rs.next_at)
        return out if keep else [*out, Remove(c.id)]

    def restarting(self, task: Assignment, c: Container) -> bool:
        """Whether the exit of `c`, kept, was decided and its task is to get a new container
        (after its back-off: `starts` says when)."""
        s = self.slots.get(task.task_id)
        return s is not None and s.handled == c.id and not s.restart.terminal

    def starts(self, tasks: Sequence[Assignment], now: float) -> list[Start]:
        """The tasks to start now: not given up on, and past their back-off."""
        out = []
        for task in tasks:
            s = self._slot(task)
            rs, old = s.restart, s.status
            s.phase, s.container, s.routable = Phase.WANTED, None, False
            if rs.terminal:
                self._final(s, old.container_id if old else "")
            elif not may_start(rs, now):
                self._wait(rs.next_at)
                if old is None or old.state not in (TaskState.EXITED, TaskState.FAILED):
                    message = old.message if old else f"restart in {rs.next_at - now:.1f}s"
                    self._set(s, TaskState.EXITED, message=message)
            else:
                s.phase = Phase.STARTING
                if old is None:
                    self._set(s, TaskState.PENDING)
                out.append(Start(task))
        return out

    def pulling(self, task: Assignment, progress: str) -> None:
        s = self._slot(task)
        s.phase = Phase.STARTING
        self._set(s, TaskState.PULLING, message=progress)

    def waiting(self, task: Assignment, why: str) -> None:
        """Not started this pass, for `why` (its volume is not free yet): tried again next pass."""
        s = self._slot(task)
        s.phase = Phase.WANTED
        self._set(s, TaskState.PENDING, message=why)

    def start_failed(self, task: Assignment, error: str, now: float) -> list[Action]:
        s = self._slot(task)
        s.phase = Phase.WANTED
        s.restart = on_start_failed(s.restart, now)
        self._wait(s.restart.next_at)
        self._set(s, TaskState.FAILED, message=error)
        return [Emit("task.failed", f"{task.service}.{task.slot}: {error}", task.service, task.task_id)]

    def started(self, task: Assignment, c: Container, verdict: Verdict, now: float) -> list[Action]:
        s = self._slot(task)
        s.restart = on_started(s.restart)
        s.phase, s.container, s.routable, s.routable_since = Phase.RUNNING, c, False, 0.0
        if c.running:
            s.restart = on_running(s.restart, now)
            s.seen = (c.id, self.gaps, self.wall())
            s.routable = verdict.routable  # at once, unless it has a check to pass first
        self._observe(s, c, verdict)
        return [
            Emit("task.started", f"{c.name} started on {self.node} ({c.id[:12]})", task.service, task.task_id)
        ]

    # -- inside ---------------------------------------------------------------------

    def _slot(self, task: Assignment) -> Slot:
        s = self.slots.get(task.task_id)
        if s is None:  # an event about a task not (yet) desired: it becomes one
            s = self.slots[task.task_id] = self._new(task)
            self.owned = self.owned | {task.task_id}
        return s

    def _new(self, task: Assignment) -> Slot:
        """A slot for `task`, from what was read back of it after a daemon restart (`seed`)."""
        seed = self._seeded.pop(task.task_id, None)
        if seed is None:
            return Slot(task)
        return Slot(task, restart=seed.restart, status=seed.status, handled=seed.handled)

    def _wait(self, at: float) -> None:
        self.next_start = at if self.next_start is None else min(at, self.next_start)

    def _unhealthy(
        self, s: Slot, c: Container, verdict: Verdict, policy: Policy, now: float, drained: float
    ) -> list[Action]:
        """Unhealthy for 2 x retries checks: drain and stop it; the restart policy decides
        (once per container) whether and when its task gets a new one."""
        s.phase, s.routable, s.routable_since = Phase.UNHEALTHY, False, 0.0
        out: list[Action] = []
        if s.handled != c.id:
            s.handled = c.id
            rs = s.restart = on_exit(s.restart, policy, UNHEALTHY, now)
            then = f"not restarted: {rs.given_up}" if rs.terminal else f"restart in {rs.next_at - now:.1f}s"
            why = f"unhealthy after {verdict.failures} failed checks ({verdict.message})"
            out.append(
                Emit("task.unhealthy", f"{c.name} {why}; replacing, {then}", s.task.service, s.task.task_id)
            )
            self._observe(s, c, verdict, message=f"{why}; replacing, {then}")
        return [*out, Stop(c, drained, must_withdraw=False)]

    def _set(self, s: Slot, state: TaskState, **fields: object) -> None:
        task, rs = s.task, s.restart
        base = TaskStatus(task.task_id, task.service, task.slot, self.node, state.value)
        new = replace(base, **{"restarts": rs.restarts, "exit_code": rs.exit_code, **fields})  # type: ignore[arg-type]
        old = s.status
        if old is None or asdict(replace(old, updated_at=0)) != asdict(new):
            s.status = replace(new, updated_at=self.wall())

    def _observe(self, s: Slot, c: Container, verdict: Verdict, message: str = "") -> None:
        if not c.running:  # exited right after it started; the next pass replaces it
            self._set(s, TaskState.EXITED, container_id=c.id, exit_code=c.exit_code, message=c.error)
            return
        port = next(iter(c.host_ports.values()), 0)
        if not verdict.routable:
            s.routable_since = 0.0
        elif not s.routable_since:
            s.routable_since = self.wall()
        at, old = verdict.at, s.status
        if (
            old is not None
            and (old.health, old.health_message, old.health_failures)
            == (verdict.health.value, verdict.message, verdict.failures)
            and at - old.health_at < HEALTH_REFRESH
        ):
            at = old.health_at  # the same result again: no etcd write for it
        self._set(
            s,
            TaskState.RUNNING,
            container_id=c.id,
            address=self.address,
            host_port=port,
            message=message,
            health=verdict.health.value,
            health_message=verdict.message,
            health_failures=verdict.failures,
            health_at=at,
            healthy_since=s.routable_since,
        )

    def _final(self, s: Slot, cid: str = "") -> None:
        """A task the restart policy gave up on: exited (code 0) or failed, and why."""
        rs = s.restart
        state = TaskState.EXITED if rs.exit_code == 0 else TaskState.FAILED
        cid = cid or (s.status.container_id if s.status else "")
        self._set(s, state, container_id=cid, message=rs.given_up, terminal=True)
