"""The join certificate is renewed for the same token (`ClusterSecurity.renew_join_cert`):
when it is handed out (`join_token`) and when a member admits a host, once due as node
certificates are (2/3 of its lifetime) or expired; the token, its key id and its uses
stay. Without it, joins failed 365 days after the last `rotate-token`."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from node.api.admin import Signer
from node.api.join import JoinHandler
from node.model.keys import Keys
from node.pb import peer_pb2
from node.security import bootstrap, ca, join_uses
from node.security.ca import CertError, Lifetimes
from node.security.cluster import ClusterSecurity
from node.store.memory import MemoryStore
from tests.unit.test_security_join_uses import _Context

KEYS = Keys("/jc/")
DAY = timedelta(days=1)


async def _cluster() -> tuple[MemoryStore, ClusterSecurity, bytes]:
    store = MemoryStore()
    security = ClusterSecurity(store, KEYS, "unit", Lifetimes())
    _, secrets, _ = await security.initialise()
    return store, security, secrets.ca_passphrase


async def _issued_ago(store: MemoryStore, security: ClusterSecurity, passphrase: bytes, days: int) -> bytes:
    """Store a join certificate for the current token issued `days` ago (as after that long)."""
    authority = await security.load_ca(passphrase)
    token = await security.join_token(passphrase, now=datetime.now(UTC))  # not due: no renewal
    cert = bootstrap.join_certificate(authority, token, now=datetime.now(UTC) - days * DAY)
    record, _ = await security.join_record()
    await store.put(KEYS.join, replace(record, cert=cert).to_json())
    return cert


async def test_a_due_join_certificate_is_renewed_when_the_token_is_handed_out() -> None:
    store, security, passphrase = await _cluster()
    record, mod = await security.join_record()
    await join_uses.record_join(store, KEYS, record.key_id, mod, "h1", ["10.0.0.1"], "n1", 3)
    token = await security.join_token(passphrase)
    ca_pem = await security.ca_cert()
    later = datetime.now(UTC) + 300 * DAY  # past 2/3 of 365 days
    assert await security.join_token(passphrase, now=later) == token  # the same token
    renewed, _ = await security.join_record()
    assert renewed.cert != record.cert
    assert (renewed.key_id, renewed.sealed_token, renewed.since) == (
        record.key_id,
        record.sealed_token,
        record.since,
    )
    assert (await store.get(KEYS.join_use(record.key_id, "h1"))) is not None  # its uses kept
    # a year and more after the token was made, the same token still joins
    beyond = later + 200 * DAY
    with pytest.raises(CertError, match="join certificate expired"):
        bootstrap.prepare_join(token, "unit", "h2", ca_pem, record.cert, now=beyond)
    bootstrap.prepare_join(token, "unit", "h2", ca_pem, renewed.cert, now=beyond)


async def test_a_join_certificate_not_due_is_left_alone() -> None:
    store, security, passphrase = await _cluster()
    before = await store.get(KEYS.join)
    assert before is not None
    assert await security.renew_join_cert(passphrase) is False
    await security.join_token(passphrase)
    after = await store.get(KEYS.join)
    assert after is not None and after.mod_revision == before.mod_revision


async def test_an_expired_join_certificate_is_renewed_without_a_rotation() -> None:
    store, security, passphrase = await _cluster()
    old = await _issued_ago(store, security, passphrase, 400)
    token = await security.join_token(passphrase)
    ca_pem, cert = await security.join_material()
    assert cert != old and not ca.needs_renewal(ca.load_cert(cert))
    bootstrap.prepare_join(token, "unit", "h2", ca_pem, cert)
    assert await security.renew_join_cert(passphrase) is False  # done: not due again


async def test_a_member_renews_a_due_join_certificate_when_it_admits_a_host() -> None:
    store, security, passphrase = await _cluster()
    token = await security.join_token(passphrase)
    due = await _issued_ago(store, security, passphrase, 300)  # still valid, past 2/3
    before, _ = await security.join_record()
    attempt = bootstrap.prepare_join(token, "unit", "h9", await security.ca_cert(), due)
    handler = JoinHandler(store, KEYS, "n1", Signer(security, lambda: passphrase, Lifetimes()))
    answer = await handler.join(
        peer_pb2.JoinRequest(csr=attempt.csr, addresses=["10.0.0.9"]),
        _Context(due),  # type: ignore[arg-type]
    )
    assert answer.certificate
    record, _ = await security.join_record()
    assert record.cert != due and record.key_id == before.key_id
    assert not ca.needs_renewal(ca.load_cert(record.cert))
    assert await store.get(KEYS.join_use(record.key_id, "h9")) is not None


async def test_a_renewal_while_a_host_joins_does_not_refuse_it() -> None:
    """`record_join` fences on `security/join`: a rotation refuses the join in flight, a
    renewal of the same token's certificate does not."""
    store, security, passphrase = await _cluster()
    await _issued_ago(store, security, passphrase, 300)
    record, mod = await security.join_record()
    assert await security.renew_join_cert(passphrase) is True
    use = await join_uses.record_join(store, KEYS, record.key_id, mod, "h1", ["10.0.0.1"], "n1", 3)
    assert use == 1
