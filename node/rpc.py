"""Every gRPC channel and server of shoal is made here.

One place sets message-size limits, keepalive and default deadlines, so that TLS
and auth can later be added once for everything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_DEADLINE = 10.0  # seconds, for unary client calls

_COMMON: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]

_SERVER_ONLY: list[tuple[str, Any]] = [
    ("grpc.so_reuseport", 0),  # a second daemon on the same address must fail to bind
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_connection_idle_ms", 15 * 60_000),
]

_CLIENT_ONLY: list[tuple[str, Any]] = [
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class _Malformed:
    """What a request that does not parse becomes, so the handler can refuse it properly."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Answer a request that is not valid protobuf with INVALID_ARGUMENT (gRPC says UNKNOWN)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        parse = handler.request_deserializer
        method = details.method

        def safe_parse(raw: bytes) -> Any:
            try:
                return parse(raw)
            except Exception as exc:
                return _Malformed(exc)

        def guard(behavior: Any) -> Callable[..., Any]:
            async def check(request: Any, context: grpc.aio.ServicerContext) -> None:
                if isinstance(request, _Malformed):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request is not a valid message"
                    )

            if handler.response_streaming:

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    await check(request, context)
                    async for item in behavior(request, context):
                        yield item

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(request, context)
                return await behavior(request, context)

            return unary

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                guard(handler.unary_stream), safe_parse, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            guard(handler.unary_unary), safe_parse, handler.response_serializer
        )


def server() -> grpc.aio.Server:
    """A new asyncio gRPC server with shoal's limits (no port bound yet)."""
    return grpc.aio.server(options=_COMMON + _SERVER_ONLY, interceptors=[MalformedRequests()])


def aio_channel(target: str) -> grpc.aio.Channel:
    """An asyncio channel to another daemon (peer API) or a node (client API)."""
    return grpc.aio.insecure_channel(target, options=_COMMON + _CLIENT_ONLY)


def channel(target: str) -> grpc.Channel:
    """A blocking channel, for the CLI and the Python client library."""
    return grpc.insecure_channel(target, options=_COMMON + _CLIENT_ONLY)
