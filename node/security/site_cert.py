"""Certificates the cluster CA issues for ingress host names (issue 17 item 3).

A host of a service's `ingress` without a `tls.secret` is served with a certificate
issued here: a server-only leaf (EKU serverAuth, no client use) for that one DNS name,
with no shoal identity in it (no SPIFFE URI), so it can never pass as a node or a
client of the cluster's own API. The key is made on the node, kept in memory only, and
the certificate is issued again when two thirds of its lifetime have passed. Clients
verify it against the cluster CA (`shoal cluster ca` / the `ca.pem` a dev cluster
writes); browsers do not trust it: for public sites put a real certificate in a secret.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.security.ca import ClusterCA, _leaf_usage, cert_pem, new_private_key, private_key_pem

SITE_LIFETIME = timedelta(days=30)
MAX_BACKDATE = timedelta(minutes=5)


def issue_site(ca: ClusterCA, host: str, now: datetime | None = None) -> tuple[bytes, bytes, datetime]:
    """(key PEM, certificate chain PEM: the leaf then the CA, renew after) for `host`
    (a DNS name or an IP address)."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    key = new_private_key()
    try:
        name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        name = x509.DNSName(host)
    end = min(now + SITE_LIFETIME, ca.cert.not_valid_after_utc)
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - MAX_BACKDATE)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([name]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    renew = now + (end - now) * 2 / 3
    chain = cert_pem(cert) + ca.cert_pem
    return private_key_pem(key), chain, renew
