"""The cluster CA: certificates, CSRs, the encrypted CA key, verification and renewal timing."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from node.security import ca
from node.security.ca import CertError, ClusterCA, Identity, Kind

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def authority() -> ClusterCA:
    return ClusterCA.create("prod", now=NOW)


def test_the_ca_certificate_is_a_ca_for_ten_years(authority: ClusterCA) -> None:
    cert = authority.cert
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert cert.not_valid_after_utc - NOW == timedelta(days=3650)
    assert isinstance(authority.key.curve, ec.SECP256R1)
    assert len(authority.fingerprint) == 64 and authority.fingerprint == ca.fingerprint(authority.cert_pem)


def test_a_node_certificate_carries_its_identity_and_addresses(authority: ClusterCA) -> None:
    key, pem = authority.issue_key_and_cert(
        Identity("prod", Kind.NODE, "n1"), ips=["127.0.0.2", "::1"], dns=["n1.example.org"], now=NOW
    )
    cert = ca.load_cert(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://shoal/prod/node/n1"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.2"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["n1.example.org"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    assert authority.verify(cert, NOW) == Identity("prod", Kind.NODE, "n1")
    assert ca.key_id(ca.load_private_key(key)) == ca.key_id(cert.public_key())  # type: ignore[arg-type]
    assert cert.not_valid_after_utc - NOW == timedelta(days=30)


def test_a_client_certificate_is_for_client_auth_only_and_has_no_addresses(authority: ClusterCA) -> None:
    _, pem = authority.issue_key_and_cert(Identity("prod", Kind.CLIENT, "alice"), now=NOW)
    usages = ca.load_cert(pem).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(CertError, match="only node certificates carry addresses"):
        authority.issue_key_and_cert(Identity("prod", Kind.CLIENT, "alice"), ips=["10.0.0.1"])


def test_the_encrypted_ca_key_round_trips_and_a_wrong_passphrase_says_so(authority: ClusterCA) -> None:
    passphrase = b"p" * 32
    encrypted = authority.key_pem_encrypted(passphrase)
    assert b"ENCRYPTED PRIVATE KEY" in encrypted
    loaded = ClusterCA.load("prod", authority.cert_pem, encrypted, passphrase)
    assert loaded.fingerprint == authority.fingerprint
    with pytest.raises(CertError, match="passphrase is wrong"):
        ClusterCA.load("prod", authority.cert_pem, encrypted, b"q" * 32)
    with pytest.raises(CertError, match="cannot be read"):
        ClusterCA.load("prod", authority.cert_pem, encrypted, None)
    with pytest.raises(CertError, match="at least 16 bytes"):
        authority.key_pem_encrypted(b"short")
    other = ClusterCA.create("prod")
    with pytest.raises(CertError, match="does not belong"):
        ClusterCA.load("prod", authority.cert_pem, other.key_pem_encrypted(passphrase), passphrase)


def test_the_csr_flow_keeps_the_key_on_the_node(authority: ClusterCA) -> None:
    key = ca.new_private_key()  # made on the joining node
    identity = Identity("prod", Kind.NODE, "n7")
    csr = ca.make_csr(key, identity)
    assert b"PRIVATE" not in csr
    pem = authority.sign_csr(csr, identity, ips=["10.0.0.7"], now=NOW)
    cert = ca.load_cert(pem)
    assert ca.key_id(key) == ca.key_id(cert.public_key())  # type: ignore[arg-type]
    assert authority.verify(cert, NOW) == identity


def test_a_csr_for_another_identity_is_refused(authority: ClusterCA) -> None:
    csr = ca.make_csr(ca.new_private_key(), Identity("prod", Kind.NODE, "n1"))
    with pytest.raises(
        CertError, match="asks for spiffe://shoal/prod/node/n1, not spiffe://shoal/prod/node/n2"
    ):
        authority.sign_csr(csr, Identity("prod", Kind.NODE, "n2"))
    other_cluster = ca.make_csr(ca.new_private_key(), Identity("dev", Kind.NODE, "n1"))
    with pytest.raises(CertError, match="asks for"):
        authority.sign_csr(other_cluster, Identity("prod", Kind.NODE, "n1"))
    with pytest.raises(CertError, match="signs for cluster 'prod', not 'dev'"):
        authority.sign_csr(other_cluster, Identity("dev", Kind.NODE, "n1"))


def test_bad_csrs_are_refused_with_a_reason(authority: ClusterCA) -> None:
    identity = Identity("prod", Kind.NODE, "n1")
    with pytest.raises(CertError, match="not a PEM CSR"):
        authority.sign_csr(b"hello", identity)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=False
        )
        .sign(rsa_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CertError, match="not an ECDSA P-256 or P-384 key"):
        authority.sign_csr(rsa_csr, identity)
    no_san = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .sign(ca.new_private_key(), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CertError, match="names no identity"):
        authority.sign_csr(no_san, identity)


def test_verify_refuses_another_ca_an_expired_certificate_and_another_cluster(authority: ClusterCA) -> None:
    other = ClusterCA.create("prod", now=NOW)
    _, foreign = other.issue_key_and_cert(Identity("prod", Kind.NODE, "n1"), now=NOW)
    with pytest.raises(CertError, match="not issued by this cluster's CA"):
        authority.verify(ca.load_cert(foreign), NOW)
    _, pem = authority.issue_key_and_cert(
        Identity("prod", Kind.NODE, "n1"), lifetime=timedelta(hours=1), now=NOW
    )
    with pytest.raises(CertError, match="not now"):
        authority.verify(ca.load_cert(pem), NOW + timedelta(hours=2))
    with pytest.raises(CertError, match="for cluster 'prod', not 'dev'"):
        ca.verify(authority.cert, ca.load_cert(pem), "dev", NOW)


def test_a_leaf_never_outlives_its_ca() -> None:
    short = ClusterCA.create("prod", lifetime=timedelta(days=10), now=NOW)
    _, pem = short.issue_key_and_cert(Identity("prod", Kind.NODE, "n1"), now=NOW)
    assert ca.load_cert(pem).not_valid_after_utc == short.cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("lifetime", "before", "at"),
    [
        # back-dated by lifetime/10 (at most 5 min): window = 1.1 x lifetime, renewed at 2/3 of it
        (timedelta(seconds=30), timedelta(seconds=18), timedelta(seconds=19)),
        (timedelta(hours=1), timedelta(minutes=38), timedelta(minutes=39)),
        (timedelta(days=30), timedelta(days=19, hours=23), timedelta(days=20)),
    ],
)
def test_renewal_starts_at_two_thirds_of_the_validity_window(
    authority: ClusterCA, lifetime: timedelta, before: timedelta, at: timedelta
) -> None:
    _, pem = authority.issue_key_and_cert(Identity("prod", Kind.NODE, "n1"), lifetime=lifetime, now=NOW)
    cert = ca.load_cert(pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert end - NOW == lifetime and NOW - start == min(ca.MAX_BACKDATE, lifetime / 10)
    assert not ca.needs_renewal(cert, NOW)
    assert not ca.needs_renewal(cert, NOW + before)
    assert ca.needs_renewal(cert, NOW + at)
    assert ca.renew_at(cert) == start + (end - start) * 2 / 3


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://shoal/prod/node",
        "spiffe://shoal/prod/node/",
        "spiffe://shoal/prod/admin/x",
        "spiffe://other/prod/node/n1",
        "spiffe://shoal/prod/join/x",
        "spiffe://shoal/Prod/node/n1",
        "https://shoal/prod/node/n1",
        "spiffe://shoal/prod/node/n1/extra",
    ],
)
def test_identities_that_are_not_shoal_ones_are_refused(uri: str) -> None:
    with pytest.raises(CertError, match="not a shoal identity"):
        Identity.from_uri(uri)


def test_identities_round_trip_through_their_uri() -> None:
    for identity in (
        Identity("prod", Kind.NODE, "n1"),
        Identity("prod", Kind.CLIENT, "ci-bot"),
        Identity("prod", Kind.JOIN),
    ):
        assert Identity.from_uri(identity.uri) == identity
    assert Identity("prod", Kind.JOIN).uri == "spiffe://shoal/prod/join"


def test_naive_times_are_refused(authority: ClusterCA) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        authority.issue_key_and_cert(Identity("prod", Kind.NODE, "n1"), now=datetime(2030, 1, 1))


def test_a_ca_near_or_past_its_end_refuses_to_sign_with_a_reason() -> None:
    """Capped at the CA's end, a certificate made in the CA's last minutes would be due for
    renewal at once (the node renewed it in a loop), and past the end the builder failed with
    a bare ValueError (the renewal loop, retrying CertError only, died): both are CertError."""
    short = ClusterCA.create("prod", lifetime=timedelta(hours=1), now=NOW)
    node = Identity("prod", Kind.NODE, "n1")
    end = short.cert.not_valid_after_utc
    with pytest.raises(CertError, match="would be due for renewal at once"):
        short.issue_key_and_cert(node, now=end - timedelta(minutes=1))
    with pytest.raises(CertError, match=r"the cluster CA expired on .* signs nothing more"):
        short.issue_key_and_cert(node, now=end + timedelta(minutes=1))
    _, pem = short.issue_key_and_cert(node, now=end - timedelta(minutes=20))  # still worth it
    assert not ca.needs_renewal(ca.load_cert(pem), end - timedelta(minutes=20))


@pytest.mark.parametrize(
    "san",
    [
        b"garbage",  # not DER at all
        b"\x30\x03\x86\x01\xff",  # a URI SAN that is not ASCII
    ],
    ids=["not-der", "non-ascii-uri"],
)
def test_a_csr_with_a_malformed_extension_is_refused_with_a_reason(authority: ClusterCA, san: bytes) -> None:
    """cryptography decodes a CSR's extensions only when they are read: a malformed SAN raised
    a bare ValueError out of `read_csr` (the join handler answered INTERNAL and logged a trace)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .add_extension(x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san), critical=False)
        .sign(ca.new_private_key(), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CertError, match="extensions are malformed"):
        ca.read_csr(csr)


def test_a_hostile_address_is_named_in_the_error_shortened() -> None:
    """A join's bad DNS name or IP was echoed whole into the error (and the log)."""
    with pytest.raises(ca.CertError) as err:
        ca._addresses([], ["a" * 100_000 + "!"])
    assert len(str(err.value)) < 200
    with pytest.raises(ca.CertError) as err:
        ca._addresses(["1" * 100_000], [])
    assert len(str(err.value)) < 200
