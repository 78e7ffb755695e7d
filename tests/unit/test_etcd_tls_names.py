"""TLS to several etcd members over one channel, without `etcd_server_name`.

gRPC checks every member's certificate for one name per channel. For an `ipv4:` target
of several addresses that name was the whole address list ("a:p,b:p"), which no
certificate holds: every call failed with a bare "unavailable", even with one certificate
that holds every member's address (what `deploy/etcd/make-certs.sh` makes). Now the
first endpoint's host is checked; certificates of one member each, which no one name
fits, are named at start-up (`ping`) with what to set.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from etcd3aio._protobuf import rpc_pb2, rpc_pb2_grpc

from node.security.etcd_pki import EtcdPki
from node.store.base import StoreUnavailable
from node.store.etcd import EtcdStore, EtcdTls


class _Etcd(rpc_pb2_grpc.KVServicer, rpc_pb2_grpc.MaintenanceServicer):
    async def Range(self, request: object, context: grpc.aio.ServicerContext) -> object:
        return rpc_pb2.RangeResponse(header=rpc_pb2.ResponseHeader(revision=42))

    async def Status(self, request: object, context: grpc.aio.ServicerContext) -> object:
        return rpc_pb2.StatusResponse()


def _pki(root: Path, hosts: list[str], ca_from: EtcdPki | None = None) -> EtcdPki:
    pki = EtcdPki(root)
    if ca_from is not None:  # the same CA, another server certificate
        root.mkdir(mode=0o700, parents=True)
        shutil.copy(ca_from.ca, pki.ca)
        shutil.copy(ca_from.ca_key, pki.ca_key)
    pki.make(hosts)
    return pki


Start = Callable[[list[EtcdPki]], Awaitable[list[str]]]


@pytest.fixture
async def members() -> AsyncIterator[Start]:
    """`start([pki, ...])`: member i on 127.0.0.<i+1>, one port, with pki i's certificate."""
    servers: list[grpc.aio.Server] = []

    async def start(pkis: list[EtcdPki]) -> list[str]:
        port, out = 0, []
        for i, pki in enumerate(pkis):
            server = grpc.aio.server()
            rpc_pb2_grpc.add_KVServicer_to_server(_Etcd(), server)
            rpc_pb2_grpc.add_MaintenanceServicer_to_server(_Etcd(), server)
            creds = grpc.ssl_server_credentials([(pki.server_key.read_bytes(), pki.server.read_bytes())])
            port = server.add_secure_port(f"127.0.0.{i + 1}:{port}", creds)
            await server.start()
            servers.append(server)
            out.append(f"127.0.0.{i + 1}:{port}")
        return out

    yield start
    for server in servers:
        await server.stop(None)


async def test_one_certificate_for_every_member_needs_no_server_name(tmp_path: Path, members: Start) -> None:
    pki = _pki(tmp_path / "pki", ["127.0.0.1", "127.0.0.2"])
    endpoints = await members([pki, pki])
    store = EtcdStore(endpoints, timeout=3.0, tls=EtcdTls(pki.ca.read_bytes()))
    try:
        await store.connect()
        await store.ping()
        for _ in range(4):  # round robin: both members' certificates checked
            assert (await store.range("/k/"))[1] == 42
    finally:
        await store.close()


async def test_certificates_of_one_member_each_are_named_at_start_up(tmp_path: Path, members: Start) -> None:
    first = _pki(tmp_path / "m1", ["127.0.0.1"])
    second = _pki(tmp_path / "m2", ["127.0.0.2"], ca_from=first)
    endpoints = await members([first, second])
    store = EtcdStore(endpoints, timeout=3.0, tls=EtcdTls(first.ca.read_bytes()))
    try:
        await store.connect()
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        said = str(caught.value)
        assert endpoints[1] in said and endpoints[0] not in said, said
        assert "does not hold '127.0.0.1'" in said and "set etcd_server_name" in said, said
    finally:
        await store.close()
