"""`node.security.join_uses` on the in-memory store: a running node id never, a node id once
per token, at most `max_uses` hosts, exact under concurrency, cleared by a rotation
(issue 11, items 12 and 15c)."""

from __future__ import annotations

import asyncio

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from node.api.admin import Signer
from node.api.join import JoinHandler
from node.model.domain import NodeInfo
from node.model.errors import Conflict, FailedPrecondition, InvalidArgument
from node.model.keys import Keys
from node.pb import peer_pb2
from node.security import bootstrap, ca, join_uses
from node.security.ca import Identity, Kind, Lifetimes
from node.security.cluster import ClusterSecurity
from node.store.memory import MemoryStore

KEYS = Keys("/j/")


async def _cluster() -> tuple[MemoryStore, ClusterSecurity, bytes]:
    store = MemoryStore()
    security = ClusterSecurity(store, KEYS, "unit", Lifetimes())
    _, secrets, _ = await security.initialise()
    return store, security, secrets.ca_passphrase


async def _use(store: MemoryStore, security: ClusterSecurity, node: str, max_uses: int = 3) -> int:
    record, mod = await security.join_record()
    return await join_uses.record_join(store, KEYS, record.key_id, mod, node, ["10.0.0.1"], "n1", max_uses)


async def test_uses_are_bounded_and_a_node_id_joins_once() -> None:
    store, security, _ = await _cluster()
    assert [await _use(store, security, f"h{i}") for i in range(3)] == [1, 2, 3]
    with pytest.raises(FailedPrecondition, match=r"admitted 3 hosts, its bound \(join_token_uses = 3\)"):
        await _use(store, security, "h4")
    with pytest.raises(FailedPrecondition, match="'h1' already joined with this join token"):
        await _use(store, security, "h1", max_uses=10)
    assert await store.get(KEYS.join_use((await security.join_record())[0].key_id, "h4")) is None


async def test_a_running_node_id_is_never_granted() -> None:
    store, security, _ = await _cluster()
    await store.put(KEYS.node("n1"), NodeInfo("n1", "10.0.0.1", 7070).to_json())
    with pytest.raises(FailedPrecondition, match="'n1' is running"):
        await _use(store, security, "n1")
    kvs, _ = await store.range(KEYS.joins)
    assert kvs == []  # a refused join records nothing


async def test_concurrent_joins_count_exactly() -> None:
    store, security, _ = await _cluster()
    results = await asyncio.gather(
        *(_use(store, security, f"c{i % 4}", max_uses=3) for i in range(12)), return_exceptions=True
    )
    won = sorted(r for r in results if isinstance(r, int))
    assert won == [1, 2, 3]  # three hosts, each id at most once, never a fourth
    assert all(isinstance(r, (FailedPrecondition, Conflict)) for r in results if not isinstance(r, int))


async def test_a_rotation_clears_the_uses_and_fences_a_join_in_flight() -> None:
    store, security, passphrase = await _cluster()
    await _use(store, security, "h1")
    record, mod = await security.join_record()
    await security.rotate_join_token(passphrase)
    kvs, _ = await store.range(KEYS.joins)
    assert kvs == []
    with pytest.raises(Conflict, match="rotated while this host joined"):
        await join_uses.record_join(store, KEYS, record.key_id, mod, "h2", ["10.0.0.2"], "n1", 3)
    assert await _use(store, security, "h1") == 1  # the new token admits h1 again


class _Context:
    """The part of a grpc ServicerContext the join handler reads: the caller's certificate."""

    def __init__(self, cert_pem: bytes) -> None:
        self.cert_pem = cert_pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.cert_pem]}


async def test_a_join_admitted_just_before_a_rotation_is_refused_and_records_nothing() -> None:
    """The auth check let the old join certificate in; the token is rotated before the handler
    reads `security/join`: the handler refuses it (no certificate, no use recorded)."""
    store, security, passphrase = await _cluster()
    ca_pem, old_cert = await security.join_material()
    old_token = await security.join_token(passphrase)
    await security.rotate_join_token(passphrase)
    attempt = bootstrap.prepare_join(old_token, "unit", "h9", ca_pem, old_cert)
    handler = JoinHandler(store, KEYS, "n1", Signer(security, lambda: passphrase, Lifetimes()))
    request = peer_pb2.JoinRequest(csr=attempt.csr, addresses=["10.0.0.9"])
    with pytest.raises(FailedPrecondition, match="rotated meanwhile"):
        await handler.join(request, _Context(old_cert))  # type: ignore[arg-type]
    assert (await store.range(KEYS.joins))[0] == []
    current_cert = (await security.join_material())[1]
    new = bootstrap.prepare_join(await security.join_token(passphrase), "unit", "h9", ca_pem, current_cert)
    answer = await handler.join(
        peer_pb2.JoinRequest(csr=new.csr, addresses=["10.0.0.9"]),
        _Context(current_cert),  # type: ignore[arg-type]
    )
    assert answer.certificate and answer.member == "n1"


async def test_a_join_whose_answer_was_lost_is_granted_again_for_the_same_key_only() -> None:
    """A member commits the use and dies before answering (or answers after the caller's
    deadline): the host asks the next member with the same CSR and gets its certificate,
    without a second use; another key for that node id is still a replay, refused."""
    store, security, passphrase = await _cluster()
    ca_pem, join_cert = await security.join_material()
    token = await security.join_token(passphrase)
    attempt = bootstrap.prepare_join(token, "unit", "h5", ca_pem, join_cert)
    request = peer_pb2.JoinRequest(csr=attempt.csr, addresses=["10.0.0.5"])
    signer = Signer(security, lambda: passphrase, Lifetimes())
    first = JoinHandler(store, KEYS, "n1", signer, max_uses=3)
    await first.join(request, _Context(join_cert))  # type: ignore[arg-type]  # the answer is lost
    second = JoinHandler(store, KEYS, "n2", signer, max_uses=3)
    answer = await second.join(request, _Context(join_cert))  # type: ignore[arg-type]
    identity = Identity("unit", Kind.NODE, "h5")
    bootstrap.accept_certificate(ca_pem, attempt.key, answer.certificate, identity)
    key_id = (await security.join_record())[0].key_id
    assert (await store.get(KEYS.join_uses(key_id))).value == b"1"  # type: ignore[union-attr]
    other = bootstrap.prepare_join(token, "unit", "h5", ca_pem, join_cert)  # a new key: a replay
    with pytest.raises(FailedPrecondition, match="'h5' already joined with this join token"):
        await second.join(
            peer_pb2.JoinRequest(csr=other.csr, addresses=["10.0.0.5"]),
            _Context(join_cert),  # type: ignore[arg-type]
        )


async def test_a_join_with_a_malformed_csr_is_invalid_argument_and_records_nothing() -> None:
    store, security, passphrase = await _cluster()
    _, join_cert = await security.join_material()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h7")]))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\x86\x01\xff"),
            critical=False,
        )
        .sign(ca.new_private_key(), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    handler = JoinHandler(store, KEYS, "n1", Signer(security, lambda: passphrase, Lifetimes()))
    with pytest.raises(InvalidArgument, match="csr: the certificate request's extensions are malformed"):
        await handler.join(peer_pb2.JoinRequest(csr=csr, addresses=["10.0.0.7"]), _Context(join_cert))  # type: ignore[arg-type]
    assert (await store.range(KEYS.joins))[0] == []
