"""The cluster's security records in a store, the credential mirrors, and a node's certificate.

All on `MemoryStore` (the store contract test holds it to etcd's behaviour): init once,
the join token sealed under the CA passphrase, rotation, tokens created and revoked;
`EtcdCredentials` answering from its mirrors; `NodeIdentity` refusing to start without
a certificate, and renewing one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from node.daemon.identity import IdentityError, NodeIdentity
from node.model.config import NodeConfig
from node.model.errors import FailedPrecondition, NotFound
from node.model.keys import Keys
from node.security import bootstrap, ca, provision
from node.security.auth import Authorizer, Denied, Policy
from node.security.ca import CertError, ClusterCA, Lifetimes
from node.security.cluster import ClusterSecurity, seal, unseal
from node.security.credentials import CredentialsNotLoaded, EtcdCredentials
from node.security.files import NodeFiles
from node.security.tokens import JoinToken, Role, StoredToken
from node.store.memory import MemoryStore

KEYS = Keys("/t/")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def security(store: MemoryStore) -> ClusterSecurity:
    return ClusterSecurity(store, KEYS, "unit")


async def test_init_stores_everything_once_and_no_usable_secret(
    security: ClusterSecurity, store: MemoryStore
) -> None:
    authority, secrets, admin = await security.initialise()
    kvs, _ = await store.range(KEYS.prefix)
    stored = b"".join(kv.value for kv in kvs)
    assert {kv.key for kv in kvs} == {KEYS.ca_cert, KEYS.ca_key, KEYS.join, KEYS.token(admin.record.id)}
    assert secrets.ca_passphrase not in stored and str(secrets.join.token).encode() not in stored
    assert str(admin.token).encode() not in stored and b"ENCRYPTED PRIVATE KEY" in stored
    assert (await security.load_ca(secrets.ca_passphrase)).fingerprint == authority.fingerprint
    assert await security.join_token(secrets.ca_passphrase) == secrets.join.token
    with pytest.raises(FailedPrecondition, match="already initialised"):
        await security.initialise()
    with pytest.raises(CertError):
        await security.load_ca(b"x" * 44)


async def test_a_store_without_a_ca_says_how_to_make_one(security: ClusterSecurity) -> None:
    with pytest.raises(FailedPrecondition, match="shoal cluster init"):
        await security.ca_cert()
    with pytest.raises(FailedPrecondition, match="shoal cluster init"):
        await security.join_material()


def test_sealed_text_needs_the_passphrase_and_is_not_malleable() -> None:
    sealed = seal(b"p" * 44, b"SHOAL-1-secret", "join token")
    assert "secret" not in sealed
    assert unseal(b"p" * 44, sealed, "join token") == b"SHOAL-1-secret"
    for passphrase, text, purpose in [
        (b"q" * 44, sealed, "join token"),
        (b"p" * 44, sealed, "other"),
        (b"p" * 44, sealed[:-4] + "AAAA", "join token"),
        (b"p" * 44, "not base64!", "join token"),
    ]:
        with pytest.raises(CertError, match="cannot be opened"):
            unseal(passphrase, text, purpose)


async def test_rotation_makes_a_new_token_and_join_key(security: ClusterSecurity) -> None:
    _, secrets, _ = await security.initialise()
    old, _ = await security.join_record()
    token, revision = await security.rotate_join_token(secrets.ca_passphrase)
    new, mod = await security.join_record()
    assert token != secrets.join.token and mod == revision
    assert new.key_id == ca.key_id(token.private_key()) != old.key_id
    assert await security.join_token(secrets.ca_passphrase) == token
    ca_pem, join_cert = await security.join_material()
    bootstrap.prepare_join(token, "unit", "n2", ca_pem, join_cert)
    with pytest.raises(ValueError, match="rotated"):
        bootstrap.prepare_join(secrets.join.token, "unit", "n2", ca_pem, join_cert)


async def test_tokens_are_added_listed_and_revoked(security: ClusterSecurity) -> None:
    _, record = StoredToken.issue(Role.VIEWER, "ci")
    await security.add_token(record)
    assert [t.id for t in await security.tokens()] == [record.id]
    revoked, revision = await security.revoke_token(record.id)
    assert revoked.revoked and revision > 0
    again, _ = await security.revoke_token(record.id)  # idempotent: the first time stays
    assert again.revoked == revoked.revoked
    for missing in ("aaaaaaaaaa", "../x", ""):
        with pytest.raises(NotFound, match="shoal token ls"):
            await security.revoke_token(missing)


@pytest.fixture
async def mirrors(store: MemoryStore) -> AsyncIterator[EtcdCredentials]:
    credentials = EtcdCredentials(store, KEYS, ready_timeout=0.5)
    task = asyncio.create_task(credentials.run())
    try:
        yield credentials
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_credentials_come_from_the_mirrors_and_follow_changes(
    security: ClusterSecurity, store: MemoryStore, mirrors: EtcdCredentials
) -> None:
    _, secrets, admin = await security.initialise()
    _, now = await store.range("/none/")
    assert await mirrors.caught_up(KEYS.token(admin.record.id), now)
    assert await mirrors.caught_up(KEYS.join, now)
    assert await mirrors.token(admin.record.id) == admin.record
    assert await mirrors.join_key_id() == secrets.join.key_id
    assert await mirrors.token("../../etc") is None and await mirrors.token("bbbbbbbbbb") is None
    _, revision = await security.revoke_token(admin.record.id)
    assert await mirrors.caught_up(KEYS.token(admin.record.id), revision)
    record = await mirrors.token(admin.record.id)
    assert record is not None and record.revoked
    token, revision = await security.rotate_join_token(secrets.ca_passphrase)
    assert await mirrors.caught_up(KEYS.join, revision)
    assert await mirrors.join_key_id() == ca.key_id(token.private_key())


async def test_before_the_first_listing_a_call_is_unavailable_never_open(store: MemoryStore) -> None:
    credentials = EtcdCredentials(store, KEYS, ready_timeout=0.05)  # never run: never loaded
    with pytest.raises(CredentialsNotLoaded):
        await credentials.token("aaaaaaaaaa")
    authorizer = Authorizer(credentials, Policy("unit"))
    authority = ClusterCA.create("unit")
    _, cert = authority.issue_key_and_cert(ca.Identity("unit", ca.Kind.CLIENT, "c"))
    token, _ = StoredToken.issue(Role.ADMIN)
    with pytest.raises(Denied) as denied:
        await authorizer.authorize(
            "/shoal.v1.Shoal/ListServices", {"x509_pem_cert": [cert]}, [("authorization", f"Bearer {token}")]
        )
    assert denied.value.code.name == "UNAVAILABLE"


# -- the node's certificate ----------------------------------------------------------------


def _config(tmp_path: Path, **changes: object) -> NodeConfig:
    return replace(
        NodeConfig(node_id="n1", cluster="unit", data_dir=tmp_path, address="127.0.0.1", etcd_prefix="/t/"),
        **changes,  # type: ignore[arg-type]
    )


async def test_a_node_without_a_certificate_or_token_says_how_to_get_one(
    tmp_path: Path, store: MemoryStore, security: ClusterSecurity
) -> None:
    identity = NodeIdentity(_config(tmp_path), store, KEYS)
    assert not identity.load()
    with pytest.raises(IdentityError, match="shoal cluster init"):
        await identity.ensure()  # no CA yet
    await security.initialise()
    with pytest.raises(IdentityError, match="SHOAL_JOIN_TOKEN") as err:
        await identity.ensure()
    assert "shoal cluster join-token" in str(err.value)
    with pytest.raises(IdentityError, match="malformed"):
        await identity.join("SHOAL-1-nonsense")


async def test_a_certificate_of_another_cluster_is_refused(
    tmp_path: Path, store: MemoryStore, security: ClusterSecurity
) -> None:
    await security.initialise()
    other = ClusterCA.create("unit")
    provision.issue_node(NodeFiles.of(tmp_path), other, b"p" * 44, "n1", ["127.0.0.1"], [])
    identity = NodeIdentity(_config(tmp_path), store, KEYS)
    assert identity.load()
    with pytest.raises(IdentityError, match="another cluster"):
        await identity.ensure()


async def test_renewal_replaces_key_and_certificate_and_tells_the_channels(
    tmp_path: Path, store: MemoryStore, security: ClusterSecurity
) -> None:
    authority, secrets, _ = await security.initialise()
    files = NodeFiles.of(tmp_path)
    provision.issue_node(files, authority, secrets.ca_passphrase, "n1", ["127.0.0.1"], [])
    identity = NodeIdentity(_config(tmp_path, cert_lifetime=60.0), store, KEYS)
    assert identity.load()
    await identity.ensure()  # valid: nothing to do
    assert identity.renewals == 0
    seen: list[bytes] = []
    identity.on_renewed(lambda tls: seen.append(tls.cert_pem))
    before = files.load()
    await identity.renew()
    after = files.load()
    assert identity.renewals == 1 and seen == [after[2]]
    assert after[1] != before[1] and after[2] != before[2]  # a new key too
    cert = ca.load_cert(after[2])
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(seconds=66)
    moved = NodeIdentity(_config(tmp_path, address="127.0.0.9"), store, KEYS)  # the address changed
    assert moved.load()
    await moved.ensure()
    assert moved.renewals == 1


async def test_a_join_token_is_checked_against_etcd_before_any_connection(
    tmp_path: Path, store: MemoryStore, security: ClusterSecurity
) -> None:
    _, secrets, _ = await security.initialise()
    identity = NodeIdentity(_config(tmp_path, node_id="n2"), store, KEYS)
    foreign = JoinToken(ClusterCA.create("unit").fingerprint, secrets.join.token.secret)
    with pytest.raises(IdentityError, match="not the one this join token pins"):
        await identity.join(str(foreign))
    with pytest.raises(IdentityError, match="no member is registered"):
        await identity.join(str(secrets.join.token))


def test_lifetimes_follow_the_config(tmp_path: Path, store: MemoryStore) -> None:
    identity = NodeIdentity(_config(tmp_path, cert_lifetime=120.0), store, KEYS)
    assert identity.lifetimes == Lifetimes(node=timedelta(seconds=120))


async def test_a_node_renews_the_clusters_join_certificate_when_it_is_due(
    tmp_path: Path, store: MemoryStore, security: ClusterSecurity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No one asked for the token nor joined in 2/3 of the join certificate's lifetime:
    the daemons' certificate loop renews it (the same token), else joins fail at its end."""
    authority, secrets, _ = await security.initialise()
    files = NodeFiles.of(tmp_path)
    provision.issue_node(files, authority, secrets.ca_passphrase, "n1", ["127.0.0.1"], [])
    identity = NodeIdentity(_config(tmp_path), store, KEYS)
    assert identity.load()
    await identity.ensure()
    record, _ = await security.join_record()
    old = bootstrap.join_certificate(
        authority, secrets.join.token, now=datetime.now(UTC) - timedelta(days=300)
    )
    await store.put(KEYS.join, replace(record, cert=old).to_json())
    wakes = 0

    async def sleep(seconds: float) -> None:
        nonlocal wakes
        assert seconds <= 3600.0
        wakes += 1
        if wakes > 1:
            raise asyncio.CancelledError  # one wake of the loop is enough

    monkeypatch.setattr("node.daemon.identity.asyncio.sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await identity.run()
    renewed, _ = await security.join_record()
    assert renewed.cert != old and renewed.key_id == record.key_id
    assert not ca.needs_renewal(ca.load_cert(renewed.cert))
    assert await security.join_token(secrets.ca_passphrase) == secrets.join.token
