"""A daemon's stop is bounded (issue 11, item 14a): cancellations are not swallowed,
tasks that swallow one anyway are cancelled again, and what still runs at the deadline
is named and abandoned.

The process-level parts (the watchdog thread, leaving Docker calls in flight) run in a
child interpreter, each bounded by a generous deadline.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap

import pytest

from node.daemon import shutdown
from node.store.base import StoreError
from node.store.etcd import EtcdStore

CHILD_DEADLINE = 60.0  # s: a child that has not exited by then is a hang


# -- the etcd client never swallows a cancellation -------------------------------------------


async def test_a_cancel_arriving_with_etcds_answer_cancels_the_call() -> None:
    """On 3.11 `asyncio.wait_for` returns the answer and drops a cancellation that arrives
    in the same loop iteration; a caller's retry loop then runs forever after SIGTERM."""
    store = EtcdStore(["127.0.0.1:9"])  # never connected: the call is a local future
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def call() -> str:
        return await answer

    task = asyncio.create_task(store._call(call()))
    for _ in range(5):  # let the call reach its await
        await asyncio.sleep(0)
    answer.set_result("value")
    task.cancel()  # the stop signal, in the same iteration as the answer
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


# -- cancel_all -------------------------------------------------------------------------------


async def _retrying(swallow: int, spins: list[int]) -> None:
    """A retry loop that turns its first `swallow` cancellations into a retried error."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallow <= 0:
                raise
            swallow -= 1
            spins.append(1)
            try:
                raise StoreError("etcd call failed")  # what the caller sees instead
            except StoreError:
                continue


async def test_a_task_that_swallowed_a_cancellation_is_cancelled_again() -> None:
    spins: list[int] = []
    task = asyncio.create_task(_retrying(swallow=3, spins=spins), name="retrier")
    await asyncio.sleep(0)
    task.cancel()  # what the old stop did: one cancellation, then wait forever
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done, "the retry loop swallowed the cancellation"
    left = await shutdown.cancel_all({task}, seconds=30.0, patience=0.05)
    assert left == set() and task.cancelled() and len(spins) == 3


async def test_a_task_that_never_ends_is_named_at_the_deadline() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn-watch")
    quick = asyncio.create_task(asyncio.sleep(3600), name="quick")
    await asyncio.sleep(0)
    left = await shutdown.cancel_all({task, quick}, seconds=0.5, patience=0.1)
    assert left == {task} and quick.cancelled()
    named = shutdown.describe(left)
    assert named.startswith("stubborn-watch (stubborn at ") and "test_shutdown.py" in named
    release.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_step_that_hangs_or_fails_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    hang = asyncio.get_running_loop().create_future()
    assert not await shutdown.step("revoking the leader lease", hang, 0.1)

    async def fails() -> None:
        raise StoreError("etcd unreachable")

    assert not await shutdown.step("leaving the gossip", fails(), 5.0)
    assert await shutdown.step("draining", asyncio.sleep(0), 5.0)
    text = caplog.text
    assert "revoking the leader lease did not finish within 0.1s" in text
    assert "leaving the gossip failed: etcd unreachable" in text


def test_a_deadline_counts_down_and_never_goes_negative() -> None:
    now = [100.0]
    deadline = shutdown.Deadline(10.0, clock=lambda: now[0])
    assert deadline.left() == 10.0 and deadline.left(2.0) == 2.0
    now[0] = 109.5
    assert deadline.left() == 0.5 and deadline.left(2.0) == 0.5
    now[0] = 200.0
    assert deadline.left() == 0.0


# -- the process ends: watchdog, Docker calls in flight ----------------------------------------


def _child(body: str) -> subprocess.CompletedProcess[str]:
    prelude = "import logging, threading, time\nfrom node.daemon import shutdown\nlogging.basicConfig()\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=CHILD_DEADLINE,
    )


def test_the_watchdog_ends_a_process_whose_stop_hangs_and_names_what_ran() -> None:
    done = _child(
        """
        shutdown.Watchdog(0.5, lambda: "agent (reconcile at node/agent/agent.py:1)").arm()
        threading.Thread(target=time.sleep, args=(3600,), name="shoal-docker_0").start()
        time.sleep(3600)  # the main thread stuck too
        """
    )
    assert done.returncode == shutdown.EXIT_FORCED, done.stderr
    assert "still running 0.5s after the stop signal; exiting now" in done.stderr
    assert "agent (reconcile at node/agent/agent.py:1)" in done.stderr
    assert "threads: shoal-docker_0" in done.stderr or ", shoal-docker_0" in done.stderr


def test_a_disarmed_watchdog_lets_the_process_exit_normally() -> None:
    done = _child(
        """
        dog = shutdown.Watchdog(0.3)
        dog.arm()
        dog.disarm()
        time.sleep(0.6)
        print("clean")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr


def test_docker_calls_in_flight_do_not_hold_the_exit() -> None:
    done = _child(
        """
        threading.Thread(target=time.sleep, args=(3600,), name="shoal-docker_0").start()
        shutdown.leave_threads(shutdown.Deadline(30.0), patience=0.2)
        print("not reached")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "not reached" not in done.stdout
    assert "exiting with calls still in flight in shoal-docker_0" in done.stderr


def test_with_no_thread_left_the_process_exits_normally() -> None:
    done = _child(
        """
        threading.Thread(target=time.sleep, args=(0.1,), name="short").start()
        shutdown.leave_threads(shutdown.Deadline(30.0), patience=10.0)
        print("clean")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr
