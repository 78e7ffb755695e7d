"""Cluster init and the join flow, without a cluster: what each side computes and checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from node.security import bootstrap, ca
from node.security.ca import CertError, ClusterCA, Identity, Kind, Lifetimes
from node.security.tokens import JoinToken, Role, TokenError

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_init_makes_a_ca_whose_key_is_only_stored_encrypted() -> None:
    authority, secrets = bootstrap.init_cluster("prod", now=NOW)
    assert b"ENCRYPTED PRIVATE KEY" in secrets.ca_key_encrypted
    assert secrets.ca_passphrase not in secrets.ca_key_encrypted
    loaded = ClusterCA.load("prod", secrets.ca_cert, secrets.ca_key_encrypted, secrets.ca_passphrase)
    assert loaded.fingerprint == authority.fingerprint == secrets.join.token.ca_fingerprint
    assert secrets.join.key_id == ca.key_id(secrets.join.token.private_key())
    assert authority.verify(ca.load_cert(secrets.join.cert), NOW) == Identity("prod", Kind.JOIN)
    assert str(secrets.join.token) not in repr(secrets)


def test_a_node_joins_with_a_good_token() -> None:
    authority, secrets = bootstrap.init_cluster("prod")
    attempt = bootstrap.prepare_join(
        str(secrets.join.token), "prod", "n2", secrets.ca_cert, secrets.join.cert
    )
    assert b"PRIVATE" not in attempt.csr
    assert attempt.tls.cert_pem == secrets.join.cert and attempt.tls.token is None
    # the member's side, then the new node checks what it got back
    cert = bootstrap.grant_join(authority, attempt.csr, "n2", ["10.0.0.2"])
    bootstrap.accept_certificate(secrets.ca_cert, attempt.key, cert, Identity("prod", Kind.NODE, "n2"))


def test_a_join_token_for_another_cluster_is_refused_before_any_connection() -> None:
    _, ours = bootstrap.init_cluster("prod")
    _, theirs = bootstrap.init_cluster("prod")
    with pytest.raises(TokenError, match="is not the one this join token pins"):
        bootstrap.prepare_join(theirs.join.token, "prod", "n2", ours.ca_cert, ours.join.cert)


def test_a_rotated_join_token_is_refused_with_a_clear_message() -> None:
    authority, secrets = bootstrap.init_cluster("prod")
    rotated = bootstrap.new_join_token(authority)
    with pytest.raises(TokenError, match="not the cluster's current one"):
        bootstrap.prepare_join(secrets.join.token, "prod", "n2", secrets.ca_cert, rotated.cert)
    bootstrap.prepare_join(rotated.token, "prod", "n2", secrets.ca_cert, rotated.cert)


def test_a_wrong_secret_with_the_right_ca_hash_is_refused() -> None:
    _, secrets = bootstrap.init_cluster("prod")
    guessed = JoinToken.new(secrets.join.token.ca_fingerprint)
    with pytest.raises(TokenError, match="not the cluster's current one"):
        bootstrap.prepare_join(guessed, "prod", "n2", secrets.ca_cert, secrets.join.cert)


def test_an_expired_or_foreign_join_certificate_is_refused() -> None:
    authority, secrets = bootstrap.init_cluster("prod", now=NOW)
    short = bootstrap.join_certificate(
        authority, secrets.join.token, Lifetimes(join=timedelta(days=1)), now=NOW
    )
    # expired: said so, with what to do (the certificate is renewed; or a new token)
    with pytest.raises(CertError, match="join certificate expired on 2030-01-02") as expired:
        bootstrap.prepare_join(
            secrets.join.token, "prod", "n2", secrets.ca_cert, short, now=NOW + timedelta(days=2)
        )
    assert "`shoal cluster join-token` on a member" in str(expired.value)
    assert "`shoal cluster rotate-token`" in str(expired.value)
    # not valid yet (a clock behind): the plain check
    with pytest.raises(CertError, match="not now"):
        bootstrap.prepare_join(
            secrets.join.token, "prod", "n2", secrets.ca_cert, short, now=NOW - timedelta(days=2)
        )
    # an expired certificate of a rotated token: the token is what is wrong
    with pytest.raises(TokenError, match="not the cluster's current one"):
        bootstrap.prepare_join(
            JoinToken.new(secrets.join.token.ca_fingerprint), "prod", "n2", secrets.ca_cert, short,
            now=NOW + timedelta(days=2),
        )  # fmt: skip
    _, node_cert = authority.issue_key_and_cert(Identity("prod", Kind.NODE, "n1"), now=NOW)
    with pytest.raises(CertError, match="is a node certificate"):
        bootstrap.prepare_join(secrets.join.token, "prod", "n2", secrets.ca_cert, node_cert, now=NOW)


def test_a_joining_node_cannot_ask_for_another_name() -> None:
    authority, secrets = bootstrap.init_cluster("prod")
    attempt = bootstrap.prepare_join(secrets.join.token, "prod", "n2", secrets.ca_cert, secrets.join.cert)
    with pytest.raises(CertError, match="asks for spiffe://shoal/prod/node/n2"):
        bootstrap.grant_join(authority, attempt.csr, "n1", ["10.0.0.1"])


def test_accept_certificate_refuses_what_was_not_asked_for() -> None:
    authority, secrets = bootstrap.init_cluster("prod")
    attempt = bootstrap.prepare_join(secrets.join.token, "prod", "n2", secrets.ca_cert, secrets.join.cert)
    someone_else = bootstrap.node_identity(authority, "n2", ["10.0.0.2"])
    with pytest.raises(CertError, match="not for this node's key"):
        bootstrap.accept_certificate(
            secrets.ca_cert, attempt.key, someone_else.cert, Identity("prod", Kind.NODE, "n2")
        )
    with pytest.raises(CertError, match="not spiffe://shoal/prod/node/n3"):
        bootstrap.accept_certificate(
            secrets.ca_cert, someone_else.key, someone_else.cert, Identity("prod", Kind.NODE, "n3")
        )


def test_client_credentials_come_with_a_token_of_the_role() -> None:
    authority, _ = bootstrap.init_cluster("prod")
    issued = bootstrap.client_credentials(authority, "admin", Role.ADMIN, "made by init")
    assert issued.record.role == "admin" and issued.record.matches(issued.token)
    assert authority.verify(ca.load_cert(issued.cert)) == Identity("prod", Kind.CLIENT, "admin")
