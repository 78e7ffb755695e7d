"""What `cluster init`, joining, renewal and `token create` compute, without any I/O.

The daemon and the CLI store the results (etcd, `node.security.files`, the CLI's
context file) and carry them over gRPC; every decision and check is here, so it is
tested without a cluster.

**Init** (`init_cluster`, once, on the first node): a CA; its key encrypted under a
new passphrase (ciphertext to etcd, passphrase to the node's disk only); a join
token with its join certificate (certificate and `join_key_id` to etcd, token shown
to the operator); then `node_identity` for the first node and `client_credentials`
for the first admin.

**Join** (a new host, `shoald --join-token`): it reads the CA certificate and the join
certificate from etcd, and `prepare_join` checks the CA against the token's pin, checks
the join certificate is the CA's and belongs to the token (its key is derived from the
token's secret, so a rotated token is detected here, before any connection), makes the
node's own key and a CSR, and gives the TLS material to dial any member with. The
member's join handler (admitted by `node.security.auth` only with the current join
key) calls `grant_join`; the new node checks the answer with `accept_certificate`.

**Renew**: at `ca.needs_renewal` a node makes a new key and has it signed, by its own
CA copy (`node_identity`) or a member (`grant_join` with the node's own identity). The
join certificate is issued again for the same token (`join_certificate`) when due, by
`node.security.cluster.ClusterSecurity.renew_join_cert`.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from node.security import ca
from node.security.ca import ClusterCA, Identity, Kind, Lifetimes
from node.security.tls import ClientTls
from node.security.tokens import ClientToken, JoinToken, Role, StoredToken, TokenError


@dataclass(frozen=True, repr=False)
class ClusterSecrets:
    """What `init_cluster` makes, and where each part belongs."""

    ca_cert: bytes  # etcd, and every node's tls/ca.crt (public)
    ca_key_encrypted: bytes  # etcd (PKCS#8, encrypted under ca_passphrase)
    ca_passphrase: bytes  # each node's tls/ca.pass (0600); never in etcd
    join: JoinSecrets


@dataclass(frozen=True, repr=False)
class JoinSecrets:
    token: JoinToken  # shown to the operator once (and on `shoal cluster join-token`)
    cert: bytes  # etcd (public): what a joining node dials with
    key_id: str  # etcd: what the auth check admits (`CredentialStore.join_key_id`)


@dataclass(frozen=True, repr=False)
class Issued:
    key: bytes  # PEM, unencrypted: store with files.write_secret
    cert: bytes  # PEM


@dataclass(frozen=True, repr=False)
class ClientCredentials:
    token: ClientToken  # shown once to whoever asked; never stored
    record: StoredToken  # etcd, tokens/<id>
    key: bytes  # the client's key and certificate, for its context file
    cert: bytes


def new_passphrase() -> bytes:
    """32 random bytes, base64: the CA key's passphrase (not a password: nothing to guess)."""
    return base64.b64encode(secrets.token_bytes(32))


def init_cluster(
    cluster: str, lifetimes: Lifetimes | None = None, now: datetime | None = None
) -> tuple[ClusterCA, ClusterSecrets]:
    lifetimes = lifetimes or Lifetimes()
    authority = ClusterCA.create(cluster, lifetimes.ca, now)
    passphrase = new_passphrase()
    join = new_join_token(authority, lifetimes, now)
    return authority, ClusterSecrets(
        authority.cert_pem, authority.key_pem_encrypted(passphrase), passphrase, join
    )


def new_join_token(
    authority: ClusterCA, lifetimes: Lifetimes | None = None, now: datetime | None = None
) -> JoinSecrets:
    """A new join token (init, or `cluster rotate-token`: storing its key id shuts the old one out)."""
    token = JoinToken.new(authority.fingerprint)
    key = token.private_key()
    cert = authority.issue(
        Identity(authority.cluster, Kind.JOIN),
        key.public_key(),
        lifetime=(lifetimes or Lifetimes()).join,
        now=now,
    )
    return JoinSecrets(token, ca.cert_pem(cert), ca.key_id(key))


def join_certificate(
    authority: ClusterCA, token: JoinToken, lifetimes: Lifetimes | None = None, now: datetime | None = None
) -> bytes:
    """A fresh join certificate for the current token (when the stored one nears expiry)."""
    key = token.private_key()
    return ca.cert_pem(
        authority.issue(
            Identity(authority.cluster, Kind.JOIN),
            key.public_key(),
            lifetime=(lifetimes or Lifetimes()).join,
            now=now,
        )
    )


def node_identity(
    authority: ClusterCA,
    node_id: str,
    ips: Iterable[str],
    dns: Iterable[str] = (),
    lifetimes: Lifetimes | None = None,
    now: datetime | None = None,
) -> Issued:
    """A new key and node certificate, made where the CA is (the first node; a self-renewal)."""
    key, cert = authority.issue_key_and_cert(
        Identity(authority.cluster, Kind.NODE, node_id), ips, dns, (lifetimes or Lifetimes()).node, now
    )
    return Issued(key, cert)


def client_credentials(
    authority: ClusterCA,
    name: str,
    role: Role,
    description: str = "",
    lifetimes: Lifetimes | None = None,
    now: datetime | None = None,
) -> ClientCredentials:
    """A client token of `role` and a client certificate named `name` (init's admin; `shoal dev`)."""
    token, record = StoredToken.issue(role, description, now=now)
    key, cert = authority.issue_key_and_cert(
        Identity(authority.cluster, Kind.CLIENT, name), lifetime=(lifetimes or Lifetimes()).client, now=now
    )
    return ClientCredentials(token, record, key, cert)


@dataclass(frozen=True, repr=False)
class JoinAttempt:
    """What a joining node dials with and asks for; `key` stays on this host."""

    tls: ClientTls  # the CA, and the join key and certificate
    key: bytes  # the node's new private key (PEM)
    csr: bytes  # the request to send (PEM)


def prepare_join(
    token: JoinToken | str,
    cluster: str,
    node_id: str,
    ca_cert: bytes,
    join_cert: bytes,
    now: datetime | None = None,
) -> JoinAttempt:
    """Check what etcd says against the token, and prepare the join call.

    Raises `TokenError` (a malformed or rotated token, a CA the token does not pin) or
    `ca.CertError` (a join certificate that is not the CA's or has expired)."""
    if isinstance(token, str):
        token = JoinToken.parse(token)
    token.check_ca(ca.fingerprint(ca_cert))
    certificate = ca.load_cert(join_cert)
    end = certificate.not_valid_after_utc
    expired = (now or datetime.now(UTC)) > end  # then checked as of its end, to say so last
    identity = ca.verify(ca.load_cert(ca_cert), certificate, cluster, end if expired else now)
    if identity.kind is not Kind.JOIN:
        raise ca.CertError(f"the cluster's join certificate is a {identity.kind} certificate")
    join_key = token.private_key()
    if ca.key_id(join_key) != ca.key_id(certificate.public_key()):  # type: ignore[arg-type]
        raise TokenError(
            "this join token is not the cluster's current one (it was rotated); get the current one "
            "from a member with `shoal cluster join-token`"
        )
    if expired:
        raise ca.CertError(
            f"the cluster's join certificate expired on {end:%Y-%m-%d %H:%M:%S} UTC: run "
            "`shoal cluster join-token` on a member (admin), which renews it and keeps this token, "
            "or `shoal cluster rotate-token` for a new token; then start this host again"
        )
    key = ca.new_private_key()
    return JoinAttempt(
        ClientTls(ca_cert, ca.private_key_pem(join_key), join_cert),
        ca.private_key_pem(key),
        ca.make_csr(key, Identity(cluster, Kind.NODE, node_id)),
    )


def grant_join(
    authority: ClusterCA,
    csr: bytes,
    node_id: str,
    ips: Iterable[str],
    dns: Iterable[str] = (),
    lifetimes: Lifetimes | None = None,
    now: datetime | None = None,
) -> bytes:
    """The member's side: sign a joining (or renewing) node's CSR as `node_id` with its addresses.

    The caller decides `node_id` may be granted (not a live node of another host)."""
    identity = Identity(authority.cluster, Kind.NODE, node_id)
    return authority.sign_csr(csr, identity, ips, dns, (lifetimes or Lifetimes()).node, now)


def accept_certificate(
    ca_cert: bytes, key: bytes, cert: bytes, expected: Identity, now: datetime | None = None
) -> None:
    """Check a certificate we were given: the CA's, valid now, ours (our key), the identity we asked for."""
    certificate = ca.load_cert(cert)
    identity = ca.verify(ca.load_cert(ca_cert), certificate, expected.cluster, now)
    if identity != expected:
        raise ca.CertError(f"the certificate is for {identity.uri}, not {expected.uri}")
    if ca.key_id(ca.load_private_key(key)) != ca.key_id(certificate.public_key()):  # type: ignore[arg-type]
        raise ca.CertError("the certificate is not for this node's key")
