"""The cluster CA: one per cluster, it signs every certificate that may speak gRPC to a node.

Every gRPC connection of a cluster is mutual TLS against this CA (decision: Python's
grpc can only *require and verify* a client certificate or not ask for one, so a
port cannot serve both; we require one everywhere). Three kinds of certificate, told
apart by their one URI SAN, `spiffe://shoal/<cluster>/<kind>[/<name>]`:

- `node/<node-id>`: a daemon. Server and client auth; IP and DNS SANs for the
  node's addresses (peers dial `127.0.0.2:7070`, so the IP SAN is what TLS checks).
- `client/<name>`: the CLI or any gRPC client. Client auth only; what it may do is
  decided by its bearer token (`node.security.tokens`), not by the certificate.
- `join`: the bootstrap certificate of the current join token; its key is derived
  from the token's secret (`JoinToken.private_key`), so only a token holder can use
  it, and it may call nothing but the join method.

Keys are ECDSA P-256 (what every TLS stack, BoringSSL in gRPC included, accepts for
ECDHE-ECDSA). A node makes its own key and sends a CSR; the CA reads only the public
key and the proof of possession from it, and sets every name itself.

Where the CA key lives (the decision for `docs/decisions.md`): in etcd, as PKCS#8
encrypted under a random 32-byte passphrase (`key_pem_encrypted`); the passphrase is
kept on each node's disk, mode 0600 (`node.security.files`), and handed to a node
when it joins. Why: any node can then sign a join or a renewal (no node is a single
point of failure, as any node may lead), and etcd's content alone (a reader of
etcd, a snapshot, a backup) does not reveal the key. The cost is Swarm's: a
compromised node holds the CA key; in shoal a node also holds etcd credentials, so
it could already change anything in the cluster.

Times are UTC datetimes; every function that depends on the clock takes `now` so
tests need no waiting. Certificates are back-dated by a tenth of their lifetime (at
most 5 minutes) so that a peer whose clock is a little behind still accepts them.
No certificate outlives the CA; near the CA's end, when a certificate capped there would
be due for renewal as soon as it is made, or once the CA has expired, signing is refused
(`CertError`, saying so), rather than renewing in a loop and then failing with a bare error.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Self

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "shoal"
CURVES = (ec.SECP256R1, ec.SECP384R1)  # keys the CA signs for; new keys are P-256
MAX_BACKDATE = timedelta(minutes=5)
RENEW_AT = 2 / 3  # of the validity window: renew when this much has passed

_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")
_DNS = re.compile(
    r"(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*"
)

PrivateKey = ec.EllipticCurvePrivateKey
NEW_CA = "a new CA means `shoal cluster init` on a new prefix and joining every host again (docs/security.md)"


class CertError(ValueError):
    """A certificate, key or CSR is not acceptable; the message says which and why."""


class Kind(StrEnum):
    NODE = "node"
    CLIENT = "client"
    JOIN = "join"


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for; its URI SAN is the authoritative form."""

    cluster: str
    kind: Kind
    name: str = ""  # node id or client name; empty for `join`

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.cluster):
            raise CertError(f"cluster name {self.cluster!r} is not valid (lowercase letters, digits, -._)")
        if self.kind is Kind.JOIN:
            if self.name:
                raise CertError("a join identity has no name")
        elif not _NAME.fullmatch(self.name):
            raise CertError(f"{self.kind} name {self.name!r} is not valid (lowercase letters, digits, -._)")

    @property
    def uri(self) -> str:
        tail = f"/{self.name}" if self.name else ""
        return f"spiffe://{TRUST_DOMAIN}/{self.cluster}/{self.kind}{tail}"

    @classmethod
    def from_uri(cls, uri: str) -> Self:
        prefix = f"spiffe://{TRUST_DOMAIN}/"
        parts = uri[len(prefix) :].split("/") if uri.startswith(prefix) else []
        try:
            if len(parts) == 2 and parts[1] == Kind.JOIN:
                return cls(parts[0], Kind.JOIN)
            if len(parts) == 3 and parts[1] in (Kind.NODE, Kind.CLIENT):
                return cls(parts[0], Kind(parts[1]), parts[2])
        except CertError as exc:
            raise CertError(f"{uri!r} is not a shoal identity: {exc}") from None
        raise CertError(f"{uri!r} is not a shoal identity (spiffe://{TRUST_DOMAIN}/<cluster>/<kind>/<name>)")

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" if self.name else str(self.kind)


@dataclass(frozen=True)
class Lifetimes:
    """How long each kind of certificate is valid. Shorter limits what a stolen key is
    worth; longer rides out longer outages of every signer. Renewal starts at 2/3."""

    ca: timedelta = timedelta(days=3650)  # the root; rotating it is not built (docs/security.md)
    node: timedelta = timedelta(days=30)  # renewed by the daemon itself, from day 20
    client: timedelta = timedelta(days=365)  # the CLI's; the token, not the cert, is revocable
    join: timedelta = timedelta(days=365)  # new at each rotation; renewed at 2/3 for the same token

    def of(self, kind: Kind) -> timedelta:
        return {Kind.NODE: self.node, Kind.CLIENT: self.client, Kind.JOIN: self.join}[kind]


def _now(now: datetime | None) -> datetime:
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now.replace(microsecond=0)


def _window(now: datetime, lifetime: timedelta) -> tuple[datetime, datetime]:
    if lifetime <= timedelta(0):
        raise CertError(f"a certificate lifetime must be positive, not {lifetime}")
    return now - min(MAX_BACKDATE, lifetime / 10), now + lifetime


def new_private_key() -> PrivateKey:
    """A fresh ECDSA P-256 key; it should never leave the host that made it."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM; encrypted (best available: AES-256 + PBKDF2) when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_private_key(pem: bytes, passphrase: bytes | None = None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, passphrase)
    except TypeError as exc:  # encrypted without a passphrase, or the reverse
        raise CertError(f"the private key cannot be read: {exc}") from None
    except ValueError:
        hint = "the passphrase is wrong, or " if passphrase else ""
        raise CertError(f"the private key cannot be read: {hint}it is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, CURVES):
        raise CertError("the private key is not an ECDSA P-256 or P-384 key")
    return key


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CertError("not a PEM certificate") from None


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """sha256 of the certificate's DER, lowercase hex: what a join token pins."""
    if isinstance(cert, bytes):
        cert = load_cert(cert)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def key_id(key: ec.EllipticCurvePublicKey | PrivateKey) -> str:
    """sha256 of the public key's DER (SubjectPublicKeyInfo), lowercase hex."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def identity_of(cert: x509.Certificate) -> Identity:
    """The shoal identity in the certificate's URI SAN (exactly one is allowed)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertError("the certificate has no subject alternative names") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CertError(f"the certificate must carry exactly one URI SAN, it has {len(uris)}")
    return Identity.from_uri(uris[0])


def renew_at(cert: x509.Certificate) -> datetime:
    """When to renew: 2/3 of the way through the validity window."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AT


def needs_renewal(cert: x509.Certificate, now: datetime | None = None) -> bool:
    return _now(now) >= renew_at(cert)


def make_csr(key: PrivateKey, identity: Identity) -> bytes:
    """A CSR (PEM) for `identity`, signed by `key`: what a joining node sends."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.name or str(identity.kind))])
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def read_csr(pem: bytes) -> tuple[Identity, ec.EllipticCurvePublicKey]:
    """Check a CSR (parses, self-signature valid, acceptable key, one shoal URI SAN) and
    return the identity it asks for and its public key. The signer decides whether to
    grant that identity; the CSR's other contents are never copied into a certificate."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError:
        raise CertError("the certificate request is not a PEM CSR") from None
    try:  # the parts are decoded only when read: a malformed one raises here, not at load
        public = csr.public_key()
        signed = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(
            "the certificate request's key or signature is malformed or of an unknown kind"
        ) from None
    if not signed:
        raise CertError("the certificate request's signature is not valid")
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, CURVES):
        raise CertError("the certificate request's key is not an ECDSA P-256 or P-384 key")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertError("the certificate request names no identity (no URI SAN)") from None
    except (ValueError, x509.DuplicateExtension, UnsupportedAlgorithm):
        raise CertError("the certificate request's extensions are malformed (or one is repeated)") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CertError("the certificate request must name exactly one identity (URI SAN)")
    return Identity.from_uri(uris[0]), public


def _addresses(ips: Iterable[str], dns: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CertError(f"{ip[:60]!r} is not an IP address") from None
    for name in dns:
        if not _DNS.fullmatch(name):
            raise CertError(f"{name[:80]!r} is not a DNS name")
        names.append(x509.DNSName(name.lower()))
    return names


@dataclass(frozen=True)
class ClusterCA:
    """The cluster's CA certificate and key; `create` once per cluster, `load` afterwards."""

    cluster: str
    cert: x509.Certificate
    key: PrivateKey

    @classmethod
    def create(cls, cluster: str, lifetime: timedelta | None = None, now: datetime | None = None) -> Self:
        Identity(cluster, Kind.JOIN)  # validates the cluster name
        key = new_private_key()
        start, end = _window(_now(now), lifetime or Lifetimes().ca)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
                x509.NameAttribute(NameOID.COMMON_NAME, f"shoal cluster {cluster} CA"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cluster, cert, key)

    @classmethod
    def load(cls, cluster: str, cert: bytes, key: bytes, passphrase: bytes | None) -> Self:
        """From the stored PEMs; raises `CertError` on a wrong passphrase or a mismatched pair."""
        ca_cert, ca_key = load_cert(cert), load_private_key(key, passphrase)
        if key_id(ca_key) != key_id(ca_cert.public_key()):  # type: ignore[arg-type]
            raise CertError("the CA key does not belong to the CA certificate")
        return cls(cluster, ca_cert, ca_key)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    def key_pem_encrypted(self, passphrase: bytes) -> bytes:
        if len(passphrase) < 16:
            raise CertError("the CA key passphrase must have at least 16 bytes")
        return private_key_pem(self.key, passphrase)

    def issue(
        self,
        identity: Identity,
        public_key: ec.EllipticCurvePublicKey,
        ips: Iterable[str] = (),
        dns: Iterable[str] = (),
        lifetime: timedelta | None = None,
        now: datetime | None = None,
    ) -> x509.Certificate:
        """A certificate for `public_key` as `identity`; addresses only for nodes."""
        if identity.cluster != self.cluster:
            raise CertError(f"this CA signs for cluster {self.cluster!r}, not {identity.cluster!r}")
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, CURVES):
            raise CertError("the key is not an ECDSA P-256 or P-384 key")
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        addresses = _addresses(ips, dns)
        if addresses and identity.kind is not Kind.NODE:
            raise CertError(f"only node certificates carry addresses, not {identity.kind} ones")
        names += addresses
        when = _now(now)
        start, end = _window(when, lifetime or Lifetimes().of(identity.kind))
        end = min(end, self._signs_until(when))
        if start + (end - start) * RENEW_AT <= when:
            raise CertError(
                f"the cluster CA expires on {end:%Y-%m-%d %H:%M:%S} UTC: a certificate it signs now "
                f"would be due for renewal at once; {NEW_CA}"
            )
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if identity.kind is Kind.NODE:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{TRUST_DOMAIN}:{identity.cluster}"),
                        x509.NameAttribute(NameOID.COMMON_NAME, identity.name or str(identity.kind)),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def _signs_until(self, when: datetime) -> datetime:
        """The CA's own end, which no certificate it signs outlives; CertError once it is past."""
        end = self.cert.not_valid_after_utc
        if end <= when:
            raise CertError(
                f"the cluster CA expired on {end:%Y-%m-%d %H:%M:%S} UTC and signs nothing more; {NEW_CA}"
            )
        return end

    def sign_csr(
        self,
        csr: bytes,
        identity: Identity,
        ips: Iterable[str] = (),
        dns: Iterable[str] = (),
        lifetime: timedelta | None = None,
        now: datetime | None = None,
    ) -> bytes:
        """Sign a CSR as `identity` (which the caller has decided to grant), PEM out.

        The CSR must ask for exactly that identity: a node asking to be another node,
        or a client asking to be a node, is refused rather than silently renamed."""
        asked, public_key = read_csr(csr)
        if asked != identity:
            raise CertError(f"the certificate request asks for {asked.uri}, not {identity.uri}")
        return cert_pem(self.issue(identity, public_key, ips, dns, lifetime, now))

    def issue_key_and_cert(
        self,
        identity: Identity,
        ips: Iterable[str] = (),
        dns: Iterable[str] = (),
        lifetime: timedelta | None = None,
        now: datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A new key and its certificate (PEMs), for whoever holds the CA on the same host:
        `cluster init` for its own node and its admin client, a node renewing itself."""
        key = new_private_key()
        return private_key_pem(key), cert_pem(self.issue(identity, key.public_key(), ips, dns, lifetime, now))

    def verify(self, cert: x509.Certificate, now: datetime | None = None) -> Identity:
        """Check `cert` was issued by this CA, is valid at `now` and names this cluster."""
        return verify(self.cert, cert, self.cluster, now)


def verify(
    ca_cert: x509.Certificate, cert: x509.Certificate, cluster: str, now: datetime | None = None
) -> Identity:
    """Check `cert` was issued by `ca_cert`, is valid at `now` and names `cluster`; its identity."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError("the certificate was not issued by this cluster's CA") from None
    when = _now(now)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise CertError(
            f"the certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC, not now"
        )
    identity = identity_of(cert)
    if identity.cluster != cluster:
        raise CertError(f"the certificate is for cluster {identity.cluster!r}, not {cluster!r}")
    return identity


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
