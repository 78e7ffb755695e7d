"""etcd endpoints given as host names or IPv6 addresses reach etcd (`node.store.endpoints`).

Before, etcd3aio's `ipv4:host:port` target was used as it was: gRPC refuses it for a
host name or an IPv6 address, and every call failed ("the target uri is not valid")."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from etcd3aio._protobuf import rpc_pb2, rpc_pb2_grpc

from node.store.base import StoreUnavailable
from node.store.endpoints import grpc_target, host_names
from node.store.etcd import EtcdStore
from tests.helpers import wait_until


def test_the_target_names_host_names_and_ipv6_addresses_as_grpc_takes_them() -> None:
    cases = [
        (["127.0.0.1:2379"], {}, "ipv4:127.0.0.1:2379"),
        (["10.0.0.1:2379", "10.0.0.2:2379"], {}, "ipv4:10.0.0.1:2379,10.0.0.2:2379"),
        (["localhost:2379"], {}, "ipv4:127.0.0.1:2379"),
        (["mylocalhost.test:2379"], {}, "dns:///mylocalhost.test:2379"),  # no substring replaced
        (["etcd.example.test:2379"], {}, "dns:///etcd.example.test:2379"),
        (["[::1]:2379"], {}, "ipv6:[::1]:2379"),
        (["::1:2379"], {}, "ipv6:[::1]:2379"),
        (["[::1]:2379", "127.0.0.1:2380"], {}, "ipv6:[::1]:2379,[::ffff:127.0.0.1]:2380"),
        (
            ["a.test:2379", "b.test:2379", "10.0.0.3:2379"],
            {"a.test": ["10.0.0.1"], "b.test": ["10.0.0.2", "10.0.0.1"]},
            "ipv4:10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379",
        ),
        (["a.test:2379", "b.test:2379"], {"b.test": ["fd00::2"]}, "ipv6:[fd00::2]:2379"),  # a.test left out
        (["a.test:2379", "b.test:2379"], {}, "dns:///a.test:2379"),  # none resolves: gRPC says so
    ]
    for endpoints, resolved, want in cases:
        assert grpc_target(endpoints, resolved) == want, endpoints


def test_only_several_endpoints_have_their_names_looked_up_first() -> None:
    assert host_names(["etcd.example.test:2379"]) == []  # gRPC's dns: target does it
    assert host_names(["a.test:1", "[::1]:2", "localhost:3", "b.test:4"]) == [("a.test", 1), ("b.test", 4)]
    with pytest.raises(ValueError, match=r"not host:port \(IPv6 in brackets"):
        grpc_target(["etcd.example.test"])


class _KV(rpc_pb2_grpc.KVServicer):
    async def Range(self, request: object, context: grpc.aio.ServicerContext) -> object:
        return rpc_pb2.RangeResponse(header=rpc_pb2.ResponseHeader(revision=42))


@pytest.fixture
async def fake_etcd() -> AsyncIterator[int]:
    """A KV service on 127.0.0.1 (and ::1 when this host has IPv6), on one port."""
    server = grpc.aio.server()
    rpc_pb2_grpc.add_KVServicer_to_server(_KV(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    with contextlib.suppress(RuntimeError):  # no IPv6 loopback here: the IPv6 test skips itself
        server.add_insecure_port(f"[::1]:{port}")
    await server.start()
    yield port
    await server.stop(None)


async def _answers(endpoints: list[str]) -> int:
    store = EtcdStore(endpoints, timeout=5.0)
    try:
        await store.connect()
        _, revision = await store.range("/k/")
        return revision
    finally:
        await store.close()


def _loopback_name() -> str:
    """A host name (not `localhost`, which stays 127.0.0.1) that resolves to 127.0.0.1."""
    for name in (socket.gethostname(), "localhost.localdomain", "ip6-localhost"):
        try:
            if "127.0.0.1" in {info[4][0] for info in socket.getaddrinfo(name, 1, socket.AF_INET)}:
                return name
        except OSError:
            continue
    pytest.skip("no host name of this host resolves to 127.0.0.1")


async def test_etcd_is_reached_by_a_host_name(fake_etcd: int) -> None:
    name = _loopback_name()
    assert await _answers([f"{name}:{fake_etcd}"]) == 42
    dead = socket.socket()  # several endpoints: names looked up by the store, one member down
    dead.bind(("127.0.0.1", 0))
    try:
        assert await _answers([f"{name}:{fake_etcd}", f"127.0.0.1:{dead.getsockname()[1]}"]) == 42
    finally:
        dead.close()


async def test_etcd_is_reached_by_an_ipv6_address(fake_etcd: int) -> None:
    try:
        with socket.create_connection(("::1", fake_etcd), timeout=2.0):
            pass
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    assert await _answers([f"[::1]:{fake_etcd}"]) == 42
    assert await _answers([f"[::1]:{fake_etcd}", f"127.0.0.1:{fake_etcd}"]) == 42


async def test_a_name_that_does_not_resolve_is_said_so() -> None:
    store = EtcdStore(["shoal-no-such-host.invalid:2379", "shoal-nor-this.invalid:2379"], timeout=3.0)
    try:
        await store.connect()  # never raises: the daemon's --wait-for-etcd retries the ping
        with pytest.raises(StoreUnavailable, match=r"the host name does not resolve|no answer within"):
            await store.ping(timeout=3.0)
    finally:
        await store.close()
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="errors resolving etcd.example.test:2379: [field:hostname lookup error: not found]",
    )
    assert "the host name does not resolve" in str(store._error(error))


async def test_a_member_that_moved_is_found_again_without_a_restart(
    fake_etcd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, host names among several endpoints were looked up once, when the store
    connected, into an `ipv4:` target that gRPC never looks up again: a member that
    moved to another address stayed unreachable until the daemon restarted."""
    where = {"a.test": "127.0.0.2"}  # nothing listens there: the member's old address
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        if host not in where:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (where[host], port))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    store = EtcdStore([f"a.test:{fake_etcd}", f"b.test:{fake_etcd}"], timeout=1.0)
    try:
        await store.connect()
        with pytest.raises(StoreUnavailable):
            await store.range("/k/")
        where["a.test"] = "127.0.0.1"  # the member moved

        async def answers() -> bool:
            try:
                return (await store.range("/k/"))[1] == 42
            except StoreUnavailable:
                return False

        await wait_until(answers, 10.0, 0.1, "etcd reached at the member's new address")
    finally:
        await store.close()
