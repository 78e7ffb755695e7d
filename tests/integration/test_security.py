"""Security by default, against real daemons: mutual TLS, tokens and roles, joining,
certificate renewal, hardened inputs, and no secret in logs or process arguments.

One two-node cluster serves the module (tests that do not destroy it share it, in
file order: the fuzzing comes late, the leak check last); renewal and etcd TLS use
their own. "Changed nothing" is asked of etcd (`writes_since`), as in test_api.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.dev import vipranges
from node.dev.devcluster import DevCluster
from node.model.keys import Keys
from node.pb import api_pb2
from node.security import ca, provision
from node.security.ca import ClusterCA, Identity, Kind
from node.security.cluster import ClusterSecurity
from node.security.etcd_tls import read_etcd_tls
from node.security.tokens import ClientToken, JoinToken
from node.store import StoreUnavailable
from node.store.etcd import EtcdStore, EtcdTls
from node.wire import rpc
from node.wire.client import PermissionDenied, ShoalClient, Unauthenticated, Unavailable
from tests import helpers
from tests.helpers import (
    free_port,
    free_port_on_all,
    free_port_pair,
    on_store,
    settled_revision,
    wait_until_sync,
)

pytestmark = pytest.mark.integration

HOSTS = [f"127.0.0.{i}" for i in range(1, 6)]
SERVICE = "name: sec\nimage: shoal-demo/web:1\nreplicas: 0\n"
SECRETS: list[str] = []  # every token and join token of the module: none may leak
FIGURES: dict[str, Any] = {}  # measured figures, printed at the end of the module
_LEAK = re.compile(r"PRIVATE KEY|shoal_[a-z2-7]{10}_[a-z2-7]{52}|SHOAL-1-[a-z2-7]{52}-[a-z2-7]{32}")
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


# -- helpers -----------------------------------------------------------------------------


def revision(cluster: DevCluster) -> int:
    return settled_revision(cluster.etcd.endpoint, cluster.prefix)


def writes_since(cluster: DevCluster, before: int) -> list[str]:
    """Keys written after `before`, except what the cluster writes by itself and node registrations."""
    return helpers.writes_since(cluster.etcd.endpoint, before, cluster.prefix, also_ignore=("nodes/",))


def authority(cluster: DevCluster) -> ClusterCA:
    """The cluster's CA with its key (as a node holds it: passphrase on disk, key in etcd)."""
    passphrase = provision.read_passphrase([m.data_dir for m in cluster.members])
    assert passphrase is not None

    async def load(store: EtcdStore) -> ClusterCA:
        return await ClusterSecurity(store, Keys(cluster.prefix), cluster.cluster).load_ca(passphrase)

    return on_store(cluster.etcd.endpoint, load)


def client_tls(
    authority: ClusterCA, token: str | None, now: datetime | None = None, **life: Any
) -> rpc.ClientTls:
    key, cert = authority.issue_key_and_cert(
        Identity(authority.cluster, Kind.CLIENT, "tester"), lifetime=life.get("lifetime"), now=now
    )
    return rpc.ClientTls(authority.cert_pem, key, cert, token)


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def healthy(cluster: DevCluster, i: int = 1) -> bool:
    with rpc.channel(cluster.members[i - 1].addr, cluster.tls) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def admin_token(cluster: DevCluster) -> str:
    token = cluster.tls.token
    assert token
    return token


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster.on_free_ports(tmp_path_factory.mktemp("security"), nodes=2)
    c.start()
    SECRETS.append(admin_token(c))
    with c.client() as client:
        client.apply(SERVICE)
        SECRETS.append(client.join_token())
    yield c
    c.stop()


# -- mutual TLS ---------------------------------------------------------------------------


def _apply_with(cluster: DevCluster, tls: rpc.ClientTls | None) -> tuple[grpc.StatusCode, str]:
    with rpc.channel(cluster.addr, tls) as channel:
        return _apply_on(channel)


def _apply_on(channel: grpc.Channel) -> tuple[grpc.StatusCode, str]:
    stub = channel.unary_unary("/shoal.v1.Shoal/ApplyService")
    request = api_pb2.ApplyServiceRequest(spec=SERVICE.replace("sec", "intruder")).SerializeToString()
    return code_of(lambda: stub(request, timeout=5))


def test_a_client_without_a_cluster_certificate_is_refused_and_nothing_changes(cluster: DevCluster) -> None:
    ours = authority(cluster)
    other = ClusterCA.create(cluster.cluster)  # same cluster name, another CA
    past = datetime.now(UTC) - timedelta(days=2)
    token = admin_token(cluster)
    before = revision(cluster)
    with grpc.secure_channel(cluster.addr, grpc.ssl_channel_credentials(ours.cert_pem)) as no_cert:
        code, details = _apply_on(no_cert)
    assert code is grpc.StatusCode.UNAVAILABLE, ("no client certificate", code, details)
    for name, tls in {
        "plaintext": None,
        "another CA's certificate": client_tls(other, token),
        "an expired certificate": client_tls(ours, token, now=past, lifetime=timedelta(hours=1)),
    }.items():
        code, details = _apply_with(cluster, tls)
        assert code is grpc.StatusCode.UNAVAILABLE, (name, code, details)
    assert writes_since(cluster, before) == []
    assert _apply_with(cluster, client_tls(ours, token))[0] is grpc.StatusCode.OK  # the control
    with ShoalClient(cluster.addr, tls=client_tls(other, token)) as c, pytest.raises(Unavailable) as err:
        c.list_services()
    assert "TLS handshake" in str(err.value) and "SHOAL_CONTEXT_FILE" in str(err.value)
    with cluster.client() as c:
        c.delete_service("intruder")


def test_a_server_of_another_ca_is_not_trusted(cluster: DevCluster) -> None:
    other = ClusterCA.create(cluster.cluster)
    tls = rpc.ClientTls(other.cert_pem, cluster.tls.key_pem, cluster.tls.cert_pem, cluster.tls.token)
    with ShoalClient(cluster.addr, tls=tls) as c, pytest.raises(Unavailable) as err:
        c.list_services()
    assert "not signed by the CA this client trusts" in str(err.value)


# -- tokens and roles -----------------------------------------------------------------------


def _call(cluster: DevCluster, tls: rpc.ClientTls, method: str, request: Any) -> tuple[grpc.StatusCode, str]:
    with rpc.channel(cluster.addr, tls) as channel:
        stub = channel.unary_unary(f"/shoal.v1.Shoal/{method}")
        return code_of(lambda: stub(request.SerializeToString(), timeout=5))


def test_tokens_missing_wrong_revoked_and_roles(cluster: DevCluster) -> None:
    ours = authority(cluster)
    with cluster.client() as admin:
        viewer = admin.create_token("viewer", "security test viewer")
        revoked = admin.create_token("deployer", "security test, revoked")
    SECRETS.extend([viewer.token, revoked.token])
    viewer_tls = client_tls(ours, viewer.token)
    revoked_tls = client_tls(ours, revoked.token)
    assert _call(cluster, revoked_tls, "ListServices", api_pb2.ListServicesRequest())[0] is grpc.StatusCode.OK
    with cluster.client(2) as admin:  # revoked through n2: n1's mirror follows within milliseconds
        assert admin.revoke_token(revoked.info.id).revoked
    start = time.monotonic()
    wait_until_sync(
        lambda: (
            _call(cluster, revoked_tls, "ListServices", api_pb2.ListServicesRequest())[0]
            is grpc.StatusCode.UNAUTHENTICATED
        ),
        5,
        interval=0.005,
        message="the revocation seen by n1",
    )
    FIGURES["revocation_seen_by_other_node_ms"] = round((time.monotonic() - start) * 1000, 1)
    apply = api_pb2.ApplyServiceRequest(spec=SERVICE.replace("sec", "nope"))
    wrong = str(ClientToken(viewer.info.id, ClientToken.new().secret))  # a known id, a wrong secret
    before = revision(cluster)
    for tls, fragment in [
        (client_tls(ours, None), "no token"),
        (client_tls(ours, str(ClientToken.new())), "not known to this cluster"),
        (client_tls(ours, wrong), "the secret is wrong"),
        (client_tls(ours, "not-a-token"), "malformed"),
        (revoked_tls, "was revoked"),
    ]:
        code, details = _call(cluster, tls, "ApplyService", apply)
        assert code is grpc.StatusCode.UNAUTHENTICATED and fragment in details, (code, details)
        assert wrong.split("_")[2] not in details and _LEAK.search(details) is None
    code, details = _call(cluster, viewer_tls, "ApplyService", apply)
    assert code is grpc.StatusCode.PERMISSION_DENIED and "role viewer" in details, details
    code, details = _call(cluster, viewer_tls, "CreateToken", api_pb2.CreateTokenRequest(role="admin"))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    node_tls = rpc.ClientTls(*NodeTlsFiles(cluster).read(), admin_token(cluster))
    code, details = _call(cluster, node_tls, "CreateToken", api_pb2.CreateTokenRequest(role="admin"))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "node certificate" in details
    assert writes_since(cluster, before) == []
    assert _call(cluster, viewer_tls, "ListServices", api_pb2.ListServicesRequest())[0] is grpc.StatusCode.OK
    with (
        ShoalClient(cluster.addr, tls=viewer_tls) as c,
        pytest.raises(PermissionDenied, match="ask an admin"),
    ):
        c.apply(SERVICE)
    with ShoalClient(cluster.addr, tls=revoked_tls) as c, pytest.raises(Unauthenticated, match="revoked"):
        c.list_services()
    with cluster.client() as admin:
        listed = {t.id: t for t in admin.list_tokens()}
    assert listed[revoked.info.id].revoked and not listed[viewer.info.id].revoked
    assert all(_LEAK.search(str(t)) is None for t in listed.values())


class NodeTlsFiles:
    """A node's own key and certificate (what a compromised node would hold)."""

    def __init__(self, cluster: DevCluster) -> None:
        self.path = cluster.members[0].data_dir / "tls"

    def read(self) -> tuple[bytes, bytes, bytes]:
        from node.security.files import NodeFiles

        return NodeFiles(self.path).load()


def test_the_cli_says_which_credentials_are_missing(cluster: DevCluster, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env |= {"SHOAL_CONTEXT_FILE": str(tmp_path / "none.json")}
    done = subprocess.run(
        [sys.executable, "-m", "node.cli.main", "--addr", cluster.addr, "service", "ls"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert "missing credentials: ca, cert, key, token" in done.stderr and "shoal token create" in done.stderr
    env |= {"SHOAL_CONTEXT_FILE": str(cluster.context_file)}
    done = subprocess.run(
        [sys.executable, "-m", "node.cli.main", "--addr", cluster.addr, "token", "ls", "-o", "json"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {t["role"] for t in json.loads(done.stdout)} >= {"admin"}


# -- joining ------------------------------------------------------------------------------


class Joiner:
    """A shoald started on a fresh data dir, the join token in its environment only."""

    def __init__(self, cluster: DevCluster, node: str, index: int, token: str) -> None:
        root = cluster.data_dir / "joiners" / uuid.uuid4().hex[:6]  # scanned by the leak check
        root.mkdir(parents=True)
        self.data = root / node
        self.log = root / f"{node}.log"
        self.args = [
            sys.executable, "-m", "node.daemon", "--node-id", node, "--data-dir", str(self.data),
            "--address", f"127.0.0.{index}", "--grpc-port", str(cluster.grpc_port), "--metrics-port", "0",
            *cluster.etcd.client_flags, "--etcd-prefix", cluster.prefix, "--cluster", cluster.cluster,
            "--preset", "local", "--vip-range", cluster.vip_range,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")} | {
            "SHOAL_JOIN_TOKEN": token
        }
        self.proc = subprocess.Popen(self.args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env)

    def refused(self) -> str:
        assert self.proc.wait(60) == 1
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def test_join_with_a_wrong_token_or_ca_hash_is_refused_clearly(cluster: DevCluster) -> None:
    with cluster.client() as c:
        good = JoinToken.parse(c.join_token())
    guessed = JoinToken.new(good.ca_fingerprint)  # the right CA hash, a wrong secret
    foreign = JoinToken(ClusterCA.create(cluster.cluster).fingerprint, good.secret)  # another CA's hash
    SECRETS.extend([str(guessed), str(foreign)])
    before = revision(cluster)
    out = Joiner(cluster, "n3", 3, str(guessed)).refused()
    assert "shoald: cannot join: this join token is not the cluster's current one" in out, out
    out = Joiner(cluster, "n4", 4, str(foreign)).refused() + out
    assert "is not the one this join token pins" in out and "another cluster" in out, out
    out = Joiner(cluster, "n5", 5, "SHOAL-1-garbage").refused() + out
    assert "the join token is malformed" in out, out
    assert writes_since(cluster, before) == []
    assert str(guessed) not in out and str(foreign) not in out


def test_join_with_the_token_makes_a_member_that_runs_tasks_and_rotation_locks_out(
    cluster: DevCluster,
) -> None:
    with cluster.client() as c:
        token = c.join_token()
    joiner = Joiner(cluster, "n3", 3, token)
    try:

        def joined() -> bool:
            with cluster.client() as c:
                nodes = {n.id: n for n in c.list_nodes().nodes}
            return "n3" in nodes and nodes["n3"].status == "ready" and nodes["n3"].member_state == "alive"

        wait_until_sync(joined, 30, interval=0.2, message="n3 joined and alive")
        tls_dir = joiner.data / "tls"
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in tls_dir.iterdir()} == {
            "ca.crt": "0o644", "node.pem": "0o600", "ca.pass": "0o600",
        }  # fmt: skip
        spec = (
            "name: on-n3\nimage: shoal-demo/web:1\nreplicas: 1\nports: [{container: 8080}]\n"
            "secret_env: {PASSWORD: hunter2-very-secret}\nplacement: {constraints: ['node.id == n3']}\n"
        )
        with cluster.client() as c:
            c.apply(spec)

            def running_on_n3() -> bool:
                return any(t.node == "n3" and t.state == "running" for t in c.list_tasks("on-n3"))

            wait_until_sync(running_on_n3, 60, interval=0.3, message="a task running on n3")
            shown = c.get_service("on-n3").spec_json
            assert "hunter2" not in shown and json.loads(shown)["secret_env"] == {"PASSWORD": "***"}
            c.delete_service("on-n3")
        with ShoalClient(f"127.0.0.3:{cluster.grpc_port}", tls=cluster.tls) as via_n3:  # it answers too
            assert via_n3.get_service("sec").name == "sec"
        with cluster.client() as c:
            rotated = c.rotate_join_token()
            SECRETS.append(rotated)
            assert rotated != token and c.join_token() == rotated
    finally:
        joiner.stop()
    out = Joiner(cluster, "n4", 4, token).refused()
    assert "not the cluster's current one (it was rotated)" in out, out


# -- hardened inputs ------------------------------------------------------------------------


def test_a_5_mib_request_is_resource_exhausted_and_memory_stays_flat(cluster: DevCluster) -> None:
    pid = cluster.members[0].proc.pid  # type: ignore[union-attr]
    big = api_pb2.ApplyServiceRequest(spec="x" * (5 * 1024 * 1024)).SerializeToString()
    before_rev = revision(cluster)
    with rpc.channel(cluster.addr, cluster.tls) as channel:
        stub = channel.unary_unary("/shoal.v1.Shoal/ApplyService")
        assert code_of(lambda: stub(big, timeout=10))[0] is grpc.StatusCode.RESOURCE_EXHAUSTED  # warm up
        before = rss_kib(pid)
        for _ in range(20):
            assert code_of(lambda: stub(big, timeout=10))[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    after = rss_kib(pid)
    FIGURES["rss_growth_kib_after_20x5MiB"] = after - before
    assert after - before < 4 * 1024, f"RSS grew {after - before} KiB"
    assert writes_since(cluster, before_rev) == []
    assert healthy(cluster)


_SEED_STRINGS = [
    "", "sec", "web", "nope", "../etc", "a" * 63, "a" * 64, "-x-", "UPPER", "viewer", "admin", "deployer",
    "root", "aaaaaaaaaa", "shoal_", "\x00", "é" * 30, "x" * 5000, SERVICE, SERVICE.replace("0", "-1"),
    "name: fz\nimage: shoal-demo/web:1\nreplicas: 0\nenv: {A: 1}\nsecret_env: {A: 2}\n",
]  # fmt: skip


def _seed_bytes() -> list[bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = ca.make_csr(key, Identity("fuzz", Kind.CLIENT, "fz"))
    return [
        b"",
        b"\x00" * 10,
        csr,
        csr[:100],
        csr.replace(b"fuzz", b"fuzx"),
        b"-----BEGIN CERTIFICATE REQUEST-----",
    ]


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[Any]) -> Any:
    value = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, 3))):
        if not value:
            break
        at = draw(st.integers(0, len(value) - 1))
        edit = draw(st.sampled_from(["drop", "dup", "flip"]))
        if edit == "drop":
            value = value[:at] + value[at + 1 :]
        elif edit == "dup":
            value = value[:at] + value[at : at + 8] * 3 + value[at:]
        elif isinstance(value, str):
            value = value[:at] + chr(draw(st.integers(0, 0x2FF))) + value[at + 1 :]
        else:
            value = value[:at] + bytes([draw(st.integers(0, 255))]) + value[at + 1 :]
    return value


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        base: st.SearchStrategy[Any] = st.one_of(st.text(max_size=100), _mutated(_SEED_STRINGS))
    elif t == FieldDescriptor.TYPE_BYTES:
        base = st.one_of(st.binary(max_size=300), _mutated(_seed_bytes()))
    elif t == FieldDescriptor.TYPE_BOOL:
        base = st.booleans()
    elif t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        base = st.one_of(st.integers(0, 20), st.integers(0, 2**32 - 1))
    elif t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        base = st.one_of(st.integers(0, 20), st.integers(0, 2**64 - 1))
    elif t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_ENUM):
        base = st.integers(-(2**31), 2**31 - 1)
    elif t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        base = st.integers(-(2**63), 2**63 - 1)
    elif t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        base = st.floats(
            allow_nan=True, allow_infinity=True, width=32 if t == FieldDescriptor.TYPE_FLOAT else 64
        )
    elif t == FieldDescriptor.TYPE_MESSAGE and depth < 2:
        base = _message(field.message_type, depth + 1)
    else:
        return st.nothing()
    if field.is_repeated:
        return st.lists(base, max_size=4)
    return base


def _message(desc: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    cls = getattr(api_pb2, desc.name)
    if desc.GetOptions().map_entry:
        return st.nothing()
    fields = {
        f.name: _field(f, depth)
        for f in desc.fields
        if not (f.message_type and f.message_type.GetOptions().map_entry)
    }
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: cls(**values))


_SERVICE = api_pb2.DESCRIPTOR.services_by_name["Shoal"]
_METHODS = [m for m in _SERVICE.methods if not m.client_streaming]
_FUZZ = settings(
    max_examples=int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "40")),
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def _send(channel: grpc.Channel, method: Any, payload: bytes) -> grpc.StatusCode:
    path = f"/{_SERVICE.full_name}/{method.name}"
    if method.server_streaming:
        call = channel.unary_stream(path)(payload, timeout=0.5)
        try:
            for n, _ in enumerate(call):
                if n >= 20:
                    call.cancel()
                    break
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            return (
                grpc.StatusCode.OK
                if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
                else code
            )
        return grpc.StatusCode.OK
    try:
        channel.unary_unary(path)(payload, timeout=10)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def fuzz_channel(cluster: DevCluster) -> Iterator[grpc.Channel]:
    with rpc.channel(cluster.addr, cluster.tls) as channel:
        yield channel


def _fuzz_one(
    cluster: DevCluster, channel: grpc.Channel, method: Any, payloads: st.SearchStrategy[bytes]
) -> None:
    seen: dict[str, int] = {}

    @_FUZZ
    @given(payloads)
    def check(payload: bytes) -> None:
        code = _send(channel, method, payload)
        seen[code.name] = seen.get(code.name, 0) + 1
        assert code in ALLOWED, f"{method.name}: {code.name} for {payload[:200]!r}"

    check()
    assert healthy(cluster) and healthy(cluster, 2), f"a daemon stopped answering after {method.name}"
    counts = FIGURES.setdefault("fuzz_calls", {})
    for code, n in seen.items():
        counts[code] = counts.get(code, 0) + n


@pytest.mark.parametrize("method", _METHODS, ids=[m.name for m in _METHODS])
def test_fuzzing_every_request_message_gets_only_client_errors(
    cluster: DevCluster, fuzz_channel: grpc.Channel, method: Any
) -> None:
    _fuzz_one(cluster, fuzz_channel, method, _message(method.input_type).map(lambda m: m.SerializeToString()))


@pytest.mark.parametrize("method", _METHODS, ids=[m.name for m in _METHODS])
def test_random_bytes_as_payloads_get_only_client_errors(
    cluster: DevCluster, fuzz_channel: grpc.Channel, method: Any
) -> None:
    _fuzz_one(cluster, fuzz_channel, method, st.binary(max_size=400))


# -- certificate renewal -----------------------------------------------------------------------


def served_serial(member: Any, tls: rpc.ClientTls, scratch: Path) -> int:
    """The serial number of the certificate a node serves now (a fresh TLS handshake)."""
    (scratch / "c.pem").write_bytes(tls.cert_pem)
    (scratch / "k.pem").write_bytes(tls.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=tls.ca_pem.decode())
    context.load_cert_chain(scratch / "c.pem", scratch / "k.pem")
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(socket.create_connection((member.address, member.grpc_port), 5)) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_certificates_are_renewed_under_load_without_a_failed_call_or_restart(
    tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...], tmp_path: Path
) -> None:
    c = DevCluster(
        tmp_path_factory.mktemp("renewal"),
        nodes=2,
        grpc_port=free_port_on_all(HOSTS[:2]),
        metrics_port=free_port_on_all(HOSTS[:2]),
        etcd_port=free_port_pair(),
        cluster=f"t{uuid.uuid4().hex[:8]}",
        cert_lifetime=12,  # renewed every ~9 s
    )
    c.start()
    try:
        pids = [m.proc.pid for m in c.members]  # type: ignore[union-attr]
        first = [served_serial(m, c.tls, tmp_path) for m in c.members]
        failures: list[Exception] = []
        calls = [0, 0]
        stop = threading.Event()

        def traffic(i: int) -> None:
            kept = c.client(i)  # one long-lived connection, and a new one (handshake) every 10 calls
            try:
                while not stop.is_set():
                    try:
                        if calls[i - 1] % 10 == 0:
                            with c.client(i) as fresh:
                                fresh.list_nodes()
                        kept.list_services()
                        kept.list_nodes()
                    except Exception as exc:
                        failures.append(exc)
                    calls[i - 1] += 1
            finally:
                kept.close()

        def renewals(m: Any) -> int:
            return m.log_path.read_text().count("node certificate renewed")

        threads = [threading.Thread(target=traffic, args=(i,)) for i in (1, 2)]
        for t in threads:
            t.start()
        try:
            wait_until_sync(
                lambda: all(renewals(m) >= 2 for m in c.members),
                45,
                interval=0.5,
                message="two renewals each",
            )
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert failures == [], failures[:3]
        assert [m.proc.pid for m in c.members] == pids and all(m.alive() for m in c.members)  # type: ignore[union-attr]
        assert all(m.log_path.read_text().count("node.daemon.app: shoald ") == 1 for m in c.members)
        now = [served_serial(m, c.tls, tmp_path) for m in c.members]
        assert all(a != b for a, b in zip(first, now, strict=True))
        with c.client() as client:
            nodes = client.list_nodes().nodes
        assert {(n.id, n.status, n.member_state) for n in nodes} == {
            ("n1", "ready", "alive"),
            ("n2", "ready", "alive"),
        }
        FIGURES["renewal"] = {
            "calls": sum(calls),
            "failed": len(failures),
            "renewals": [renewals(m) for m in c.members],
        }
    finally:
        c.stop()


# -- etcd with TLS ----------------------------------------------------------------------------


def _pki(root: Path) -> dict[str, Path]:
    """A CA (not shoal's: etcd's PKI is the operator's), etcd's server certificate, a client's."""
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(
        subject: str, key: Any, issuer_key: Any, issuer: str, ca_: bool, usage: list[Any], ip: bool
    ) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca_, path_length=None), critical=True)
        )
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def pem(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    files = {
        "ca": cert("etcd test CA", ca_key, ca_key, "etcd test CA", True, [], False),
        "server": cert(
            "etcd", server_key, ca_key, "etcd test CA", False, [EKU.SERVER_AUTH, EKU.CLIENT_AUTH], True
        ),
        "server-key": pem(server_key),
        "client": cert("shoal", client_key, ca_key, "etcd test CA", False, [EKU.CLIENT_AUTH], False),
        "client-key": pem(client_key),
    }
    paths = {}
    for label, data in files.items():
        paths[label] = root / f"{label}.pem"
        paths[label].write_bytes(data)
        paths[label].chmod(0o600)
    return paths


def test_etcd_with_tls_and_client_certificates(tmp_path: Path, demo_images: tuple[str, ...]) -> None:
    pki = _pki(tmp_path)
    port = free_port_pair()
    url, peer = f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    log = (tmp_path / "etcd.log").open("ab")
    etcd = subprocess.Popen(
        [
            "etcd", "--name", "tls", "--data-dir", str(tmp_path / "etcd"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"tls={peer}",
            "--cert-file", str(pki["server"]), "--key-file", str(pki["server-key"]),
            "--trusted-ca-file", str(pki["ca"]), "--client-cert-auth",
        ],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    endpoint = f"127.0.0.1:{port}"
    with_cert = read_etcd_tls(str(pki["ca"]), str(pki["client"]), str(pki["client-key"]))

    async def roundtrip(tls: EtcdTls | None) -> bytes | None:
        store = EtcdStore([endpoint], timeout=2.0, tls=tls)
        await store.connect()
        try:
            await store.put("/tls-test/k", b"v")
            kv = await store.get("/tls-test/k")
            return kv.value if kv else None
        finally:
            await store.close()

    daemon: subprocess.Popen[bytes] | None = None
    vip_range = vipranges.free_vip_range(f"etls-{tmp_path.name}")
    try:
        wait_until_sync(
            lambda: asyncio.run(roundtrip(with_cert)) == b"v", 20, interval=0.2, message="etcd (TLS)"
        )
        for tls in (EtcdTls(with_cert.ca), None):  # no client certificate; no TLS at all
            with pytest.raises(StoreUnavailable):
                asyncio.run(roundtrip(tls))
        # A daemon on it: `shoal cluster init`, then shoald, both with the etcd TLS settings.
        grpc_port, data = free_port(), tmp_path / "node"
        etcd_flags = ["--etcd", endpoint, "--etcd-ca", str(pki["ca"]), "--etcd-cert", str(pki["client"]),
                      "--etcd-key", str(pki["client-key"])]  # fmt: skip
        common = [
            "--node-id",
            "e1",
            "--data-dir",
            str(data),
            "--grpc-port",
            str(grpc_port),
            "--cluster",
            "etls",
        ]
        # a VIP range of its own, not the default: a test leaves no route on the host's lo
        own_vips = ["--vip-range", vip_range]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        context_file = tmp_path / "context.json"
        init = subprocess.run(
            [sys.executable, "-m", "node.cli.main", "cluster", "init", *common, *etcd_flags,
             "--context-file", str(context_file)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        assert "SHOAL-1-" in init.stdout and "shoal_" not in init.stdout
        SECRETS.append(re.findall(r"SHOAL-1-\S+", init.stdout)[0])
        refused = subprocess.run(
            [sys.executable, "-m", "node.daemon", *common, *own_vips, "--metrics-port", "0", *etcd_flags[:4]],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 1 and "etcd unreachable" in refused.stderr, refused.stderr
        daemon = subprocess.Popen(
            [sys.executable, "-m", "node.daemon", *common, *own_vips, "--metrics-port", "0", *etcd_flags],
            stdout=(tmp_path / "e1.log").open("ab"), stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

        def answers() -> bool:
            with ShoalClient(f"127.0.0.1:{grpc_port}", timeout=2, context_file=context_file) as c:
                return any(n.id == "e1" and n.status == "ready" for n in c.list_nodes().nodes)

        wait_until_sync(answers, 30, interval=0.3, message="shoald on etcd with TLS")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        vipranges.release(vip_range)
        etcd.terminate()
        etcd.wait(20)


# -- the last word: nothing leaked ---------------------------------------------------------------


def test_no_token_or_key_in_the_logs_or_process_arguments(cluster: DevCluster) -> None:
    logs = {p: p.read_text(errors="replace") for p in cluster.data_dir.rglob("*.log")}
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert SECRETS  # the admin token and the join token at least
    for where, text in [*((str(p), t) for p, t in logs.items()), ("ps", ps)]:
        for secret in SECRETS:
            assert secret not in text, f"a token in {where}"
        assert _LEAK.search(text) is None, f"a key or token in {where}: {_LEAK.search(text)}"
    print(f"\nsecurity figures: {json.dumps(FIGURES)}")
