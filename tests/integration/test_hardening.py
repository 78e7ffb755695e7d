"""Issue 11, items 12 and 15: what an attacker on a dev cluster's host found, closed.

One two-node cluster serves the module. Each test names the path it closes: the dev
etcd refuses a client without its certificate; a revoked token's open streams end;
a join token cannot take a running node's id nor be replayed past its uses; shoal's
own ports and low ports are refused to a deployer.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from node.devcluster import DevCluster
from node.store import StoreUnavailable
from node.store.etcd import EtcdStore, EtcdTls
from tests.helpers import free_port_on_all, free_port_pair, on_store

pytestmark = pytest.mark.integration

HOSTS = [f"127.0.0.{i}" for i in range(1, 4)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster(
        tmp_path_factory.mktemp("hardening"),
        nodes=2,
        grpc_port=free_port_on_all(HOSTS),
        metrics_port=free_port_on_all(HOSTS),
        etcd_port=free_port_pair(),
        cluster=f"t{uuid.uuid4().hex[:8]}",
    )
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
