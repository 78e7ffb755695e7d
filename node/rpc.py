"""Every gRPC channel and server of shoal is made here.

One place sets message-size limits, keepalive and default deadlines, so that TLS
and auth can later be added once for everything.
"""

from __future__ import annotations

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


def server(max_workers_hint: int = 0) -> grpc.aio.Server:
    """A new asyncio gRPC server with shoal's limits (no port bound yet)."""
    del max_workers_hint
    return grpc.aio.server(options=_COMMON + _SERVER_ONLY)


def aio_channel(target: str) -> grpc.aio.Channel:
    """An asyncio channel to another daemon (peer API) or a node (client API)."""
    return grpc.aio.insecure_channel(target, options=_COMMON + _CLIENT_ONLY)


def channel(target: str) -> grpc.Channel:
    """A blocking channel, for the CLI and the Python client library."""
    return grpc.insecure_channel(target, options=_COMMON + _CLIENT_ONLY)
