"""etcd's own PKI: a CA, etcd's server certificate, and client certificates for shoal.

etcd holds everything (specs, `secret_env`, tokens, the sealed CA key), so nothing but
shoal's hosts may talk to it: etcd listens with TLS and `--client-cert-auth`, and
every daemon (and `shoal cluster init`) presents a client certificate of this CA
(`etcd_ca`, `etcd_cert`, `etcd_key`). The CA is etcd's own, apart from the cluster
CA: it must exist before etcd starts, which is before the cluster CA can be stored.

`shoal dev` makes one in `<data dir>/etcd/pki`; for production run

    python -m node.security.etcd_pki --out /etc/shoal/etcd-pki --host 10.0.0.5 \
        --host etcd1.internal --client n1 --client n2

(or `deploy/etcd/make-certs.sh`), which prints etcd's flags and shoald's settings.
Layout (directory 0700, every key 0600, written atomically):

| file | what |
|---|---|
| `ca.crt`, `ca.key` | the etcd CA; keep `ca.key` off the etcd and shoal hosts once done |
| `server.crt`, `server.key` | etcd's certificate (server and peer; SANs: every `--host`) |
| `client-<name>.crt`, `client-<name>.key` | a client certificate (CN `<name>`) per shoal host |

Re-running with the same `--out` keeps the CA and makes only what is missing, so adding
a host later is `--client n3` again.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.security.files import read_secret, write_public, write_secret

if TYPE_CHECKING:
    from node.store.etcd import EtcdTls

CA_DAYS = 10 * 365
CERT_DAYS = 2 * 365
NAME = "[a-z0-9][a-z0-9.-]{0,62}"  # a client name becomes a file name: no '/', no '..'


def _valid_client(name: str) -> str:
    if not re.fullmatch(NAME, name) or ".." in name:
        raise ValueError(f"client name {name!r}: use 1-63 of a-z, 0-9, '.', '-'")
    return name


@dataclass(frozen=True)
class EtcdPki:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def client(self, name: str = "shoal") -> Path:
        return self.root / f"client-{_valid_client(name)}.crt"

    def client_key(self, name: str = "shoal") -> Path:
        return self.root / f"client-{_valid_client(name)}.key"

    def exists(self, clients: tuple[str, ...] = ("shoal",)) -> bool:
        paths = [self.ca, self.server, self.server_key, *(self.client(c) for c in clients)]
        return all(p.exists() for p in [*paths, *(self.client_key(c) for c in clients)])

    def server_flags(self) -> list[str]:
        """etcd's flags: TLS for clients and peers, a certificate of this CA required of both."""
        return [
            "--cert-file", str(self.server), "--key-file", str(self.server_key),
            "--trusted-ca-file", str(self.ca), "--client-cert-auth",
            "--peer-cert-file", str(self.server), "--peer-key-file", str(self.server_key),
            "--peer-trusted-ca-file", str(self.ca), "--peer-client-cert-auth",
        ]  # fmt: skip

    def client_flags(self, name: str = "shoal") -> list[str]:
        """shoald's and `shoal cluster init`'s flags for this client's certificate."""
        return [
            "--etcd-ca",
            str(self.ca),
            "--etcd-cert",
            str(self.client(name)),
            "--etcd-key",
            str(self.client_key(name)),
        ]

    def tls(self, name: str = "shoal") -> EtcdTls:
        from node.security.etcd_tls import read_etcd_tls  # here: making certificates needs no grpc

        return read_etcd_tls(str(self.ca), str(self.client(name)), str(self.client_key(name)))

    def make(self, hosts: list[str], clients: list[str] | None = None, now: datetime | None = None) -> None:
        """Make what is missing: the CA, etcd's certificate for `hosts`, and a client
        certificate per name in `clients` (default: one, `shoal`)."""
        clients = [_valid_client(c) for c in (clients or ["shoal"])]
        now = now or datetime.now(UTC)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        if self.ca.exists() and self.ca_key.exists():
            ca_cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
            loaded = serialization.load_pem_private_key(read_secret(self.ca_key), None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            ca_key = loaded
        else:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal etcd CA")])
            ca_cert = (
                _builder(subject, subject, ca_key.public_key(), now, CA_DAYS)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
                .sign(ca_key, hashes.SHA256())
            )
            write_secret(self.ca_key, _pem_key(ca_key))
            write_public(self.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
        if not (self.server.exists() and self.server_key.exists()):
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            self._issue(self.server, self.server_key, "etcd", names, True, ca_cert, ca_key, now)
        for name in clients:
            if not (self.client(name).exists() and self.client_key(name).exists()):
                self._issue(self.client(name), self.client_key(name), name, [], False, ca_cert, ca_key, now)

    def _issue(
        self,
        cert_path: Path,
        key_path: Path,
        cn: str,
        sans: list[x509.GeneralName],
        server: bool,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        now: datetime,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
                ca_cert.subject,
                key.public_key(),
                now,
                CERT_DAYS,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        write_secret(key_path, _pem_key(key))
        write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, now: datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m node.security.etcd_pki", description="make etcd's CA, server and client certificates"
    )
    ap.add_argument("--out", required=True, type=Path, help="directory (made 0700)")
    ap.add_argument("--host", action="append", required=True, help="etcd's address or DNS name (repeat)")
    ap.add_argument(
        "--client", action="append", help="a shoal host's client certificate name (repeat) [shoal]"
    )
    args = ap.parse_args(argv)
    pki = EtcdPki(args.out.resolve())
    try:
        pki.make(args.host, args.client)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    urls = ",".join(f"https://{h}:2379" for h in args.host)
    print(f"# etcd (each member; add its peer flags as usual, with https:// peer URLs):\n"
          f"etcd --listen-client-urls {urls} --advertise-client-urls {urls} \\\n  "
          + " ".join(pki.server_flags()))  # fmt: skip
    for name in args.client or ["shoal"]:
        ca, cert, key = pki.client_flags(name)[1::2]
        print(f"# shoald on {name} (/etc/shoal/shoal.toml), after copying these three files there:\n"
              f'etcd_ca = "{ca}"\netcd_cert = "{cert}"\netcd_key = "{key}"')  # fmt: skip
    print(f"# keep {pki.ca_key} offline once every certificate is made")
    return 0


if __name__ == "__main__":
    sys.exit(main())
