"""`node.wire.rpc` with TLS: certificate renewal without a restart, limits, and the plaintext default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import pytest

from node.security import bootstrap
from node.security.ca import CertError, ClusterCA, Lifetimes
from node.wire import rpc
from tests.helpers import wait_until

ECHO = "/test.Echo/Echo"


def _raw(channel: grpc.aio.Channel, method: str) -> Any:
    """A byte-in, byte-out callable for `method` (no protobuf)."""
    return channel.unary_unary(method)


def _echo_server() -> grpc.aio.Server:
    server = rpc.server()

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo, lambda b: b, lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler}),))
    return server


@dataclass
class Served:
    authority: ClusterCA
    tls: rpc.ServerTls
    target: str

    def client(self) -> rpc.ClientTls:
        issued = bootstrap.node_identity(self.authority, "n2", ["127.0.0.2"])
        return rpc.ClientTls(self.authority.cert_pem, issued.key, issued.cert)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    authority = ClusterCA.create("c1")
    past = datetime.now(UTC) - timedelta(days=2)
    expired = bootstrap.node_identity(
        authority, "n1", ["127.0.0.1"], lifetimes=Lifetimes(node=timedelta(hours=1)), now=past
    )
    tls = rpc.ServerTls(authority.cert_pem, expired.key, expired.cert)
    server = _echo_server()
    port = rpc.bind(server, "127.0.0.1:0", tls)
    await server.start()
    try:
        yield Served(authority, tls, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


async def _echo(target: str, tls: rpc.ClientTls | None, payload: bytes = b"hi") -> bytes:
    async with rpc.aio_channel(target, tls) as channel:
        response: bytes = await _raw(channel, ECHO)(payload, timeout=5)
        return response


async def test_a_renewed_certificate_is_served_without_a_restart(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _echo(served.target, served.client())  # the server's certificate has expired
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    renewed = bootstrap.node_identity(served.authority, "n1", ["127.0.0.1"])
    served.tls.update(renewed.key, renewed.cert)
    assert await _echo(served.target, served.client()) == b"hi"


async def test_renewals_while_traffic_runs_fail_no_call(served: Served) -> None:
    first = bootstrap.node_identity(served.authority, "n1", ["127.0.0.1"])
    served.tls.update(first.key, first.cert)
    client = served.client()
    failures: list[BaseException] = []
    done = asyncio.Event()
    calls = 0

    async def traffic() -> None:
        nonlocal calls
        async with rpc.aio_channel(served.target, client) as kept:  # one long-lived connection too
            while not done.is_set():
                for call in (_echo(served.target, client), _raw(kept, ECHO)(b"hi", timeout=5)):
                    try:
                        assert await call == b"hi"
                    except Exception as exc:
                        failures.append(exc)
                    calls += 1

    async def more_calls(n: int) -> None:
        since = calls
        await wait_until(lambda: calls >= since + n, 30.0, message=f"{n} calls after a renewal")

    runner = asyncio.create_task(traffic())
    try:
        for _ in range(5):
            renewed = bootstrap.node_identity(served.authority, "n1", ["127.0.0.1"])
            served.tls.update(renewed.key, renewed.cert)
            # Paced by the calls, not the clock (a loaded machine makes few in a given time):
            # 3 more, so a new connection and the kept one both made a call after the renewal.
            await more_calls(3)
    finally:
        done.set()
        await runner
    assert failures == [] and calls >= 15


async def test_a_key_that_does_not_match_the_certificate_is_refused_at_once(served: Served) -> None:
    one = bootstrap.node_identity(served.authority, "n1", ["127.0.0.1"])
    two = bootstrap.node_identity(served.authority, "n1", ["127.0.0.1"])
    with pytest.raises(CertError, match="does not belong"):
        served.tls.update(one.key, two.cert)


async def test_a_request_over_four_mib_is_resource_exhausted(served: Served) -> None:
    renewed = bootstrap.node_identity(served.authority, "n1", ["127.0.0.1"])
    served.tls.update(renewed.key, renewed.cert)
    assert await _echo(served.target, served.client(), b"x" * (rpc.MAX_MESSAGE_BYTES - 1024))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _echo(served.target, served.client(), b"x" * (5 * 1024 * 1024))
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_without_tls_everything_is_plaintext_as_before() -> None:
    server = _echo_server()
    port = rpc.bind(server, "127.0.0.1:0")
    await server.start()
    try:
        assert await _echo(f"127.0.0.1:{port}", None) == b"hi"
    finally:
        await server.stop(None)


def test_client_tls_never_shows_its_key_or_token() -> None:
    tls = rpc.ClientTls(b"ca", b"-----BEGIN PRIVATE KEY-----secret", b"cert", "shoal_abcdefghij_secretsecret")
    assert "secret" not in repr(tls) and "secret" not in str(tls)
