"""API requests counted by method and status code, with their latency (issue 14).

`RequestMeter` is a gRPC server interceptor placed before the auth interceptor, so a
call refused for a missing token is counted too (as UNAUTHENTICATED). It wraps the
handler the next interceptor returns, keeping its (de)serializers, and adds to plain
counters on the event loop; `node.daemon.collectors` exports them at scrape time.

- `calls[(method, code)]`: calls finished, `method` the full gRPC name
  (`/shoal.v1.Shoal/ListTasks`: a fixed set, the methods the server has);
- `latency[method]`: seconds from the handler's start to its answer (unary) or to the
  stream's end (streams: a `logs -f` lasts as long as its client watches).

A handler that raises is counted with the code it aborted with (`context.code()`),
UNKNOWN when it set none, CANCELLED when the client went away.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from node.proxy.stats import Histogram

CODES = {code.value[0]: code.name for code in grpc.StatusCode}


def code_name(context: Any, default: str) -> str:
    code = context.code()
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    return CODES.get(int(code), default)


class RequestMeter(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, Histogram] = {}

    def done(self, method: str, code: str, start: float) -> None:
        self.calls[(method, code)] += 1
        h = self.latency.get(method)
        if h is None:
            h = self.latency[method] = Histogram()
        h.observe(time.monotonic() - start)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return self.wrap(handler, details.method)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        meter = self

        async def unary(inner: Callable[..., Any], request: Any, context: Any) -> Any:
            start, code = time.monotonic(), "UNKNOWN"
            try:
                answer = inner(request, context)
                if inspect.isawaitable(answer):
                    answer = await answer
                code = code_name(context, "OK")
                return answer
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = code_name(context, "UNKNOWN")
                raise
            finally:
                meter.done(method, code, start)

        async def streaming(inner: Callable[..., Any], request: Any, context: Any) -> AsyncIterator[Any]:
            start, code = time.monotonic(), "UNKNOWN"
            try:
                items = inner(request, context)
                if inspect.isawaitable(items):
                    await items  # a handler that writes with context.write
                else:
                    async for item in items:
                        yield item
                code = code_name(context, "OK")
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except BaseException:
                code = code_name(context, "UNKNOWN")
                raise
            finally:
                meter.done(method, code, start)

        # grpc.aio runs a handler on the loop only when it is a coroutine (or async
        # generator) function: each wrapper below is one, never a lambda
        req, resp = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                return await unary(uu, request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, req, resp)
        if handler.stream_unary is not None:
            su = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                return await unary(su, requests, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, req, resp)
        if handler.unary_stream is not None:
            us = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                async for item in streaming(us, request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, req, resp)
        ss: Callable[..., Any] = handler.stream_stream  # type: ignore[assignment]

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            async for item in streaming(ss, requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream, req, resp)
