"""The admin calls and the join call on a node in this process, and the CLI driving them.

A real `ShoalServicer` and `PeerServicer` (with the admin handlers and the join
handler), behind mutual TLS and the auth interceptor, on `MemoryStore`; the server
runs on its own event loop thread so the blocking CLI and client can call it.
`shoal cluster init` runs against the session's real etcd.
"""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

from node.api.admin import Signer
from node.api.gossip_transport import PeerServicer
from node.api.join import JoinHandler
from node.api.servicer import ShoalServicer
from node.cli.main import cli
from node.model.domain import NodeInfo
from node.model.keys import Keys
from node.pb import api_pb2_grpc, peer_pb2, peer_pb2_grpc
from node.security import bootstrap, ca, context, provision
from node.security.auth import AuthInterceptor, Policy
from node.security.ca import ClusterCA, Identity, Kind, Lifetimes
from node.security.cluster import ClusterSecurity
from node.security.credentials import EtcdCredentials
from node.security.sealing import Sealer
from node.security.tokens import JoinToken
from node.store.memory import MemoryStore
from node.wire import rpc
from node.wire.client import InvalidArgument, NotFound, PermissionDenied, ShoalClient, Unauthenticated

KEYS = Keys("/t/")
CLUSTER = "unit"


@dataclass
class Node:
    addr: str
    loop: asyncio.AbstractEventLoop
    store: MemoryStore
    authority: ClusterCA
    passphrase: bytes
    admin_file: Path

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def shoal(self, *args: str, context_file: Path | None = None) -> Result:
        env = {
            "SHOAL_CONTEXT_FILE": str(context_file or self.admin_file),
            "SHOAL_TOKEN": "",
            "SHOAL_ADDR": "",
        }
        return CliRunner(env=env).invoke(cli, ["--addr", self.addr, *args])

    def client(self, context_file: Path | None = None) -> ShoalClient:
        return ShoalClient(self.addr, timeout=5, context_file=context_file or self.admin_file)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ready: Future[Node] = Future()
    stop = asyncio.Event()
    admin_file = tmp_path_factory.mktemp("admin") / "context.json"

    async def serve() -> None:
        store = MemoryStore()
        security = ClusterSecurity(store, KEYS, CLUSTER, Lifetimes())
        authority, secrets, admin = await security.initialise()
        credentials = EtcdCredentials(store, KEYS)
        mirrors = asyncio.create_task(credentials.run())
        signer = Signer(security, lambda: secrets.ca_passphrase, Lifetimes(), credentials)
        servicer = ShoalServicer(store, KEYS, "n1")
        servicer.signer = signer
        servicer.writer.objects.sealer = Sealer(signer.passphrase)
        joins = JoinHandler(store, KEYS, "n1", signer)
        identity = bootstrap.node_identity(authority, "n1", ["127.0.0.1"])
        server = rpc.server([AuthInterceptor(credentials, Policy(CLUSTER))])
        api_pb2_grpc.add_ShoalServicer_to_server(servicer, server)
        peer_pb2_grpc.add_PeerServicer_to_server(PeerServicer(None, joins.join), server)  # type: ignore[arg-type]
        port = rpc.bind(server, "127.0.0.1:0", rpc.ServerTls(authority.cert_pem, identity.key, identity.cert))
        await server.start()
        addr = f"127.0.0.1:{port}"
        context.save_context(CLUSTER, provision.admin_context(addr, authority, admin), admin_file)
        ready.set_result(Node(addr, loop, store, authority, secrets.ca_passphrase, admin_file))
        await stop.wait()
        await server.stop(None)
        mirrors.cancel()

    done = asyncio.run_coroutine_threadsafe(serve(), loop)
    try:
        yield ready.result(10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        done.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def error(result: Result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_token_create_writes_a_context_file_for_its_user(node: Node, tmp_path: Path) -> None:
    path = tmp_path / "ci.json"
    out = ok(node.shoal("token", "create", "--role", "viewer", "--description", "CI bot", "-f", str(path)))
    assert f"credentials are in {path}" in out and "shoal_" not in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    made = context.resolve(env={}, path=path)
    assert made.endpoint == node.addr and made.token.startswith("shoal_")
    assert ca.identity_of(ca.load_cert(made.cert.encode())) == Identity(CLUSTER, Kind.CLIENT, "ci-bot")
    assert json.loads(ok(node.shoal("service", "ls", "-o", "json", context_file=path))) == []
    message = error(node.shoal("token", "ls", context_file=path))
    assert "role viewer" in message and "ask an admin" in message
    listed = json.loads(ok(node.shoal("token", "ls", "-o", "json")))
    mine = [t for t in listed if t["description"] == "CI bot"]
    assert len(mine) == 1 and mine[0]["role"] == "viewer" and not mine[0]["revoked"]
    assert made.token not in json.dumps(listed) and made.token.split("_")[2] not in json.dumps(listed)
    assert ok(node.shoal("token", "revoke", mine[0]["id"])) == f"token {mine[0]['id']} (viewer) revoked\n"
    assert "was revoked" in error(node.shoal("service", "ls", context_file=path))
    (row,) = [line for line in ok(node.shoal("token", "ls")).splitlines() if line.startswith(mine[0]["id"])]
    assert row.split()[4].startswith("20")  # REVOKED: when


def test_token_create_can_print_the_context_and_expire(node: Node) -> None:
    out = ok(node.shoal("token", "create", "--role", "deployer", "--expires-in", "1h", "-f", "-"))
    data = json.loads(out)
    (made,) = data["contexts"].values()
    assert made["token"].startswith("shoal_") and "PRIVATE KEY" in made["key"]
    with node.client() as admin:
        (info,) = [t for t in admin.list_tokens() if made["token"].split("_")[1] == t.id]
    assert info.role == "deployer" and info.expires > info.created
    assert (
        "not a duration" in node.shoal("token", "create", "--role", "viewer", "--expires-in", "soon").stderr
    )


def test_join_token_shown_and_rotated_by_the_cli(node: Node) -> None:
    first = ok(node.shoal("cluster", "join-token")).strip()
    JoinToken.parse(first).check_ca(node.authority.fingerprint)
    rotated = node.shoal("cluster", "rotate-token")
    assert rotated.exit_code == 0 and "old one no longer works" in rotated.stderr
    second = rotated.stdout.strip()
    assert second != first and ok(node.shoal("cluster", "join-token")).strip() == second


def test_admin_calls_validate_every_field(node: Node) -> None:
    with node.client() as admin:
        for kwargs, fragment in [
            ({"role": "root"}, "unknown role"),
            ({"role": "viewer", "description": "x" * 201}, "description"),
            ({"role": "viewer", "description": "a\nb"}, "control characters"),
            ({"role": "viewer", "expires_in": 10**12}, "expires_in"),
            ({"role": "viewer", "csr": b"junk"}, "csr"),
            ({"role": "viewer", "csr": b"x" * 20_000}, "csr"),
        ]:
            with pytest.raises(InvalidArgument, match=fragment):
                admin.create_token(**kwargs)
        node_csr = ca.make_csr(ca.new_private_key(), Identity(CLUSTER, Kind.NODE, "n9"))
        with pytest.raises(InvalidArgument, match="client/<name>"):
            admin.create_token("viewer", csr=node_csr)
        with pytest.raises(InvalidArgument, match="not a token id"):
            admin.revoke_token("../../x")
        with pytest.raises(NotFound):
            admin.revoke_token("aaaaaaaaaa")


def test_calls_without_a_good_token_change_nothing(node: Node) -> None:
    made = context.resolve(env={}, path=node.admin_file)
    _, before = node.run(node.store.range(KEYS.prefix))
    for token in ("", "shoal_aaaaaaaaaa_" + "a" * 52, made.token[:-1] + "b"):
        tls = rpc.ClientTls(made.ca.encode(), made.key.encode(), made.cert.encode(), token or None)
        with ShoalClient(node.addr, tls=tls) as c, pytest.raises(Unauthenticated):
            c.create_token("admin")
    _, after = node.run(node.store.range(KEYS.prefix))
    assert after == before


def _join(node: Node, node_id: str, addresses: list[str], token: str | None = None) -> Any:
    async def read() -> tuple[bytes, bytes, str]:
        security = ClusterSecurity(node.store, KEYS, CLUSTER)
        ca_pem, join_cert = await security.join_material()
        return ca_pem, join_cert, str(await security.join_token(node.passphrase))

    ca_pem, join_cert, current = node.run(read())
    attempt = bootstrap.prepare_join(token or current, CLUSTER, node_id, ca_pem, join_cert)
    with rpc.channel(node.addr, attempt.tls) as channel:
        request = peer_pb2.JoinRequest(csr=attempt.csr, addresses=addresses)
        answer = peer_pb2_grpc.PeerStub(channel).Join(request, timeout=5)
    return attempt, answer, ca_pem


def test_a_join_signs_a_node_certificate_and_hands_over_the_passphrase(node: Node) -> None:
    attempt, answer, ca_pem = _join(node, "n7", ["127.0.0.7"])
    bootstrap.accept_certificate(ca_pem, attempt.key, answer.certificate, Identity(CLUSTER, Kind.NODE, "n7"))
    assert (
        answer.ca_certificate == ca_pem and answer.ca_passphrase == node.passphrase and answer.member == "n1"
    )


def test_a_join_cannot_take_a_live_nodes_name_or_ask_for_odd_things(node: Node) -> None:
    info = NodeInfo("n8", "127.0.0.8", 7070)
    node.run(node.store.put(KEYS.node("n8"), info.to_json()))
    with pytest.raises(grpc.RpcError) as err:
        _join(node, "n8", ["127.0.0.99"])
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "already running at 127.0.0.8:7070" in err.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as err:  # issue 11, 15c: listing the node's address is no pass
        _join(node, "n8", ["127.0.0.99", "127.0.0.8"])
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    for addresses in ([], ["not-an-ip"], [f"10.0.0.{i}" for i in range(20)]):
        with pytest.raises(grpc.RpcError) as err:
            _join(node, "n6", addresses)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_a_join_token_admits_a_node_id_once_and_its_uses_are_recorded(node: Node) -> None:
    """Issue 11, 12 and 15c: the same token joined a node id again and again, silently."""
    _join(node, "n9", ["127.0.0.9"])
    with pytest.raises(grpc.RpcError) as err:
        _join(node, "n9", ["127.0.0.9"])  # a replay (the host is not registered yet)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "already joined with this join token" in err.value.details()  # type: ignore[attr-defined]
    assert "rotate-token" in err.value.details()  # type: ignore[attr-defined]
    kvs, _ = node.run(node.store.range(KEYS.joins))
    uses = {kv.key.rsplit("/", 1)[1]: json.loads(kv.value) for kv in kvs if kv.key.count("/") > 3}
    assert uses["n9"]["addresses"] == ["127.0.0.9"] and uses["n9"]["member"] == "n1"


def test_a_rotated_join_token_is_refused_by_the_member(node: Node) -> None:
    async def rotate() -> tuple[bytes, bytes, JoinToken]:
        security = ClusterSecurity(node.store, KEYS, CLUSTER)
        old = await security.join_token(node.passphrase)
        ca_pem, join_cert = await security.join_material()
        await security.rotate_join_token(node.passphrase)
        return ca_pem, join_cert, old

    ca_pem, old_cert, old = node.run(rotate())
    attempt = bootstrap.prepare_join(old, CLUSTER, "n5", ca_pem, old_cert)  # read before the rotation
    with rpc.channel(node.addr, attempt.tls) as channel, pytest.raises(grpc.RpcError) as err:
        peer_pb2_grpc.PeerStub(channel).Join(
            peer_pb2.JoinRequest(csr=attempt.csr, addresses=["1.2.3.4"]), timeout=5
        )
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert "rotated" in err.value.details()  # type: ignore[attr-defined]


def test_secret_env_values_are_masked_in_answers(node: Node) -> None:
    spec = "name: db\nimage: x:1\nreplicas: 0\nsecret_env: {PASSWORD: hunter2}\nenv: {USER: app}\n"
    with node.client() as c:
        c.apply(spec)
        shown = json.loads(c.get_service("db").spec_json)
        listed = [json.loads(s.spec_json) for s in c.list_services() if s.name == "db"]
    assert shown["secret_env"] == {"PASSWORD": "***"} and shown["env"] == {"USER": "app"}
    assert listed[0]["secret_env"] == {"PASSWORD": "***"}
    out = ok(node.shoal("service", "inspect", "db", "-o", "json"))
    assert "hunter2" not in out and '"PASSWORD": "***"' in out


def test_a_viewer_cannot_read_the_join_token(node: Node, tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    ok(node.shoal("token", "create", "--role", "viewer", "-f", str(path)))
    with node.client(path) as viewer, pytest.raises(PermissionDenied):
        viewer.join_token()
    with node.client(path) as viewer, pytest.raises(PermissionDenied):
        viewer.rotate_join_token()


def test_cluster_init_against_etcd(tmp_path: Path, etcd_endpoint: str, etcd_prefix: str) -> None:
    ctx = tmp_path / "admin.json"
    args = ["cluster", "init", "--etcd", etcd_endpoint, "--etcd-prefix", etcd_prefix, "--data-dir",
            str(tmp_path / "data"), "--node-id", "first", "--cluster", "prod", "--address", "10.1.2.3",
            "--context-file", str(ctx)]  # fmt: skip
    result = CliRunner(env={"SHOAL_CONFIG": ""}).invoke(cli, args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    token = result.stdout.strip().splitlines()[-1].strip()
    JoinToken.parse(token)
    assert "shoal_" not in result.stdout and str(ctx) in result.stdout
    made = context.resolve(env={}, path=ctx)
    assert made.endpoint == "10.1.2.3:7070" and made.token.startswith("shoal_")
    files = provision.NodeFiles.of(tmp_path / "data")
    _, _, cert = files.load()
    assert ca.identity_of(ca.load_cert(cert)) == Identity("prod", Kind.NODE, "first")
    assert (tmp_path / "data" / "node-id").read_text().strip() == "first"
    again = CliRunner(env={"SHOAL_CONFIG": ""}).invoke(cli, args)
    assert (
        again.exit_code == 1 and "already initialised" in again.stderr and len(again.stderr.splitlines()) == 1
    )
