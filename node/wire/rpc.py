"""Every gRPC channel and server of shoal is made here.

One place sets message-size limits (4 MiB both ways; larger is RESOURCE_EXHAUSTED),
keepalive and idle limits (stalled peers are found, idle connections reaped, a TLS
handshake that stalls is cut after 10 s), default deadlines (`DEFAULT_DEADLINE` for
client calls, `HANDLER_TIMEOUT` for unary handlers on the server), and TLS and auth, so
that they hold for everything.

The daemon always serves TLS and dials its peers with it; without `tls` a channel or
server is plaintext, which no node accepts (test doubles only). With it, the server
requires a client certificate of the cluster CA and the channel verifies the server's:
the TLS material is `ServerTls` and `ClientTls` of `node.security.tls` (re-exported
here), so that `node.security` never imports this module. Who may call what is decided
by the interceptor of `node.security.auth`, passed to `server(interceptors=...)` first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from node.security.results import stream_result
from node.security.tls import ClientTls as ClientTls  # re-exported: callers use rpc's
from node.security.tls import ServerTls as ServerTls
from node.wire.defaults import DEFAULT_DEADLINE as DEFAULT_DEADLINE  # re-exported: callers use rpc's

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
HANDLER_TIMEOUT = 30.0  # seconds a unary handler may run on the server, whatever the caller's deadline

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
    ("grpc.http2.max_ping_strikes", 2),  # a client pinging faster than allowed is dropped
    ("grpc.server_handshake_timeout_ms", 10_000),  # a connection stalled before TLS completes is cut
]

_CLIENT_ONLY: list[tuple[str, Any]] = [
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),  # keep probing a quiet stream (watch, follow)
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
                    async for item in stream_result(behavior, request, context):  # health's Watch writes
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


def server(interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    """A new asyncio gRPC server with shoal's limits (no port bound yet).

    `interceptors` run before shoal's own, in order: the auth interceptor goes first."""
    return grpc.aio.server(options=_COMMON + _SERVER_ONLY, interceptors=[*interceptors, MalformedRequests()])


def bind(server: grpc.aio.Server, target: str, tls: ServerTls | None = None) -> int:
    """Listen on `target` ("host:port"), with mutual TLS when `tls` is given; the bound port,
    or 0 when the address cannot be bound."""
    if tls is None:
        return server.add_insecure_port(target)
    return server.add_secure_port(target, tls.credentials())


def aio_channel(target: str, tls: ClientTls | None = None) -> grpc.aio.Channel:
    """An asyncio channel to another daemon (peer API) or a node (client API)."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=_COMMON + _CLIENT_ONLY)
    return grpc.aio.secure_channel(target, tls.credentials(), options=_COMMON + _CLIENT_ONLY)


def channel(target: str, tls: ClientTls | None = None) -> grpc.Channel:
    """A blocking channel, for the CLI and the Python client library."""
    if tls is None:
        return grpc.insecure_channel(target, options=_COMMON + _CLIENT_ONLY)
    return grpc.secure_channel(target, tls.credentials(), options=_COMMON + _CLIENT_ONLY)
