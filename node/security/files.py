"""Where a node keeps its TLS material on disk, and how secrets are written.

`<data_dir>/tls/`, mode 0700:

| file       | mode | what |
|------------|------|------|
| `ca.crt`   | 0644 | the cluster CA certificate (public; pinned by the join token's hash) |
| `node.pem` | 0600 | this node's private key (made here, never sent anywhere) and its certificate |
| `ca.pass`  | 0600 | the passphrase of the CA key kept (encrypted) in etcd |

Secrets are written to a temporary file created 0600 (never readable by others,
even for an instant), fsynced and renamed over the old one, so a crash leaves the
old file or the new one, never half of one. The node's key and certificate share one
file so that a renewal (new key, new certificate) replaces both at once. Reading a secret that group or others
can read is refused, as ssh does, so a mistake is noticed rather than lived with.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from node.model.atomic import write_atomic


class InsecureFile(PermissionError):
    """A secret file is readable by others; the message says which and how to fix it."""


def write_secret(path: Path, data: bytes) -> None:
    """Write `data` so that only this user can ever read it (0600), atomically."""
    write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o644)


def read_secret(path: Path) -> bytes:
    """Read a secret file; refuse one that group or others may read."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureFile(
            f"{path} can be read by other users (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )
    return path.read_bytes()


@dataclass(frozen=True)
class NodeFiles:
    """The TLS files of one node, under `<data_dir>/tls`."""

    root: Path

    @classmethod
    def of(cls, data_dir: Path) -> NodeFiles:
        return cls(data_dir / "tls")

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def identity(self) -> Path:
        return self.root / "node.pem"

    @property
    def ca_passphrase(self) -> Path:
        return self.root / "ca.pass"

    def exists(self) -> bool:
        return self.ca_cert.exists() and self.identity.exists()

    def save(self, ca_pem: bytes, key_pem: bytes, cert_pem: bytes) -> None:
        """Store the CA certificate, then the node's key and certificate in one atomic write."""
        write_public(self.ca_cert, ca_pem)
        write_secret(self.identity, key_pem.rstrip(b"\n") + b"\n" + cert_pem)

    def load(self) -> tuple[bytes, bytes, bytes]:
        """(ca, key, cert) PEMs; FileNotFoundError when the node has none yet."""
        key, cert = split_identity(read_secret(self.identity), self.identity)
        return self.ca_cert.read_bytes(), key, cert


def split_identity(pem: bytes, where: Path | str = "the identity") -> tuple[bytes, bytes]:
    """A key PEM and a certificate (chain) PEM, from one text holding both."""
    marker = b"-----BEGIN CERTIFICATE-----"
    at = pem.find(marker)
    if at <= 0 or b"PRIVATE KEY-----" not in pem[:at]:
        raise ValueError(f"{where} must hold a private key followed by its certificate (PEM)")
    return pem[:at], pem[at:]
