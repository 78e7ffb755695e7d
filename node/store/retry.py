"""Retry policies for work on etcd, with tenacity: each rule written once, here.

- `compare_and_swap(attempt, conflict)`: an optimistic write. `attempt` reads, decides
  and writes only if what it read is unchanged (an etcd transaction comparing mod
  revisions); it returns None when a concurrent write won, and is then run again from a
  fresh read, at once, at most `CAS_ATTEMPTS` times in all; then `Conflict(conflict)`
  (the caller may safely try the request again). Any exception it raises ends the retries.
- `patiently(what)`: for a call that must succeed eventually, such as a listing while
  etcd is unreachable: retried on `StoreError` (or `retry_on`) with exponential back-off
  from `first` to `most` seconds, each failure logged at WARNING with the wait, forever
  unless `deadline` (seconds) is given. Exceptions in `at_once` (e.g. `Compacted`) are
  retried without waiting and logged at INFO. `progressed(attempt)` starts the back-off
  over when a long-lived attempt (a watch) made progress before it failed.
  `PERMANENT` errors (`TooLarge`: the request itself must change; `Fenced`: our epoch is
  over) are never retried, whatever `retry_on` says: they are raised at once.

`sleep` (both) lets tests run without real waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_none,
)
from tenacity import AttemptManager as Attempt

from node.model.errors import Conflict
from node.store.base import Fenced, StoreError, TooLarge

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

PERMANENT: tuple[type[BaseException], ...] = (TooLarge, Fenced)
"""Store errors that no retry can mend: `patiently` raises them at once."""

CAS_ATTEMPTS = 5
"""Reads-and-writes a compare-and-swap makes before it answers `Conflict`."""


async def compare_and_swap(
    attempt: Callable[[], Awaitable[T | None]],
    conflict: str,
    attempts: int = CAS_ATTEMPTS,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """`attempt()`'s first result that is not None (None: a concurrent write won, read
    again); after `attempts` lost races, `Conflict(conflict)`."""

    def give_up(state: RetryCallState) -> T:
        raise Conflict(conflict)

    retrying: AsyncRetrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_none(),
        retry=retry_if_result(lambda result: result is None),
        retry_error_callback=give_up,
        sleep=sleep,
    )
    result: T = await retrying(attempt)
    return result


def patiently(
    what: str,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = StoreError,
    at_once: type[BaseException] | tuple[type[BaseException], ...] = (),
    first: float = 0.1,
    most: float = 2.0,
    deadline: float | None = None,
    logger: logging.Logger = log,
    sleep: Sleep = asyncio.sleep,
) -> AsyncRetrying:
    """A policy for a call that must succeed eventually: `await patiently(...)(fn, *args)`,
    or `async for attempt in patiently(...): with attempt: ...`. The exception of the last
    attempt is raised when `deadline` passes, when it is not one of `retry_on`, or when
    it is `PERMANENT`."""

    def wait(state: RetryCallState) -> float:
        if _failure(state, at_once):
            return 0.0
        return float(wait_exponential(multiplier=first, min=first, max=most)(state))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if _failure(state, at_once):
            logger.info("%s: %s; again at once", what, exc)
        else:
            wait_s = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning("%s: %s; retrying in %.1fs", what, exc, wait_s)

    return AsyncRetrying(
        retry=(retry_if_exception_type(retry_on) | retry_if_exception_type(at_once))
        & retry_if_not_exception_type(PERMANENT),
        wait=wait,
        stop=stop_never if deadline is None else stop_after_delay(deadline),
        before_sleep=before_sleep,
        reraise=True,
        sleep=sleep,
    )


def progressed(attempt: Attempt) -> None:
    """The attempt under way made progress (a watch delivered its listing): should it fail
    now, the back-off starts over from `first` rather than going on growing."""
    attempt.retry_state.attempt_number = 1


def _failure(state: RetryCallState, kinds: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    exc = state.outcome.exception() if state.outcome is not None and state.outcome.failed else None
    return exc is not None and isinstance(exc, kinds)
