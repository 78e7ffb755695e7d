"""`AuthInterceptor` on a real grpc.aio server with mutual TLS on 127.0.0.1.

Who gets in and who does not: certificates (none, another CA's, expired, the wrong
kind), tokens (missing, malformed, unknown, wrong, revoked, expired, too weak a role),
the join certificate before and after a rotation. Every refusal is checked to have run
no handler, and no secret may show up in an error message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node.pb import api_pb2, api_pb2_grpc, peer_pb2, peer_pb2_grpc
from node.security import bootstrap
from node.security.auth import AuthInterceptor, Caller, MemoryCredentials, Policy, current_caller
from node.security.ca import ClusterCA, Identity, Kind
from node.security.tokens import ClientToken, Role, StoredToken
from node.wire import rpc

CLUSTER = "c1"
ADMIN_ONLY = "/shoal.v1.Admin/RotateJoinToken"  # not in the role table: admin-only
JOIN = "/shoal.v1.Peer/Join"
STREAMS = 3  # the servers' max_streams_per_token


def _raw(channel: grpc.aio.Channel, method: str) -> Any:
    """A byte-in, byte-out callable for `method` (no protobuf)."""
    return channel.unary_unary(method)


@dataclass
class Material:
    authority: ClusterCA
    credentials: MemoryCredentials
    server: bootstrap.Issued
    node: bootstrap.Issued
    client: bootstrap.Issued
    join: bootstrap.JoinSecrets
    tokens: dict[Role, ClientToken] = field(default_factory=dict)

    def tls(self, who: bootstrap.Issued, token: ClientToken | str | None = None) -> rpc.ClientTls:
        return rpc.ClientTls(self.authority.cert_pem, who.key, who.cert, str(token) if token else None)


def make_material() -> Material:
    authority, secrets = bootstrap.init_cluster(CLUSTER)
    credentials = MemoryCredentials(join_key=secrets.join.key_id)
    material = Material(
        authority,
        credentials,
        bootstrap.node_identity(authority, "n1", ["127.0.0.1"]),
        bootstrap.node_identity(authority, "n2", ["127.0.0.2"]),
        bootstrap.Issued(*authority.issue_key_and_cert(Identity(CLUSTER, Kind.CLIENT, "alice"))),
        secrets.join,
    )
    for role in Role:
        token, record = StoredToken.issue(role, f"{role} for tests")
        credentials.add(record)
        material.tokens[role] = token
    return material


class Shoal(api_pb2_grpc.ShoalServicer):
    def __init__(self, calls: list[tuple[str, Caller | None]]) -> None:
        self.calls = calls

    async def GetService(self, request: Any, context: Any) -> api_pb2.Service:
        self.calls.append(("GetService", current_caller()))
        return api_pb2.Service(name=request.name)

    async def ApplyService(self, request: Any, context: Any) -> api_pb2.ApplyServiceResponse:
        self.calls.append(("ApplyService", current_caller()))
        return api_pb2.ApplyServiceResponse(name="web", version=1, changed=True)

    async def WatchMembers(self, request: Any, context: Any) -> AsyncIterator[api_pb2.Member]:
        self.calls.append(("WatchMembers", current_caller()))
        for name in ("n1", "n2"):
            yield api_pb2.Member(node=name, state="alive")

    async def WatchResolve(self, request: Any, context: Any) -> AsyncIterator[api_pb2.ResolveResponse]:
        """An answer every 50 ms ("busy") or one and then silence ("quiet"); at most 30 s."""
        self.calls.append(("WatchResolve", current_caller()))
        for i in range(600):
            if request.name != "quiet" or i == 0:
                yield api_pb2.ResolveResponse(name=f"{request.name}-{i}")
            await asyncio.sleep(0.05)

    async def Exec(self, inputs: Any, context: Any) -> AsyncIterator[api_pb2.ExecOutput]:
        """As WatchResolve, "busy" or "quiet" from the first input's stdin."""
        self.calls.append(("Exec", current_caller()))
        name = (await anext(aiter(inputs))).stdin.decode()
        for i in range(600):
            if name != "quiet" or i == 0:
                yield api_pb2.ExecOutput(stdout=f"{name}-{i}".encode())
            await asyncio.sleep(0.05)


def _open_stream(channel: grpc.aio.Channel, method: str, name: str) -> Any:
    """A `WatchResolve` or an `Exec` (a bidi stream whose input stays open) answering as `name`."""
    stub = api_pb2_grpc.ShoalStub(channel)
    if method == "WatchResolve":
        return stub.WatchResolve(api_pb2.ResolveRequest(name=name))

    async def inputs() -> AsyncIterator[api_pb2.ExecInput]:
        yield api_pb2.ExecInput(stdin=name.encode())
        await asyncio.sleep(30)  # stdin open, as a terminal's

    return stub.Exec(inputs())


def _answer(message: Any) -> str:
    return message.name if isinstance(message, api_pb2.ResolveResponse) else message.stdout.decode()


class Peer(peer_pb2_grpc.PeerServicer):
    def __init__(self, calls: list[tuple[str, Caller | None]]) -> None:
        self.calls = calls

    async def Ping(self, request: Any, context: Any) -> peer_pb2.PingResponse:
        self.calls.append(("Ping", current_caller()))
        return peer_pb2.PingResponse(node="n1", seq=request.seq, ack=True)

    async def Join(self, request: Any, context: Any) -> peer_pb2.JoinResponse:
        self.calls.append(("Join", current_caller()))
        return peer_pb2.JoinResponse(member="ok:" + request.csr.decode())


def _raw_handler(name: str, calls: list[tuple[str, Caller | None]]) -> grpc.RpcMethodHandler:
    async def behave(request: bytes, context: Any) -> bytes:
        calls.append((name, current_caller()))
        return b"ok:" + request

    return grpc.unary_unary_rpc_method_handler(behave, lambda b: b, lambda b: b)


@dataclass
class Running:
    port: int
    calls: list[tuple[str, Caller | None]]
    material: Material

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self, tls: rpc.ClientTls) -> grpc.aio.Channel:
        return rpc.aio_channel(self.target, tls)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    material = make_material()
    calls: list[tuple[str, Caller | None]] = []
    policy = Policy(CLUSTER, max_streams_per_token=STREAMS)
    server = rpc.server(interceptors=[AuthInterceptor(material.credentials, policy)])
    api_pb2_grpc.add_ShoalServicer_to_server(Shoal(calls), server)
    peer_pb2_grpc.add_PeerServicer_to_server(Peer(calls), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "shoal.v1.Admin", {"RotateJoinToken": _raw_handler("Rotate", calls)}
            ),
        )
    )
    tls = rpc.ServerTls(material.authority.cert_pem, material.server.key, material.server.cert)
    port = rpc.bind(server, "127.0.0.1:0", tls)
    assert port
    await server.start()
    try:
        yield Running(port, calls, material)
    finally:
        await server.stop(None)


async def _get(channel: grpc.aio.Channel, metadata: Any = None) -> api_pb2.Service:
    stub = api_pb2_grpc.ShoalStub(channel)
    response: api_pb2.Service = await stub.GetService(
        api_pb2.GetServiceRequest(name="web"), timeout=5, metadata=metadata
    )
    return response


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


# ---------------------------------------------------------------- certificates (the handshake)


async def test_a_client_without_a_certificate_fails_the_handshake(running: Running) -> None:
    creds = grpc.ssl_channel_credentials(running.material.authority.cert_pem)
    async with grpc.aio.secure_channel(running.target, creds) as channel:
        code, _ = await _code(
            _get(channel, (("authorization", f"Bearer {running.material.tokens[Role.ADMIN]}"),))
        )
    assert code is grpc.StatusCode.UNAVAILABLE
    assert running.calls == []


async def test_a_certificate_from_another_ca_fails_the_handshake(running: Running) -> None:
    other = ClusterCA.create(CLUSTER)
    key, cert = other.issue_key_and_cert(Identity(CLUSTER, Kind.CLIENT, "alice"))
    tls = rpc.ClientTls(
        running.material.authority.cert_pem, key, cert, str(running.material.tokens[Role.ADMIN])
    )
    async with running.channel(tls) as channel:
        code, _ = await _code(_get(channel))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert running.calls == []


async def test_an_expired_certificate_fails_the_handshake(running: Running) -> None:
    past = datetime.now(UTC) - timedelta(days=2)
    key, cert = running.material.authority.issue_key_and_cert(
        Identity(CLUSTER, Kind.CLIENT, "alice"), lifetime=timedelta(hours=1), now=past
    )
    tls = rpc.ClientTls(
        running.material.authority.cert_pem, key, cert, str(running.material.tokens[Role.ADMIN])
    )
    async with running.channel(tls) as channel:
        code, _ = await _code(_get(channel))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert running.calls == []


async def test_the_client_checks_the_servers_ip_san(running: Running) -> None:
    """The server's certificate names 127.0.0.1: a client that trusts the same CA but dials
    another address is refused, so a node certificate cannot be replayed on another host."""
    material = running.material
    async with rpc.aio_channel(
        f"localhost:{running.port}", material.tls(material.client, material.tokens[Role.ADMIN])
    ) as ch:
        code, _ = await _code(_get(ch))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert running.calls == []


async def test_a_server_certificate_of_another_ca_is_refused_by_the_client(running: Running) -> None:
    other = ClusterCA.create(CLUSTER)
    material = running.material
    tls = rpc.ClientTls(
        other.cert_pem, material.client.key, material.client.cert, str(material.tokens[Role.ADMIN])
    )
    async with running.channel(tls) as channel:
        code, _ = await _code(_get(channel))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert running.calls == []


# ---------------------------------------------------------------- tokens


async def test_a_valid_admin_token_works_and_the_handler_sees_the_caller(running: Running) -> None:
    material = running.material
    token = material.tokens[Role.ADMIN]
    async with running.channel(material.tls(material.client, token)) as channel:
        assert (await _get(channel)).name == "web"
        raw = await _raw(channel, ADMIN_ONLY)(b"x", timeout=5)
    assert raw == b"ok:x"
    assert [name for name, _ in running.calls] == ["GetService", "Rotate"]
    caller = running.calls[0][1]
    assert caller == Caller(Identity(CLUSTER, Kind.CLIENT, "alice"), token.id, Role.ADMIN)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "no token"),
        ("Bearer", "must be `Bearer"),
        ("Basic abc", "must be `Bearer"),
        ("Bearer not-a-token", "malformed"),
        ("Bearer SHOAL-1-" + "a" * 52 + "-" + "b" * 32, "join token"),
        # its own id: a new token in the id would differ between pytest-xdist workers
        pytest.param(f"Bearer {ClientToken.new()}", "not known", id="Bearer unknown-not known"),
    ],
)
async def test_missing_or_bad_tokens_are_unauthenticated(
    running: Running, header: str | None, expected: str
) -> None:
    material = running.material
    metadata = (("authorization", header),) if header else None
    async with running.channel(material.tls(material.client)) as channel:
        code, details = await _code(_get(channel, metadata))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert expected in details
    assert running.calls == []


async def test_a_wrong_secret_is_unauthenticated_and_never_echoed(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    material = running.material
    real = material.tokens[Role.ADMIN]
    forged = replace(real, secret=ClientToken.new().secret)
    async with running.channel(material.tls(material.client, forged)) as channel:
        code, details = await _code(_get(channel))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert f"token {real.id}" in details and "wrong" in details
    assert forged.secret not in details and forged.secret not in caplog.text
    assert real.id in caplog.text  # the id, and only the id, is what the log names
    assert running.calls == []


async def test_a_revoked_token_is_unauthenticated(running: Running) -> None:
    material = running.material
    token = material.tokens[Role.DEPLOYER]
    async with running.channel(material.tls(material.client, token)) as channel:
        await _get(channel)
        material.credentials.revoke(token.id)
        code, details = await _code(_get(channel))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert f"token {token.id} was revoked" in details
    assert len(running.calls) == 1


async def test_an_expired_token_is_unauthenticated(running: Running) -> None:
    material = running.material
    token, record = StoredToken.issue(Role.ADMIN, expires=datetime.now(UTC) - timedelta(seconds=1))
    material.credentials.add(record)
    async with running.channel(material.tls(material.client, token)) as channel:
        code, details = await _code(_get(channel))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in details
    assert running.calls == []


async def test_a_viewer_cannot_apply(running: Running) -> None:
    material = running.material
    async with running.channel(material.tls(material.client, material.tokens[Role.VIEWER])) as channel:
        stub = api_pb2_grpc.ShoalStub(channel)
        code, details = await _code(
            stub.ApplyService(api_pb2.ApplyServiceRequest(spec="name: web"), timeout=5)
        )
        assert (await _get(channel)).name == "web"  # but it can read
        members = [m.node async for m in stub.WatchMembers(api_pb2.WatchMembersRequest(), timeout=5)]
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "role viewer" in details and "ApplyService" in details and "deployer" in details
    assert [name for name, _ in running.calls] == ["GetService", "WatchMembers"]
    assert members == ["n1", "n2"]


async def test_a_deployer_applies_but_cannot_call_admin_methods(running: Running) -> None:
    material = running.material
    async with running.channel(material.tls(material.client, material.tokens[Role.DEPLOYER])) as channel:
        stub = api_pb2_grpc.ShoalStub(channel)
        applied = await stub.ApplyService(api_pb2.ApplyServiceRequest(spec="name: web"), timeout=5)
        code, details = await _code(_raw(channel, ADMIN_ONLY)(b"x", timeout=5))
    assert applied.changed
    assert code is grpc.StatusCode.PERMISSION_DENIED and "needs admin" in details
    assert [name for name, _ in running.calls] == ["ApplyService"]


async def test_an_unreachable_credential_store_fails_closed(running: Running) -> None:
    material = running.material
    material.credentials.unavailable = True
    async with running.channel(material.tls(material.client, material.tokens[Role.ADMIN])) as channel:
        code, _ = await _code(_get(channel))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert running.calls == []


async def test_a_refused_request_is_never_parsed(running: Running) -> None:
    """Garbage bytes without a token: refused as unauthenticated, not as a bad message."""
    material = running.material
    async with running.channel(material.tls(material.client)) as channel:
        call = _raw(channel, "/shoal.v1.Shoal/GetService")(b"\xff\xff\xff", timeout=5)
        code, _ = await _code(call)
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_a_malformed_request_after_auth_is_invalid_argument(running: Running) -> None:
    material = running.material
    async with running.channel(material.tls(material.client, material.tokens[Role.ADMIN])) as channel:
        call = _raw(channel, "/shoal.v1.Shoal/GetService")(b"\xff\xff\xff", timeout=5)
        code, _ = await _code(call)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert running.calls == []


# ---------------------------------------------------------------- node, client and join certificates


async def test_the_peer_api_needs_a_node_certificate(running: Running) -> None:
    material = running.material
    request = peer_pb2.PingRequest(from_node="n2", seq=7)
    async with running.channel(material.tls(material.node)) as channel:
        pong = await peer_pb2_grpc.PeerStub(channel).Ping(request, timeout=5)
    async with running.channel(material.tls(material.client, material.tokens[Role.ADMIN])) as channel:
        code, details = await _code(peer_pb2_grpc.PeerStub(channel).Ping(request, timeout=5))
    assert pong.seq == 7
    assert code is grpc.StatusCode.PERMISSION_DENIED and "node certificate" in details
    assert [(name, caller.identity if caller else None) for name, caller in running.calls] == [
        ("Ping", Identity(CLUSTER, Kind.NODE, "n2"))
    ]


async def test_a_node_certificate_cannot_call_admin_methods_even_with_an_admin_token(
    running: Running,
) -> None:
    material = running.material
    async with running.channel(material.tls(material.node, material.tokens[Role.ADMIN])) as channel:
        code, details = await _code(_raw(channel, ADMIN_ONLY)(b"x", timeout=5))
        assert (await _get(channel)).name == "web"  # reads with a token are fine
    assert code is grpc.StatusCode.PERMISSION_DENIED and "node certificate cannot call admin" in details
    assert [name for name, _ in running.calls] == ["GetService"]


async def test_health_answers_node_and_client_certificates_without_a_token(running: Running) -> None:
    material = running.material
    for who in (material.node, material.client):
        async with running.channel(material.tls(who)) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_watch_answers_serving(running: Running) -> None:
    """The stock health servicer's Watch writes with context.write and yields nothing:
    the malformed-request guard iterated it anyway, and Watch answered UNKNOWN."""
    material = running.material
    async with running.channel(material.tls(material.node)) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5)
        answer = await call.read()
        call.cancel()
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_join_certificate_calls_join_only_until_the_token_rotates(running: Running) -> None:
    material = running.material
    attempt = bootstrap.prepare_join(
        material.join.token, CLUSTER, "n3", material.authority.cert_pem, material.join.cert
    )
    async with running.channel(attempt.tls) as channel:
        answer = await peer_pb2_grpc.PeerStub(channel).Join(peer_pb2.JoinRequest(csr=b"csr"), timeout=5)
        assert answer.member == "ok:csr"
        code, details = await _code(
            _get(channel, (("authorization", f"Bearer {material.tokens[Role.ADMIN]}"),))
        )
        assert code is grpc.StatusCode.PERMISSION_DENIED and "join certificate can only call" in details
        code, _ = await _code(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        )
        assert code is grpc.StatusCode.PERMISSION_DENIED
        material.credentials.join_key = bootstrap.new_join_token(material.authority).key_id  # rotate
        code, details = await _code(_raw(channel, JOIN)(b"csr", timeout=5))
    assert code is grpc.StatusCode.UNAUTHENTICATED and "rotated" in details
    assert [name for name, _ in running.calls] == ["Join"]


async def test_join_needs_the_join_certificate(running: Running) -> None:
    material = running.material
    async with running.channel(material.tls(material.node)) as channel:
        code, details = await _code(_raw(channel, JOIN)(b"csr", timeout=5))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "join token's certificate" in details
    assert running.calls == []


async def test_no_secret_reaches_a_message_or_the_log(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    material = running.material
    details: list[str] = []
    viewer = material.tokens[Role.VIEWER]
    material.credentials.revoke(material.tokens[Role.DEPLOYER].id)
    for token in (viewer, material.tokens[Role.DEPLOYER], replace(viewer, secret=ClientToken.new().secret)):
        async with running.channel(material.tls(material.client, token)) as channel:
            stub = api_pb2_grpc.ShoalStub(channel)
            details.append(
                (await _code(stub.ApplyService(api_pb2.ApplyServiceRequest(spec="x"), timeout=5)))[1]
            )
    text = "\n".join(details) + caplog.text
    for token in material.tokens.values():
        assert token.secret not in text
    assert material.client.key.decode() not in text


async def test_the_interceptor_on_a_plaintext_port_refuses_everything() -> None:
    """Misconfigured without TLS, the server fails closed rather than open."""
    material = make_material()
    calls: list[tuple[str, Caller | None]] = []
    policy = Policy(CLUSTER, max_streams_per_token=STREAMS)
    server = rpc.server(interceptors=[AuthInterceptor(material.credentials, policy)])
    api_pb2_grpc.add_ShoalServicer_to_server(Shoal(calls), server)
    port = rpc.bind(server, "127.0.0.1:0")
    await server.start()
    try:
        token = material.tokens[Role.ADMIN]
        async with rpc.aio_channel(f"127.0.0.1:{port}") as channel:
            code, details = await _code(_get(channel, (("authorization", f"Bearer {token}"),)))
    finally:
        await server.stop(None)
    assert code is grpc.StatusCode.UNAUTHENTICATED and "no client certificate" in details
    assert calls == []


# ---------------------------------------------------------------- streams (issue 11, 12 and 15b)


async def _stream_ends(call: Any, deadline: float) -> tuple[grpc.StatusCode, str, int]:
    """Read `call` until it ends; (its status, details, messages read after the start)."""
    got = 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(deadline):
            while await call.read() is not grpc.aio.EOF:
                got += 1
    return info.value.code(), info.value.details() or "", got


@pytest.mark.parametrize("method", ["WatchResolve", "Exec"])
@pytest.mark.parametrize("name", ["busy", "quiet"])
async def test_a_stream_of_a_revoked_token_is_closed(running: Running, method: str, name: str) -> None:
    """An Exec session (a bidi stream) was never checked again: it went on after its
    token was revoked or expired, until the client hung up."""
    material = running.material
    token, record = StoredToken.issue(Role.DEPLOYER, "to revoke")
    material.credentials.add(record)
    async with running.channel(material.tls(material.client, token)) as channel:
        call = _open_stream(channel, method, name)
        assert _answer(await call.read()) == f"{name}-0"
        material.credentials.revoke(token.id)
        code, details, after = await _stream_ends(call, 5.0)
    assert code is grpc.StatusCode.UNAUTHENTICATED and f"token {token.id} was revoked" in details
    assert after <= 1  # at most one answer was already on its way


@pytest.mark.parametrize("method", ["WatchResolve", "Exec"])
async def test_a_stream_of_a_token_that_expires_is_closed(running: Running, method: str) -> None:
    material = running.material
    token, record = StoredToken.issue(Role.DEPLOYER, expires=datetime.now(UTC) + timedelta(seconds=1.5))
    material.credentials.add(record)
    async with running.channel(material.tls(material.client, token)) as channel:
        call = _open_stream(channel, method, "quiet")
        code, details, _ = await _stream_ends(call, 6.0)
    assert code is grpc.StatusCode.UNAUTHENTICATED and "expired" in details


async def test_exec_sessions_count_toward_a_tokens_streams(running: Running) -> None:
    """Exec sessions were not counted: one token could hold any number of them open."""
    material = running.material
    async with running.channel(material.tls(material.client, material.tokens[Role.DEPLOYER])) as channel:
        held = [_open_stream(channel, "Exec", "quiet") for _ in range(STREAMS)]
        for call in held:
            assert _answer(await call.read()) == "quiet-0"
        code, details, _ = await _stream_ends(_open_stream(channel, "Exec", "quiet"), 5.0)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams_per_token" in details
        for call in held:
            call.cancel()


async def test_streams_are_bounded_per_token(running: Running) -> None:
    material = running.material
    mine, theirs = material.tokens[Role.VIEWER], material.tokens[Role.DEPLOYER]
    async with (
        running.channel(material.tls(material.client, mine)) as channel,
        running.channel(material.tls(material.client, theirs)) as other,
    ):
        stub = api_pb2_grpc.ShoalStub(channel)
        held = [stub.WatchResolve(api_pb2.ResolveRequest(name="quiet")) for _ in range(STREAMS)]
        for call in held:
            await call.read()
        extra = stub.WatchResolve(api_pb2.ResolveRequest(name="quiet"))
        code, details, _ = await _stream_ends(extra, 5.0)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"token {mine.id} has {STREAMS} streams open" in details and "max_streams_per_token" in details
        other_call = api_pb2_grpc.ShoalStub(other).WatchResolve(api_pb2.ResolveRequest(name="quiet"))
        assert (await other_call.read()).name == "quiet-0"  # another token is not affected
        held[0].cancel()

        async def reopened() -> bool:
            again = stub.WatchResolve(api_pb2.ResolveRequest(name="quiet"))
            try:
                return (await again.read()).name == "quiet-0"
            except grpc.aio.AioRpcError:
                return False
            finally:
                again.cancel()

        deadline = asyncio.get_running_loop().time() + 5
        while not await reopened():  # the cancelled stream's slot comes back
            assert asyncio.get_running_loop().time() < deadline, "slot never freed"
            await asyncio.sleep(0.05)
        for call in [*held, other_call]:
            call.cancel()
