"""The node's entrance (node.proxy.ingress) inside a Mesh over a MemoryStore: real sockets
on 127.0.0.1, small asyncio HTTP/1.1 replicas that answer the head they got, TLS with
SNI verified against a cluster CA made for the test."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from node.model.domain import EndpointRecord, ServiceRecord
from node.model.keys import Keys
from node.proxy import workers
from node.proxy.balancer import RetryPolicy
from node.proxy.ingress import Ingress
from node.proxy.ingress_tls import IngressCerts
from node.proxy.mesh import Mesh, MeshSettings
from node.proxy.metrics import MeshCollector
from node.proxy.workers import WorkerMesh
from node.security.ca import ClusterCA
from node.security.objects import ObjectRecord
from node.security.sealing import Sealer, secret_ad
from node.security.site_cert import issue_site
from node.store.memory import MemoryStore
from tests.factories import make_service, make_task
from tests.helpers import wait_until
from tests.unit.test_proxy_mesh import FakeGossip, RecordedEvents

KEYS = Keys("/t/")
HOST = "127.0.0.1"
PASS = b"0123456789abcdef-test-passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Bed:
    def __init__(self, tmp: Path, workers: int = 0) -> None:
        self.store = MemoryStore()
        self.events = RecordedEvents(self.store)
        self.ca = ClusterCA.create("t")
        self.sealer = Sealer(lambda: PASS)
        self.http, self.https = free_port(), free_port()
        settings = MeshSettings(connect_timeout=0.5, drain_timeout=1.0, rebind_interval=0.2)
        self.mesh: Mesh = Mesh(self.store, KEYS, "n1", HOST, self.events, FakeGossip(), None, settings)
        if workers:  # the entrance served by proxy worker processes (decision 80)
            self.mesh = WorkerMesh(
                self.store, KEYS, "n1", HOST, self.events, FakeGossip(), None, settings,
                workers=workers, directory=tmp / "proxy", orphan_exit=30.0, stop_workers=True,
            )  # fmt: skip

        async def ca() -> ClusterCA:
            return self.ca

        self.certs = IngressCerts(self.store, KEYS, self.sealer, ca, tmp / "ingress", HOST)
        self.mesh.ingress = Ingress(
            HOST, self.http, self.https, self.certs, self.events,
            connect_timeout=0.5, drain_timeout=1.0, retry=RetryPolicy(), cap=self.mesh.cap,
        )  # fmt: skip
        self.servers: list[asyncio.Server] = []

    async def service(self, name: str, *rules: dict[str, Any], replicas: int = 1) -> ServiceRecord:
        record = make_service(name, replicas=replicas, ports=[{"container": 8080}], ingress=list(rules))
        await self.store.put(KEYS.service(name), record.to_json())
        for slot in range(1, replicas + 1):
            await self.replica(record, slot)
        return record

    async def replica(self, service: ServiceRecord, slot: int) -> str:
        """A replica answering 200 with JSON: who it is, the request line and its headers."""
        task = make_task(service, slot, "n1")
        me = f"{service.name}.{slot}"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while raw := await reader.readuntil(b"\r\n\r\n"):
                    line, *rest = raw[:-4].decode("latin-1").split("\r\n")
                    headers = [h.split(": ", 1) for h in rest]
                    body = json.dumps({"me": me, "line": line, "headers": headers}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        await self.store.put(KEYS.task(service.name, slot), task.to_json())
        record = EndpointRecord(task.task_id, service.name, "n1", HOST, port, 8080, {"8080": port})
        await self.store.put(KEYS.endpoint(service.name, task.task_id), record.to_json())
        return task.task_id

    async def secret(self, name: str, host: str) -> bytes:
        """A secret holding a chain and key for `host` (issued by the test's CA); returns
        the DER of its certificate."""
        key, chain, _ = issue_site(self.ca, host)
        old = await self.store.get(KEYS.object("secret", name))
        version = ObjectRecord.from_json(old.value).version + 1 if old else 1
        data = self.sealer.seal(chain + key, secret_ad(name))
        record = ObjectRecord("secret", name, "u1", version, len(chain + key), "t", "t", data)
        await self.store.put(KEYS.object("secret", name), record.to_json())
        end = "-----END CERTIFICATE-----"
        return ssl.PEM_cert_to_DER_cert(chain.decode().split(end)[0] + end + "\n")

    def client_tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        return ctx


@pytest.fixture(params=[0, 2], ids=["in-daemon", "2-workers"])
async def bed(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Bed]:
    monkeypatch.setattr(workers, "POLL", 0.2)
    b = Bed(tmp_path, workers=request.param)
    runner = asyncio.create_task(b.mesh.run())
    try:
        yield b
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        if isinstance(b.mesh, WorkerMesh):
            await b.mesh.close()  # stop_workers: they stop and go
            for w in b.mesh.workers:
                if w.proc is not None:
                    w.proc.kill()
                    w.proc.wait(5)
        for s in b.servers:
            s.close()


async def request(
    port: int, host: str, path: str = "/", tls: ssl.SSLContext | None = None, sni: str | None = None,
    headers: str = "",
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One GET over a new connection: (status, headers lowercased, body)."""
    reader, writer = await asyncio.open_connection(
        HOST, port, ssl=tls, server_hostname=(sni or host) if tls else None
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *rest = head.decode("latin-1").split("\r\n")
    return int(line.split()[1]), {k.lower(): v for k, v in (h.split(": ", 1) for h in rest)}, body


async def served_cert(port: int, host: str) -> bytes:
    """The DER of the certificate the entrance presents for `host` (by SNI), unverified."""
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection(HOST, port, ssl=insecure, server_hostname=host)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return bytes(der)


async def answers(port: int, host: str, tls: ssl.SSLContext) -> bool:
    """Whether `host` is served 200 over a verified TLS connection. With proxy workers the
    entrance gets a change at their next table push, after the daemon has it: poll this."""
    return (await request(port, host, "/", tls))[0] == 200


def seen(body: bytes) -> dict[str, Any]:
    data = json.loads(body)
    data["h"] = {k.lower(): v for k, v in data["headers"]}
    return data


async def ready(bed: Bed, host: str, path: str = "/") -> None:
    async def routed() -> bool:
        try:
            status, _, _ = await request(bed.http, host, path)
        except OSError:
            return False
        return status not in (404, 503)

    await wait_until(routed, timeout=20)  # proxy workers start in a second or more
    # and every worker took the last table pushed (the one that routed it, or newer): the
    # answer came from one of them, and the next connection may land on the other (SO_REUSEPORT)
    await wait_until(bed.mesh.acked, timeout=20)


async def test_routes_by_host_and_longest_prefix_with_forwarded_headers(bed: Bed) -> None:
    await bed.service("web", {"host": "app.example.test", "port": 8080})
    await bed.service("api", {"host": "app.example.test", "path": "/api", "port": 8080})
    await bed.service("blog", {"host": "blog.example.test", "port": 8080})
    await ready(bed, "blog.example.test")
    await ready(bed, "app.example.test", "/api")
    cases = [("app.example.test", "/", "web.1"), ("app.example.test", "/api/users?id=3", "api.1"),
             ("app.example.test", "/apiary", "web.1"), ("blog.example.test", "/api", "blog.1")]  # fmt: skip
    for host, path, who in cases:
        status, _, body = await request(bed.http, host, path, headers="X-Forwarded-Host: evil.test\r\n")
        got = seen(body)
        assert (status, got["me"], got["line"]) == (200, who, f"GET {path} HTTP/1.1")
        assert got["h"]["x-forwarded-host"] == host  # the client's own dropped
        assert got["h"]["x-forwarded-proto"] == "http"
        assert got["h"]["x-forwarded-for"] == HOST
        assert got["h"]["host"] == host


async def test_the_entrance_is_counted_in_metrics_as_service_ingress(bed: Bed) -> None:
    await bed.service("web", {"host": "app.example.test", "port": 8080})
    await ready(bed, "app.example.test")
    await request(bed.http, "nope.example.test")
    registry = CollectorRegistry()
    registry.register(MeshCollector(bed.mesh))
    text = (await asyncio.to_thread(generate_latest, registry)).decode()  # /metrics: another thread
    http = f'port="{bed.http}",protocol="http",service="ingress"'
    requests = [
        line for line in text.splitlines() if line.startswith("shoal_proxy_requests_total{") and http in line
    ]
    assert len(requests) == 1 and float(requests[0].rsplit(" ", 1)[1]) >= 2
    assert f'shoal_proxy_requests_total{{port="{bed.https}",protocol="https",service="ingress"}}' in text


async def test_unknown_host_and_path_get_404_and_no_host_400(bed: Bed) -> None:
    await bed.service("api", {"host": "app.example.test", "path": "/api", "port": 8080})
    await ready(bed, "app.example.test", "/api")
    status, headers, body = await request(bed.http, "nope.example.test")
    assert (status, body) == (
        404,
        b"shoal ingress: no service is routed for host 'nope.example.test' on this cluster\n",
    )
    assert headers["content-type"].startswith("text/plain")
    status, _, body = await request(bed.http, "app.example.test", "/web")
    assert status == 404 and b"paths of app.example.test: /api" in body
    reader, writer = await asyncio.open_connection(HOST, bed.http)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400 ")
    writer.close()


async def test_one_keep_alive_connection_is_routed_per_request(bed: Bed) -> None:
    await bed.service("a", {"host": "a.example.test", "port": 8080})
    await bed.service("b", {"host": "b.example.test", "port": 8080})
    await ready(bed, "a.example.test")
    await ready(bed, "b.example.test")
    reader, writer = await asyncio.open_connection(HOST, bed.http)
    got = []
    for host in ["a.example.test", "b.example.test", "x.example.test", "a.example.test"]:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))[15:])
        body = await reader.readexactly(length)
        got.append(seen(body)["me"] if head.startswith(b"HTTP/1.1 200") else head.split(b"\r\n")[0].decode())
    writer.close()
    assert got == ["a.1", "b.1", "HTTP/1.1 404 Not Found", "a.1"]


async def test_tls_with_sni_per_host_redirect_and_secret_rotation(bed: Bed) -> None:
    await bed.secret("shop-tls", "shop.example.test")
    await bed.service(
        "shop", {"host": "shop.example.test", "port": 8080, "tls": {"secret": "shop-tls", "redirect": True}}
    )
    await bed.service("docs", {"host": "docs.example.test", "port": 8080})  # the cluster CA's certificate
    # deadlines, not speeds: it failed in full runs at a load average of 15-20 (2 cores)
    await wait_until(
        lambda: set(bed.certs.contexts) == {"shop.example.test", "docs.example.test"}, timeout=30
    )
    tls = bed.client_tls()
    for host in ("shop.example.test", "docs.example.test"):
        # proxy workers start in a second or more
        await wait_until(lambda host=host: answers(bed.https, host, tls), timeout=60)
    for host, who in [("shop.example.test", "shop.1"), ("docs.example.test", "docs.1")]:
        status, _, body = await request(bed.https, host, "/x", tls)  # verifies the chain and the host name
        got = seen(body)
        assert (status, got["me"], got["h"]["x-forwarded-proto"]) == (200, who, "https")
    # SNI picks the certificate: asking for one host's name with another's is refused by the client
    with pytest.raises(ssl.SSLCertVerificationError):
        await request(bed.https, "shop.example.test", "/", tls, sni="nope.example.test")
    # plain HTTP: redirected for the rule that says so, served for the other
    status, headers, _ = await request(bed.http, "shop.example.test", "/cart?id=1")
    assert (status, headers["location"]) == (308, f"https://shop.example.test:{bed.https}/cart?id=1")
    status, _, _ = await request(bed.http, "docs.example.test", "/")
    assert status == 200
    # unknown host over TLS: the default certificate, then a 404
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    status, _, _ = await request(bed.https, "nope.example.test", "/", insecure)
    assert status == 404
    # a new revision of the secret is served once the entrance refreshes (every rebind interval)
    before = bed.certs.loaded["shop.example.test"]
    old = await served_cert(bed.https, "shop.example.test")
    new = await bed.secret("shop-tls", "shop.example.test")
    assert new != old
    await wait_until(lambda: bed.certs.loaded["shop.example.test"] != before, timeout=30)

    async def rotated() -> bool:
        return await served_cert(bed.https, "shop.example.test") == new

    await wait_until(rotated, timeout=30)
    assert (await request(bed.https, "shop.example.test", "/", tls))[0] == 200


async def on_one_connection(
    port: int, tls: ssl.SSLContext, sni: str | None, hosts: list[str]
) -> list[tuple[int, bytes]]:
    """A GET for each of `hosts` in turn over one keep-alive TLS connection (no SNI when
    `sni` is None): (status, body) of each."""
    reader, writer = await asyncio.open_connection(HOST, port, ssl=tls, server_hostname=sni or "")
    try:
        got = []
        for host in hosts:
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            got.append((int(head.split()[1]), await reader.readexactly(length)))
        return got
    finally:
        writer.close()


async def test_a_tls_connection_made_for_one_host_serves_only_that_host(bed: Bed) -> None:
    """SNI shop.example.test gets shop's certificate; `Host: docs.example.test` on that
    connection is a 421 Misdirected Request, not docs' service. Without SNI, or with a
    name served the default certificate, every host is served as before."""
    await bed.secret("shop-tls", "shop.example.test")
    await bed.service("shop", {"host": "shop.example.test", "port": 8080, "tls": {"secret": "shop-tls"}})
    await bed.service("docs", {"host": "docs.example.test", "port": 8080})  # the cluster CA's certificate
    tls = bed.client_tls()
    for name in ("shop.example.test", "docs.example.test"):
        await wait_until(functools.partial(answers, bed.https, name, tls), timeout=20)
    await wait_until(bed.mesh.acked, timeout=20)
    for sni, host in [("shop.example.test", "docs.example.test"), ("docs.example.test", "shop.example.test")]:
        status, _, body = await request(bed.https, host, "/", tls, sni=sni)  # the chain verified for `sni`
        assert status == 421, body
        assert f"made for host '{sni}'".encode() in body and f"new connection for '{host}'".encode() in body
    status, _, body = await request(
        bed.https, f"SHOP.example.test.:{bed.https}", "/", tls, sni="shop.example.test"
    )
    assert (status, seen(body)["me"]) == (200, "shop.1")
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    # no SNI (a client connecting to an address sends none), and a name without a certificate
    for given in (None, "nope.example.test"):
        got = await on_one_connection(bed.https, insecure, given, ["shop.example.test", "docs.example.test"])
        assert [(status, seen(body)["me"]) for status, body in got] == [(200, "shop.1"), (200, "docs.1")], (
            given
        )
    # the host a connection was made for is its own: a 421 on one does not leak to the next request
    hosts = ["docs.example.test", "shop.example.test", "docs.example.test"]
    got = await on_one_connection(bed.https, tls, "docs.example.test", hosts)
    assert [status for status, _ in got] == [200, 421, 200]


async def test_a_bad_secret_is_reported_and_the_host_keeps_working_certificates_elsewhere(bed: Bed) -> None:
    await bed.service("shop", {"host": "shop.example.test", "port": 8080, "tls": {"secret": "missing"}})
    await bed.service("docs", {"host": "docs.example.test", "port": 8080})
    await wait_until(lambda: "ingress.tls_failed" in bed.events.kinds, timeout=5)
    await wait_until(lambda: bed.mesh.ingress is not None and not bed.mesh.ingress.unbound, timeout=5)
    assert "shop.example.test" in bed.certs.problems
    assert "shoal secret create missing" in bed.certs.problems["shop.example.test"]
    await wait_until(lambda: answers(bed.https, "docs.example.test", bed.client_tls()), timeout=20)
    # once the secret exists it is used
    new = await bed.secret("missing", "shop.example.test")
    await wait_until(lambda: "shop.example.test" in bed.certs.contexts, timeout=5)
    await wait_until(lambda: answers(bed.https, "shop.example.test", bed.client_tls()), timeout=10)
    assert await served_cert(bed.https, "shop.example.test") == new


async def test_replicas_spread_and_a_removed_service_is_no_longer_routed(bed: Bed) -> None:
    await bed.service("web", {"host": "app.example.test", "port": 8080}, replicas=3)
    await ready(bed, "app.example.test")
    await wait_until(
        lambda: len(bed.mesh.ingress.describe()["hosts"]["app.example.test"][0]["backends"]) == 3,  # type: ignore[union-attr,index]
        timeout=5,
    )
    if isinstance(bed.mesh, WorkerMesh):  # each worker its own rotation: exact per worker only
        hit: set[str] = set()

        async def every_replica() -> bool:
            hit.add(seen((await request(bed.http, "app.example.test"))[2])["me"])
            return hit == {"web.1", "web.2", "web.3"}

        await wait_until(every_replica, timeout=10)
    else:
        whos = [seen((await request(bed.http, "app.example.test"))[2])["me"] for _ in range(6)]
        assert sorted(whos) == ["web.1", "web.1", "web.2", "web.2", "web.3", "web.3"]
    await bed.store.delete(KEYS.service("web"))

    async def gone() -> bool:
        return (await request(bed.http, "app.example.test"))[0] == 404

    await wait_until(gone, timeout=5)


async def test_a_taken_port_is_reported_and_bound_once_free(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    b = Bed(tmp_path)
    blocker.bind((HOST, b.http))
    blocker.listen()
    runner = asyncio.create_task(b.mesh.run())
    try:
        await wait_until(lambda: "ingress.bind_failed" in b.events.kinds, timeout=5)
        ingress = b.mesh.ingress
        assert ingress is not None and b.http in ingress.bind_errors
        assert f"{HOST}:{b.http}" in ingress.bind_errors[b.http]
        blocker.close()
        await wait_until(lambda: not ingress.bind_errors, timeout=5)
        await b.service("web", {"host": "app.example.test", "port": 8080})
        await ready(b, "app.example.test")
    finally:
        blocker.close()
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_a_sticky_rule_keeps_a_client_on_its_replica_until_that_one_leaves(bed: Bed) -> None:
    web = await bed.service("web", {"host": "app.example.test", "port": 8080, "sticky": True}, replicas=3)
    await ready(bed, "app.example.test")
    ingress = bed.mesh.ingress
    assert ingress is not None
    await wait_until(
        lambda: len(ingress.describe()["hosts"]["app.example.test"][0]["backends"]) == 3, timeout=5
    )  # type: ignore[index]
    status, headers, body = await request(bed.http, "app.example.test")
    first = seen(body)["me"]
    name, _, rest = headers["set-cookie"].partition("=")
    value, _, attrs = rest.partition(";")
    assert (status, name, attrs.strip()) == (200, "shoal-sticky-web", "Path=/; HttpOnly; SameSite=Lax")
    assert "web" not in value  # a digest, naming no task
    jar = f"Cookie: other=1; shoal-sticky-web={value}\r\n"
    for _ in range(6):  # with the cookie: always the same replica, and no new cookie
        status, headers, body = await request(bed.http, "app.example.test", headers=jar)
        assert (status, seen(body)["me"], "set-cookie" in headers) == (200, first, False)
    if isinstance(bed.mesh, WorkerMesh):  # each worker its own rotation: exact per worker only
        without = {seen((await request(bed.http, "app.example.test"))[2])["me"] for _ in range(9)}
        assert len(without) >= 2  # without it: not kept on one
    else:
        without = {seen((await request(bed.http, "app.example.test"))[2])["me"] for _ in range(3)}
        assert len(without) == 3  # without it: round robin
    # its replica leaves: the next request goes elsewhere and gets a new cookie
    slot = int(first.rpartition(".")[2])
    task = make_task(web, slot, "n1")
    await bed.store.delete(KEYS.endpoint("web", task.task_id))
    await wait_until(
        lambda: len(ingress.describe()["hosts"]["app.example.test"][0]["backends"]) == 2, timeout=5
    )  # type: ignore[index]
    status, headers, body = await request(bed.http, "app.example.test", headers=jar)
    assert status == 200 and seen(body)["me"] != first
    assert headers["set-cookie"].startswith("shoal-sticky-web=") and value not in headers["set-cookie"]
    # over TLS the cookie is Secure
    status, headers, _ = await request(bed.https, "app.example.test", "/", bed.client_tls())
    assert headers["set-cookie"].endswith("; Secure")


async def test_certificates_that_etcd_is_slow_to_give_do_not_hold_back_the_workers_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With proxy workers, every sync read the entrance's certificates (a secret per TLS
    host, up to etcd's 5 s timeout each) before pushing the table: a replica withdrawn or
    a node declared dead stayed in every port's rotation that long. The table goes first;
    the certificates follow in a second push when they changed."""
    monkeypatch.setattr(workers, "POLL", 0.2)
    bed = Bed(tmp_path, workers=1)
    assert isinstance(bed.mesh, WorkerMesh)
    runner = asyncio.create_task(bed.mesh.run())
    try:
        await bed.service("docs", {"host": "docs.example.test", "port": 8080})
        await ready(bed, "docs.example.test")
        ingress = bed.mesh.ingress
        assert ingress is not None
        stuck = asyncio.Event()

        async def etcd_silent(table: Any) -> None:
            stuck.set()
            await asyncio.sleep(3600)  # as a get that etcd never answers, until cancelled

        ingress.refresh_certs = etcd_silent  # type: ignore[method-assign]
        await bed.service("shop", {"host": "shop.example.test", "port": 8080})
        await wait_until(stuck.is_set, timeout=5, message="the sync reads the certificates")

        async def routed() -> bool:
            try:
                return (await request(bed.http, "shop.example.test", "/"))[0] == 200
            except OSError:
                return False

        await wait_until(routed, timeout=10, message="the new route served meanwhile")
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await bed.mesh.close()
        for w in bed.mesh.workers:
            if w.proc is not None:
                w.proc.kill()
                w.proc.wait(5)


async def raw_request(port: int, data: bytes) -> tuple[int, bytes]:
    """`data` as sent, over a new connection: (status, body)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_backend_reads_only_the_host_the_entrance_routed_on(bed: Bed) -> None:
    """Host-header poisoning (password-reset links) in backends that trust the Host: the
    entrance routed on one host and forwarded another in an absolute-form target, in a
    second Host header, or after the port; and passed the client's `Forwarded`,
    `X-Real-IP`, `X_Forwarded_Host` on."""
    await bed.service("app", {"host": "app.example.test", "port": 8080})
    await ready(bed, "app.example.test")
    end = b"Connection: close\r\n\r\n"
    status, body = await raw_request(bed.http, b"GET http://app.example.test/reset?u=1 HTTP/1.1\r\n"
                                     b"Host: app.example.test\r\n" + end)  # fmt: skip
    got = seen(body)
    assert (status, got["line"], got["h"]["host"]) == (200, "GET /reset?u=1 HTTP/1.1", "app.example.test")
    refused = [
        b"GET http://evil.test/reset HTTP/1.1\r\nHost: app.example.test\r\n",
        b"GET / HTTP/1.1\r\nHost: app.example.test\r\nHost: evil.test\r\n",
        b"GET / HTTP/1.1\r\nHost: app.example.test:@evil.test\r\n",
    ]
    for data in refused:
        status, body = await raw_request(bed.http, data + end)
        assert status == 400, (data, body)
    spoofed = (
        "Forwarded: for=6.6.6.6;host=evil.test\r\nX-Real-IP: 6.6.6.6\r\nX_Forwarded_Host: evil.test\r\n"
        "X-Forwarded-Port: 443\r\nX-Request-Id: kept\r\n"
    )
    status, _, body = await request(bed.http, "app.example.test:80", "/", headers=spoofed)
    h = seen(body)["h"]
    assert status == 200 and h["x-forwarded-host"] == "app.example.test:80" and h["x-request-id"] == "kept"
    assert not {"forwarded", "x-real-ip", "x_forwarded_host", "x-forwarded-port"} & set(h), h
