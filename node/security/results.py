"""What a gRPC handler gives back, however it is written: shared by the interceptors
(`node.security.auth`, `node.wire.rpc`). Light: the command line imports it through
`node.wire.rpc`, so nothing heavy (no cryptography) is imported here."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any


async def unary_result(behavior: Callable[..., Any], request: Any, context: Any) -> Any:
    """A unary handler's answer, whether it is a coroutine function or a plain one."""
    result = behavior(request, context)
    return await result if inspect.isawaitable(result) else result


async def stream_result(behavior: Callable[..., Any], request: Any, context: Any) -> AsyncIterator[Any]:
    """A server-streaming handler's items, whether it yields them (async or not) or writes
    them with `context.write` (grpc's health Watch) and returns nothing."""
    result = behavior(request, context)
    if inspect.isawaitable(result):
        await result
    elif hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif result is not None:
        for item in result:
            yield item
