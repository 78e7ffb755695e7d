"""Issue 11, items 12 and 15: what an attacker on a dev cluster's host found, closed.

One two-node cluster serves the module. Each test names the path it closes: the dev
etcd refuses a client without its certificate; a revoked token's open streams end;
a join token cannot take a running node's id nor be replayed past its uses; shoal's
own ports and low ports are refused to a deployer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from node.dev.devcluster import DevCluster
from node.model.keys import Keys
from node.pb import peer_pb2, peer_pb2_grpc
from node.security import bootstrap
from node.security.cluster import ClusterSecurity
from node.store import StoreUnavailable
from node.store.etcd import EtcdStore, EtcdTls
from node.wire import rpc
from node.wire.client import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ShoalClient,
    ShoalError,
    Unauthenticated,
)
from tests.helpers import free_port_on_all, on_store, wait_until_sync

pytestmark = pytest.mark.integration

HOSTS = [f"127.0.0.{i}" for i in range(1, 4)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster.on_free_ports(tmp_path_factory.mktemp("hardening"), nodes=2)
    c.start()
    yield c
    c.stop()


# -- 15(a): the dev etcd takes only its client certificates ------------------------------------


def test_the_dev_etcd_refuses_a_client_without_its_certificate(cluster: DevCluster) -> None:
    endpoint, tls = cluster.etcd.endpoint, cluster.etcd.tls
    assert tls is not None and tls.cert is not None

    async def read_all(with_tls: EtcdTls | None) -> int:
        store = EtcdStore([endpoint], timeout=2.0, tls=with_tls)
        await store.connect()
        try:
            return len((await store.range(cluster.prefix))[0])
        finally:
            await store.close()

    for attempt in (None, EtcdTls(tls.ca)):  # plaintext; TLS without a client certificate
        with pytest.raises(StoreUnavailable):
            asyncio.run(read_all(attempt))
    assert asyncio.run(read_all(tls)) > 0  # shoal's own certificate reads it
    assert on_store(endpoint, lambda store: store.get(f"{cluster.prefix}nodes/n1")) is not None
    pki = cluster.etcd.pki
    assert pki is not None
    for key in (pki.ca_key, pki.server_key, pki.client_key()):
        assert key.stat().st_mode & 0o077 == 0, key
    assert pki.root.stat().st_mode & 0o077 == 0
    if shutil.which("etcdctl"):  # the stock client, as an attacker would use it
        done = subprocess.run(
            ["etcdctl", "--endpoints", f"http://{endpoint}", "--dial-timeout", "2s", "get", "--prefix", "/"],
            capture_output=True, text=True, timeout=30, env={"ETCDCTL_API": "3"},
        )  # fmt: skip
        assert done.returncode != 0 and cluster.prefix not in done.stdout
    with cluster.client() as c:  # and shoal works as before
        assert {n.id for n in c.list_nodes().nodes} >= {"n1", "n2"}


# -- 15(c): a join token cannot take a running node's id nor be replayed ------------------------


def _join(cluster: DevCluster, node_id: str, addresses: list[str]) -> tuple[grpc.StatusCode, str]:
    async def read(store: EtcdStore) -> tuple[bytes, bytes]:
        return await ClusterSecurity(store, Keys(cluster.prefix), cluster.cluster).join_material()

    ca_pem, join_cert = on_store(cluster.etcd.endpoint, read)
    with cluster.client() as c:
        token = c.join_token()
    attempt = bootstrap.prepare_join(token, cluster.cluster, node_id, ca_pem, join_cert)
    try:
        with rpc.channel(cluster.addr, attempt.tls) as channel:
            answer = peer_pb2_grpc.PeerStub(channel).Join(
                peer_pb2.JoinRequest(csr=attempt.csr, addresses=addresses), timeout=10
            )
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""  # type: ignore[attr-defined]
    assert answer.certificate
    return grpc.StatusCode.OK, ""


def test_a_join_token_never_grants_a_running_node_and_is_not_replayed(cluster: DevCluster) -> None:
    code, details = _join(cluster, "n1", ["127.0.0.9", HOSTS[0]])  # n1 runs; its address listed too
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "already running" in details, details
    assert _join(cluster, "x1", ["127.0.0.9"])[0] is grpc.StatusCode.OK
    code, details = _join(cluster, "x1", ["127.0.0.9"])  # the same token, the same id again
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "already joined" in details, details

    async def uses(store: EtcdStore) -> dict[str, str]:
        kvs, _ = await store.range(Keys(cluster.prefix).joins)
        return {kv.key.removeprefix(Keys(cluster.prefix).joins): kv.value.decode() for kv in kvs}

    recorded = on_store(cluster.etcd.endpoint, uses)
    assert [k.rsplit("/", 1)[-1] for k in recorded if "/" in k] == ["x1"]
    assert [v for k, v in recorded.items() if "/" not in k] == ["1"]


# -- 15(b) and 12: a revoked token's open streams end; streams are bounded per token -------------


def _drain(stream: Iterator[Any], out: dict[str, Any]) -> None:
    try:
        for _ in stream:
            out["messages"] = out.get("messages", 0) + 1
        out["ended"] = "cleanly"
    except ShoalError as exc:
        out["ended"] = exc


def test_streams_of_a_revoked_token_end(cluster: DevCluster) -> None:
    with cluster.client() as admin:
        admin.apply("name: watched\nimage: shoal-demo/web:1\nreplicas: 0\n", "watched.yaml")
        made = admin.create_token("viewer", "hardening: revoked while streaming")
    tls = dataclasses.replace(cluster.tls, token=made.token)
    viewer = ShoalClient(cluster.addr, timeout=5, tls=tls)
    results: list[dict[str, Any]] = [{}, {}]
    streams = [viewer.watch_resolve("watched"), viewer.events(follow=True)]
    threads = [
        threading.Thread(target=_drain, args=(s, r), daemon=True)
        for s, r in zip(streams, results, strict=True)
    ]
    for t in threads:
        t.start()
    try:
        wait_until_sync(lambda: results[0].get("messages", 0) >= 1, 15, message="the watch's first answer")
        assert all("ended" not in r for r in results)
        with cluster.client() as admin:
            admin.revoke_token(made.info.id)
        for t in threads:
            t.join(15)
        for r in results:
            assert isinstance(r.get("ended"), Unauthenticated), r
            assert "revoked" in str(r["ended"])
    finally:
        viewer.close()


def test_watch_streams_are_bounded_per_token(cluster: DevCluster) -> None:
    with cluster.client() as admin:
        admin.apply("name: watched\nimage: shoal-demo/web:1\nreplicas: 0\n", "watched.yaml")
    open_streams = []
    with ShoalClient(cluster.addr, timeout=5, tls=cluster.tls) as c:
        try:
            for _ in range(32):  # max_streams_per_token's default
                stream = c.watch_resolve("watched")
                next(stream)
                open_streams.append(stream)
            with pytest.raises(ResourceExhausted, match="max_streams_per_token"):
                next(c.watch_resolve("watched"))
        finally:
            for stream in open_streams:
                stream.close()


# -- 15(d) and 12: shoal's own ports are reserved; low ports need an admin ------------------------


def _published(name: str, port: int) -> str:
    head = f"name: {name}\nimage: shoal-demo/web:1\nreplicas: 0\n"
    return head + f"ports:\n  - {{container: 8080, published: {port}}}\n"


def test_shoals_ports_are_reserved_and_low_ports_need_an_admin(cluster: DevCluster) -> None:
    with cluster.client() as admin:
        made = admin.create_token("deployer", "hardening: ports")
    deployer = ShoalClient(cluster.addr, timeout=5, tls=dataclasses.replace(cluster.tls, token=made.token))
    admin = cluster.client()
    try:
        for port in (22, 80):
            with pytest.raises(PermissionDenied, match=f"port {port} is below 1024: .*needs the admin role"):
                deployer.apply(_published("low", port), "low.yaml")
        etcd_port = cluster.etcd.client_port
        for port in (cluster.grpc_port, cluster.metrics_port, etcd_port, etcd_port + 1):
            for who in (deployer, admin):
                with pytest.raises(InvalidArgument, match=f"port {port} is reserved"):
                    who.apply(_published("own", port), "own.yaml")
        with pytest.raises(NotFound):
            deployer.get_service("low")
        with pytest.raises(NotFound):
            deployer.get_service("own")
        free = free_port_on_all(HOSTS[:2])
        assert deployer.apply(_published("high", free), "high.yaml").changed  # an ordinary port is fine
        deployer.delete_service("high")
    finally:
        deployer.close()
        admin.close()
