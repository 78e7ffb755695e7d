"""`node.store.retry`: the shared tenacity policies, with a fake sleep (no real waits)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from node.model.errors import Conflict, NotFound
from node.store import KV, Compacted, Compare, Fenced, Put, StoreError, StoreUnavailable
from node.store.base import TooLarge
from node.store.cache import PrefixCache
from node.store.memory import MemoryStore
from node.store.retry import CAS_ATTEMPTS, compare_and_swap, patiently, progressed

T = TypeVar("T")


class FakeSleep:
    """Records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())  # type: ignore[arg-type]


# -- compare_and_swap ---------------------------------------------------------------------


def test_compare_and_swap_reads_again_after_a_lost_race_then_returns_the_write() -> None:
    store, sleep = MemoryStore(), FakeSleep()
    races = ["won by another writer", "won by another writer"]

    async def attempt() -> int | None:
        kv = await store.get("/k")
        mod = kv.mod_revision if kv else 0
        if races:  # a concurrent write lands between our read and our write
            races.pop()
            await store.put("/k", b"theirs")
        result = await store.txn([Compare("/k", "mod", "==", mod)], [Put("/k", b"ours")])
        return result.revision if result.succeeded else None

    async def main() -> tuple[int, KV | None]:
        return await compare_and_swap(attempt, "busy", sleep=sleep), await store.get("/k")

    revision, kv = run(main)
    assert kv is not None and kv.value == b"ours" and kv.mod_revision == revision and kv.version == 3
    assert sleep.waits == [0.0, 0.0]  # again at once, from a fresh read


def test_compare_and_swap_gives_up_with_conflict_after_its_attempts() -> None:
    calls: list[int] = []

    async def attempt() -> str | None:
        calls.append(1)
        return None

    with pytest.raises(Conflict, match=r"^service 'web' is busy; try again$"):
        run(lambda: compare_and_swap(attempt, "service 'web' is busy; try again", sleep=FakeSleep()))
    assert len(calls) == CAS_ATTEMPTS
    with pytest.raises(Conflict):
        run(lambda: compare_and_swap(attempt, "x", attempts=8, sleep=FakeSleep()))
    assert len(calls) == CAS_ATTEMPTS + 8


def test_compare_and_swap_does_not_retry_an_error() -> None:
    calls: list[int] = []

    async def attempt() -> str | None:
        calls.append(1)
        raise NotFound("service 'web' not found")

    with pytest.raises(NotFound):
        run(lambda: compare_and_swap(attempt, "busy", sleep=FakeSleep()))
    assert calls == [1]


def test_compare_and_swap_returns_a_falsy_result() -> None:
    async def attempt() -> int | None:
        return 0

    assert run(lambda: compare_and_swap(attempt, "busy", sleep=FakeSleep())) == 0


# -- patiently ----------------------------------------------------------------------------


def _failing(n: int, exc: Exception, result: str = "ok") -> Callable[[], Awaitable[str]]:
    left = [n]

    async def call() -> str:
        if left[0] > 0:
            left[0] -= 1
            raise exc
        return result

    return call


def test_patiently_backs_off_exponentially_to_its_cap_and_logs_each_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleep = FakeSleep()
    retrying = patiently("watch /x/", first=0.1, most=2.0, sleep=sleep)
    with caplog.at_level(logging.WARNING, logger="node.store.retry"):
        assert run(lambda: retrying(_failing(7, StoreUnavailable("etcd unreachable")))) == "ok"
    assert sleep.waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    ours = [r.getMessage() for r in caplog.records if r.name == "node.store.retry"]
    assert ours[0] == "watch /x/: etcd unreachable; retrying in 0.1s"
    assert len(ours) == 7


def test_patiently_starts_over_for_each_call() -> None:
    sleep = FakeSleep()
    retrying = patiently("x", first=1.0, most=8.0, sleep=sleep)
    run(lambda: retrying(_failing(3, StoreError("down"))))
    run(lambda: retrying(_failing(2, StoreError("down"))))
    assert sleep.waits == [1.0, 2.0, 4.0, 1.0, 2.0]


def test_patiently_raises_what_it_does_not_retry_at_once() -> None:
    sleep = FakeSleep()
    with pytest.raises(ValueError, match="bad"):
        run(lambda: patiently("x", sleep=sleep)(_failing(1, ValueError("bad"))))
    with pytest.raises(StoreUnavailable):  # retry_on=(): no retries (shoald without --wait-for-etcd)
        run(lambda: patiently("x", retry_on=(), sleep=sleep)(_failing(1, StoreUnavailable("down"))))
    assert sleep.waits == []


@pytest.mark.parametrize("error", [TooLarge(2_000_000), TooLarge(None), Fenced("epoch 7 is over")])
def test_patiently_never_retries_a_permanent_error(error: StoreError) -> None:
    """Before, a write etcd refused as too large (a `StoreError`) was retried forever."""
    sleep = FakeSleep()
    for retry_on in (StoreError, (StoreError, OSError)):
        retrying = patiently("x", retry_on=retry_on, sleep=sleep)
        with pytest.raises(type(error)):
            run(functools.partial(retrying, _failing(1, error)))
    assert sleep.waits == []


def test_patiently_gives_up_at_its_deadline_with_the_last_error(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    calls: list[float] = []

    async def down() -> None:
        calls.append(clock[0])
        raise StoreUnavailable("etcd unreachable")

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # tenacity's deadline clock
    with pytest.raises(StoreUnavailable, match="etcd unreachable"):
        run(lambda: patiently("x", first=1.0, most=1.0, deadline=3.5, sleep=sleep)(down))
    assert calls == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_patiently_retries_at_once_what_needs_no_wait(caplog: pytest.LogCaptureFixture) -> None:
    sleep = FakeSleep()
    with caplog.at_level(logging.INFO, logger="node.store.retry"):
        run(lambda: patiently("watch /x/", at_once=Compacted, sleep=sleep)(_failing(2, Compacted(7))))
    assert sleep.waits == [0.0, 0.0]
    ours = [r for r in caplog.records if r.name == "node.store.retry"]
    assert ours and all(r.levelno == logging.INFO and "again at once" in r.message for r in ours)


def test_progressed_starts_the_back_off_over() -> None:
    sleep = FakeSleep()
    outcomes = ["fail", "fail", "fail", "progress", "fail", "done"]

    async def main() -> None:
        async for attempt in patiently("x", first=1.0, most=8.0, sleep=sleep):
            with attempt:
                outcome = outcomes.pop(0)
                if outcome == "progress":
                    progressed(attempt)
                    raise StoreError("the watch broke after a listing")
                if outcome == "fail":
                    raise StoreError("down")

    run(main)
    assert sleep.waits == [1.0, 2.0, 4.0, 1.0, 2.0]


# -- the mirror's re-list, through the policy ---------------------------------------------


class FlakyStore(MemoryStore):
    """A memory store whose `range` fails `outages` times (etcd unreachable)."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    async def range(self, prefix: str) -> tuple[list[KV], int]:
        if self.outages > 0:
            self.outages -= 1
            raise StoreUnavailable("etcd unreachable")
        return await super().range(prefix)


def test_the_mirror_lists_again_after_an_outage_and_follows_the_watch() -> None:
    async def main() -> None:
        store = FlakyStore(outages=2)
        await store.put("/p/a", b"1")
        cache = PrefixCache(store, "/p/")
        task = asyncio.create_task(cache.run())
        try:
            async with asyncio.timeout(5):  # two waits of 0.1 and 0.2 s
                await cache.ready.wait()
                assert set(cache.items) == {"/p/a"}
                changed = cache.listener()
                changed.clear()
                await store.put("/p/b", b"2")
                await changed.wait()
            assert set(cache.items) == {"/p/a", "/p/b"} and cache.relists == 1
        finally:
            task.cancel()

    run(main)
