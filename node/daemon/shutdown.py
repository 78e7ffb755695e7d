"""A bounded stop: on SIGTERM the daemon has exited within `shutdown_grace`, whatever
etcd or Docker are doing (answering, refusing connections, frozen).

Three layers, so that nothing can keep the process alive past the grace:
1. every step of the graceful stop (resign, revoke the leader lease, leave, drain the
   server, close the clients) has its own time box (`step`);
2. background tasks are cancelled together and, after a moment of patience for their
   clean-up, cancelled *again* every `TICK` until they end (`cancel_all`): a task that
   turned one cancellation into an error it retries (an etcd call that completed in the
   same instant, a task group reporting a child's error instead) meets the next one at
   its next await. What is still running at the deadline is logged by name and where
   it waits, and the process exits with status 1 (`exit_now`);
3. a `Watchdog` thread, armed by the signal, ends the process at the grace if it is
   still alive: an event loop stuck, or the interpreter joining threads at exit.

Docker calls in flight (a container being stopped with its own long grace) are left to
the engine, which completes them without us (`leave_threads`); a stop keeps today's
meaning: containers keep running, to be re-adopted by the next daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

TICK = 0.1  # s between two cancellations of a task that did not end
PATIENCE = 1.0  # s a cancelled task has for its clean-up before it is cancelled again
EXIT_FORCED = 1  # the status when something had to be abandoned at the deadline


class Deadline:
    """A point on the monotonic clock; `left()` is what remains of it (never negative)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.at = clock() + seconds

    def left(self, cap: float | None = None) -> float:
        left = max(0.0, self.at - self.clock())
        return left if cap is None else min(cap, left)


async def step(what: str, awaitable: Awaitable[Any], seconds: float) -> bool:
    """Await one step of the stop for at most `seconds`; one that fails or overruns is
    logged and skipped (the stop goes on). True when it finished in time."""
    try:
        async with asyncio.timeout(seconds):
            await awaitable
        return True
    except TimeoutError:
        log.warning("shutdown: %s did not finish within %.1fs; going on", what, seconds)
    except Exception as exc:
        log.warning("shutdown: %s failed: %s; going on", what, exc)
    return False


async def cancel_all(
    tasks: Iterable[asyncio.Task[Any]], seconds: float, patience: float = PATIENCE
) -> set[asyncio.Task[Any]]:
    """Cancel `tasks`, give them `patience` seconds, then cancel what still runs every
    `TICK` until `seconds` have passed. Returns the tasks still running then."""
    deadline = Deadline(seconds)
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    first = True
    while pending and deadline.left() > 0:
        wait = deadline.left(patience if first else TICK)
        done, pending = await asyncio.wait(pending, timeout=wait)
        _retrieve(done)
        if pending and not first:
            log.debug("shutdown: cancelling again: %s", describe(pending))
        for task in pending:
            task.cancel()
        first = False
    return pending


def _retrieve(done: Iterable[asyncio.Task[Any]]) -> None:
    """Read each ended task's outcome, so asyncio does not report it as never retrieved."""
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.debug("shutdown: task %s ended with %r", task.get_name(), task.exception())


def describe(tasks: Iterable[asyncio.Task[Any]]) -> str:
    """'name (func at file:line)' of each task, sorted by name."""
    out = []
    for task in sorted(tasks, key=lambda t: t.get_name()):
        where = ""
        try:
            frames = task.get_stack(limit=1)
        except RuntimeError:  # read from another thread while the loop changed it
            frames = []
        if frames:
            code = frames[-1].f_code
            where = f" ({code.co_name} at {_short(code.co_filename)}:{frames[-1].f_lineno})"
        out.append(f"{task.get_name()}{where}")
    return ", ".join(out) or "none"


def describe_threads(threads: Iterable[threading.Thread] | None = None) -> str:
    """'name (func at file:line)' of `threads` (every thread but the caller's)."""
    frames = sys._current_frames()
    out = []
    for thread in threading.enumerate() if threads is None else threads:
        if thread is threading.current_thread() or thread.ident is None:
            continue
        frame = frames.get(thread.ident)
        where = ""
        if frame is not None:
            where = f" ({frame.f_code.co_name} at {_short(frame.f_code.co_filename)}:{frame.f_lineno})"
        out.append(f"{thread.name}{where}")
    return ", ".join(out) or "none"


def _short(path: str) -> str:
    parts = path.split(os.sep)
    return os.sep.join(parts[-3:])


def exit_now(message: str, status: int = EXIT_FORCED) -> None:
    """Log `message`, flush every log handler, and end the process at once (no clean-up
    of threads or atexit hooks: that is what could hang)."""
    log.log(logging.ERROR if status else logging.WARNING, "%s", message)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # a broken stream must not keep the process alive
            handler.flush()
    os._exit(status)


class Watchdog:
    """A daemon thread that ends the process `seconds` after `arm()`, unless disarmed."""

    def __init__(self, seconds: float, describe_tasks: Callable[[], str] = lambda: "") -> None:
        self.seconds = seconds
        self.describe_tasks = describe_tasks
        self._disarmed = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shutdown-watchdog", daemon=True)
            self._thread.start()

    def disarm(self) -> None:
        self._disarmed.set()

    def _run(self) -> None:
        if self._disarmed.wait(self.seconds):
            return
        try:
            tasks = self.describe_tasks()
        except Exception as exc:  # read across threads: best effort
            tasks = f"unknown ({exc!r})"
        exit_now(
            f"shutdown: still running {self.seconds:g}s after the stop signal; exiting now. "
            f"tasks: {tasks or 'none'}; threads: {describe_threads()}"
        )


def leave_threads(deadline: Deadline, patience: float = PATIENCE) -> None:
    """At the end of a stop: wait for the other (non-daemon) threads `patience` seconds (not
    past `deadline`), then exit without them. Those are Docker calls in flight (a container
    stop with its own long grace); the engine completes them without us."""
    until = Deadline(deadline.left(patience))
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(until.left())
    busy = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if busy:
        exit_now(f"shutdown: exiting with calls still in flight in {describe_threads(busy)}", status=0)
