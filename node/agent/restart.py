"""Restart policy: whether and when the agent starts a task's container again. Pure.

A task keeps its id across restarts; its container is made anew. When a container
exits (or is replaced for being unhealthy, which counts as a failure), `on_exit`
decides from the spec's `restart` section:

- `condition`: `always` restarts; `on-failure` restarts unless the exit code was 0;
  `never` does not. A task not restarted is *terminal*: it stays `exited` (code 0) or
  `failed`, with the reason, until the leader assigns something else.
- `max_attempts` within `window`: once that many restarts happened in the last
  `window` seconds (0: ever), no more (terminal too). 0 attempts: no limit.
- An exit that is not the task's own doing (`interrupted`): a container created but never
  started (the daemon died between create and start), or one that exited 0 because the
  engine stopped it (an engine restart: a gap in the listings, and the engine started
  since, when that is known, `restarted_under`; or an exit code 0 with an engine error) is not a
  *completed* task, whatever the condition: it is started again at once, without
  counting as an attempt or growing the back-off.
- Back-off on a crash loop: the n-th consecutive restart waits `delay x 2^(n-1)`,
  capped at `MAX_DELAY` (or `delay` if larger). A replica that stayed up `RESET_AFTER`
  seconds resets the streak, so a crash after a long healthy life restarts after
  `delay` again (Docker's rule).
- A start that fails (no spec, the image cannot be pulled, the engine refuses) waits by
  the same rule (`backoff`) from `START_DELAY`, whatever the spec's `delay` (a spec with
  `delay: 0` must not hammer a registry); the count starts over at the first start that
  succeeds. `next_at` is the one "no start before" of a task: `may_start` reads it.
- A daemon restart: the window's restart times and the crash-loop streak are rebuilt
  (`recalled`) from the task's exits the engine kept (decision 71), so a restarted shoald
  neither grants a crash loop fresh attempts nor shortens its back-off.

Times are monotonic seconds passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from node.model.spec import ServiceSpec
from node.model.spec_lifecycle import RestartPolicy
from node.runtime.base import Container, engine_time

MAX_DELAY = 30.0  # s: the longest back-off between restarts (unless `delay` is longer)
RESET_AFTER = 10.0  # s up: the crash-loop streak starts over
START_DELAY = RestartPolicy().delay  # s: the first wait after a failed start (the model's default delay)
UNHEALTHY = None  # exit code passed to `on_exit` for a replica replaced for being unhealthy


Policy = RestartPolicy
"""The spec's `restart` section (`node.model.spec_lifecycle.RestartPolicy`): its defaults are
the model's, the one place they are written."""


def policy_of(spec: ServiceSpec | None) -> Policy:
    """The restart policy of a spec; the defaults when it has none (or no spec is known).
    A job's tasks (`kind: job`, issue 18) are never restarted: the leader decides retries."""
    if spec is not None and spec.kind == "job":
        return RestartPolicy(condition="never")
    return (spec.restart if spec is not None else None) or RestartPolicy()


@dataclass(frozen=True)
class RestartState:
    """One task's restart history on this node."""

    restarts: int = 0  # every restart of the task (shown in `ps`)
    exit_code: int = 0  # of the last container that exited
    times: tuple[float, ...] = ()  # when the recent restarts happened (for the window)
    streak: int = 0  # restarts since the replica last stayed up RESET_AFTER
    up_since: float | None = None  # when the current container was first seen running
    next_at: float = 0.0  # no start before this
    given_up: str = ""  # why it is not restarted any more ("": it may be)
    failed_starts: int = 0  # starts that failed in a row (their own back-off streak)

    @property
    def terminal(self) -> bool:
        return bool(self.given_up)


def on_running(state: RestartState, now: float) -> RestartState:
    """The task's container was seen running at `now`."""
    if state.up_since is not None:
        return state
    return replace(state, up_since=now)


def on_start_failed(state: RestartState, now: float) -> RestartState:
    """A start of the task failed at `now`: no new try before the back-off."""
    wait = backoff(RestartPolicy(delay=START_DELAY), state.failed_starts)
    return replace(state, failed_starts=state.failed_starts + 1, next_at=now + wait)


def on_started(state: RestartState) -> RestartState:
    """A start of the task succeeded: its failed starts are forgotten."""
    return replace(state, failed_starts=0)


def interrupted(c: Container, engine_restarted: bool = False, engine_since: float = 0.0) -> str:
    """Why the exit of `c` is not its task's own end, from Docker's state ("" when it is).

    `engine_restarted`: the engine stopped answering (or restarted) since `c` was last
    seen running, so an exit 0 in between is the engine's shutdown, not a completion.
    `engine_since`: when the engine's process started (0: not known). An exit 0 under the
    engine before (`_under_the_engine_before`) was its shutdown's doing: the case the agent
    cannot see by gaps, an engine restarted (a host rebooted) while shoald was down too.
    One that truly completed then runs once more, and its next exit 0 is judged as a
    completion.
    """
    if c.state == "created" or not c.started_at:
        return "its container was created but never started"
    if c.exit_code == 0 and c.error:
        return f"the engine stopped it: {c.error}"
    if c.exit_code == 0 and engine_restarted:
        return "the engine restarted under it"
    if c.exit_code == 0 and engine_since and _under_the_engine_before(c, engine_since):
        return "it stopped before the engine's restart (the engine's shutdown stopped it)"
    return ""


START_SLACK = 1.0
"""Seconds an engine start read from /proc may be early (its boot time is whole seconds)."""


def restarted_under(gap: bool, seen_at: float, engine_since: float) -> bool:
    """Whether the engine restarted since a container was last seen running (wall time
    `seen_at`). `gap`: the engine did not answer a listing since. When its start is known
    (`engine_since`, 0: not), only a start after that sighting counts: a listing that
    failed once, the engine up all along, must not make a finished job run again."""
    if not gap:
        return False
    return not engine_since or not seen_at or engine_since > seen_at - START_SLACK


RESTORE = 60.0
"""Seconds after its start in which an engine records, as it restores its containers, the
exits its shutdown did not write (Docker then sets `FinishedAt` to that moment)."""


def _under_the_engine_before(c: Container, engine_since: float) -> bool:
    """`c` ran under an engine before the one that runs now and stopped with it: its exit
    is dated before the engine's start, or it started before and its exit was only written
    as the engine restored it (the shutdown raced its exit)."""
    try:
        started, finished = engine_time(c.started_at), engine_time(c.finished_at)
    except ValueError:  # not a time: not judged by it
        return False
    if not finished:
        return False
    return finished < engine_since or (0 < started < engine_since and finished < engine_since + RESTORE)


def on_exit(
    state: RestartState, policy: Policy, exit_code: int | None, now: float, why_not_done: str = ""
) -> RestartState:
    """The task's container exited with `exit_code` (`UNHEALTHY`: replaced as unhealthy);
    `why_not_done` (from `interrupted`): not by its own doing, so it starts again at once."""
    code = -1 if exit_code is None else exit_code
    if why_not_done:
        return replace(state, restarts=state.restarts + 1, exit_code=code, up_since=None, next_at=now)
    why = "it was unhealthy" if exit_code is None else f"it exited with code {code}"
    if policy.condition == "never":
        return replace(state, exit_code=code, up_since=None, given_up=f"{why}; restart condition is never")
    if policy.condition == "on-failure" and exit_code == 0:
        return replace(state, exit_code=0, up_since=None, given_up=f"{why}; restart condition is on-failure")
    recent = tuple(t for t in state.times if policy.window <= 0 or t > now - policy.window)
    if policy.max_attempts and len(recent) >= policy.max_attempts:
        within = f"within {policy.window:g}s" if policy.window > 0 else "in all"
        return replace(
            state,
            exit_code=code,
            up_since=None,
            given_up=f"{why} after {len(recent)} restarts {within} (max_attempts {policy.max_attempts})",
        )
    ran = now - state.up_since if state.up_since is not None else 0.0
    streak = 0 if ran >= RESET_AFTER else state.streak
    delay = backoff(policy, streak)
    keep = max(policy.max_attempts, 1)
    return RestartState(
        restarts=state.restarts + 1,
        exit_code=code,
        times=(*recent, now)[-keep:],
        streak=streak + 1,
        up_since=None,
        next_at=now + delay,
        failed_starts=state.failed_starts,
    )


def backoff(policy: Policy, streak: int) -> float:
    """The wait before restart number `streak + 1` of a crash loop."""
    cap = max(MAX_DELAY, policy.delay)
    return min(cap, policy.delay * 2 ** min(streak, 32))


def may_start(state: RestartState, now: float) -> bool:
    return not state.given_up and now >= state.next_at


def recalled(state: RestartState, exits: Sequence[Container], now: float, wall: float) -> RestartState:
    """`state` with its restart times and crash-loop streak rebuilt from `exits`: the
    containers of the task, exited, whose exits were decided before a daemon restart
    (each led to a restart), as the engine kept them. Each counts as `on_exit` counted
    it, at the time it exited (`wall`: the wall clock now; engine times are wall times,
    mapped to the monotonic `now`); an exit that was not the task's own doing (one that
    never started, one the engine stopped) counts for neither. No exit: `state` as it is.
    """
    times: list[float] = []
    streak = 0
    dated = []
    for c in exits:
        try:
            started, finished = engine_time(c.started_at), engine_time(c.finished_at)
        except ValueError:  # not a time: not judged by it
            continue
        if finished and not interrupted(c):
            dated.append((finished, started))
    for finished, started in sorted(dated):
        ran = finished - started if started else 0.0
        streak = (0 if ran >= RESET_AFTER else streak) + 1
        times.append(now - max(0.0, wall - finished))
    if not times:
        return state
    return replace(state, times=tuple(times), streak=streak)
