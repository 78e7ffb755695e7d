"""`EtcdTls` read from the PEM files named in the configuration (`etcd_ca`, `etcd_cert`,
`etcd_key`), the key refused when others may read it.

It lives here, not on `EtcdTls` in `node.store.etcd`, so that the store never imports
`node.security` (which imports the store): the arrow goes one way, security -> store.
"""

from __future__ import annotations

from pathlib import Path

from node.security.files import read_secret
from node.store.etcd import EtcdTls


def read_etcd_tls(ca: str, cert: str = "", key: str = "", server_name: str = "") -> EtcdTls:
    """Read the PEM files (the key refused when others may read it); empty names: none."""
    return EtcdTls(
        Path(ca).read_bytes(),
        Path(cert).read_bytes() if cert else None,
        read_secret(Path(key)) if key else None,
        server_name or None,
    )
