"""`Deadline`: the engines' connect timeout, with asyncio.timeout's rules."""

from __future__ import annotations

import asyncio

import pytest

from node.proxy.listener import Deadline


async def test_the_block_ends_in_timeout_error_when_the_delay_passes_first() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(TimeoutError), Deadline(loop, task, 0.01):
        await asyncio.Event().wait()
    assert task.cancelling() == 0  # the cancellation it made is taken back


async def test_nothing_happens_when_the_block_ends_in_time() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    with Deadline(loop, task, 0.05) as d:
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # past the delay: the timer was cancelled, the task goes on
    assert not d.expired
    assert task.cancelling() == 0


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    async def connect() -> None:
        task = asyncio.current_task()
        assert task is not None
        with Deadline(loop, task, 30):
            entered.set()
            await asyncio.Event().wait()

    t = loop.create_task(connect())
    await entered.wait()
    t.cancel()  # the client left
    with pytest.raises(asyncio.CancelledError):
        await t


async def test_a_cancellation_from_elsewhere_with_the_delay_passed_is_not_swallowed() -> None:
    """Both at once (the delay passed and the client left): the task is cancelled, as
    asyncio.timeout does, never a TimeoutError that a retry loop would go on from."""
    loop = asyncio.get_running_loop()

    async def connect() -> None:
        task = asyncio.current_task()
        assert task is not None
        with Deadline(loop, task, 30) as d:
            d._expire()  # the timer fires...
            task.cancel()  # ...and the client leaves, in the same turn of the loop
            await asyncio.sleep(1)
        raise AssertionError("not reached")

    with pytest.raises(asyncio.CancelledError):
        await loop.create_task(connect())
