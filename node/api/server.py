"""The node's one gRPC server: client API, peer API, `grpc.health.v1`, reflection.

`handle` / `handle_stream` wrap every handler: `node.model.errors` types become the status
codes of its `STATUS` table, store failures UNAVAILABLE (a write too large for etcd
INVALID_ARGUMENT: retrying cannot help), with the message a person
can act on; anything unexpected becomes INTERNAL with a short message (and a logged traceback), never a
crashed daemon. A unary handler has at most `rpc.HANDLER_TIMEOUT` seconds, whatever
deadline its caller set (or none): then it is DEADLINE_EXCEEDED, and its work is
cancelled, so a stalled store call never pins a handler.

The server is mutual TLS (`rpc.ServerTls`) with `node.security.auth`'s interceptor
first, so no handler runs for a caller without a cluster certificate and the token
its method needs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from node.model.errors import ShoalError, status_of
from node.pb import api_pb2, peer_pb2
from node.store import StoreError, StoreUnavailable
from node.store.base import TooLarge
from node.wire import rpc

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, ShoalError):
        await context.abort(grpc.StatusCode[status_of(exc)], str(exc))
    if isinstance(exc, StoreUnavailable):
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, f"{exc}; the cluster state cannot be read or written now"
        )
    if isinstance(exc, TooLarge):  # no retry can help: the request itself must shrink
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc}; make the request smaller")
    if isinstance(exc, StoreError):  # refused by etcd: an alarm (database space exceeded) refuses
        # every write until cleared; a compacted watch asks to start again. Not this node's bug.
        log.warning("etcd refused a call: %s", exc)
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"{exc}"[:400] + "; try again (an etcd alarm needs an operator: etcdctl alarm list)",
        )
    log.exception("handler failed")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"[:500])


def handle(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        limit = asyncio.timeout(rpc.HANDLER_TIMEOUT)
        try:
            async with limit:
                return await fn(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            if isinstance(exc, TimeoutError) and limit.expired():
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the node did not finish this call within {rpc.HANDLER_TIMEOUT:g}s; retry later",
                )
            await _abort(context, exc)
            raise  # unreachable: abort raises

    return wrapper


def handle_stream(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[T]:
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc)

    return wrapper


SERVICE_NAMES = (
    api_pb2.DESCRIPTOR.services_by_name["Shoal"].full_name,
    peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name,
)


def build(
    servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any]],
    address: str,
    port: int,
    tls: rpc.ServerTls | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """Make the server with every service registered and the port bound (raises OSError):
    mutual TLS with `tls`, `interceptors` (auth first) before every handler."""
    server = rpc.server(interceptors)
    for add, servicer in servicers:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    target = f"{address}:{port}"
    try:
        bound = rpc.bind(server, target, tls)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {target}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot listen on {target}: the address is taken or not local")
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, status)
