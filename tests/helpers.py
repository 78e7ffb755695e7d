"""Waiting in tests: poll a condition until a deadline, never sleep a fixed time.

`wait_until(fn, timeout)` calls `fn` (sync or async) every `interval` seconds until it
returns something truthy, and returns that value; at the deadline it raises
`TimeoutError` naming `message` and the last value or exception seen, so a failed wait
says what it was waiting for. Exceptions raised by `fn` count as "not yet".
`wait_until_sync` is the same for code without an event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def wait_until(
    fn: Callable[[], Awaitable[T | None]], timeout: float, interval: float = ..., message: str = ...
) -> T: ...
@overload
async def wait_until(
    fn: Callable[[], T | None], timeout: float, interval: float = ..., message: str = ...
) -> T: ...
async def wait_until(
    fn: Callable[[], Any],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(_failure(message, timeout, last))
        await asyncio.sleep(interval)


def wait_until_sync(
    fn: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(_failure(message, timeout, last))
        time.sleep(interval)


def _failure(message: str, timeout: float, last: object) -> str:
    what = message or "condition"
    return f"{what} not met within {timeout}s (last: {last!r})"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port p such that p and p+1 are both free on `host` (etcd's client and peer ports)."""
    import socket

    for _ in range(100):
        p = free_port(host)
        with socket.socket() as s:
            try:
                s.bind((host, p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no free pair of ports")


def free_port_on_all(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (node i of a test cluster binds 127.0.0.i)."""
    import socket

    for _ in range(100):
        p = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, p))
        except OSError:
            continue
        return p
    raise RuntimeError("no port free on all hosts")
