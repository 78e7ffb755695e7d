"""Sealing secrets at rest: AES-256-GCM under the cluster key, bound to what they are.

The cluster key is derived (HKDF-SHA256, its own `info`) from the CA passphrase, which
is only on the nodes' disks (`tls/ca.pass`, `node.security.cluster`): etcd, a snapshot
or a backup of it holds only ciphertext. Every seal draws a fresh 96-bit nonce, and the
associated data names the value (`secret/<name>`, `secret_env/<service>/<VAR>`), so a
sealed value copied to another name or variable does not open.

A sealed value is text: `shoal-sealed:v1:` + base64(nonce || ciphertext || tag). Any
other text in a place that is sealed is a value written before sealing existed (a
`secret_env` stored by an older version) and is taken as it is (`is_sealed`).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "shoal-sealed:v1:"
_INFO = b"shoal cluster key v1 secrets"
_NONCE = 12


class SealError(Exception):
    """A sealed value does not open: another cluster key, another name, or altered text."""


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def secret_ad(name: str) -> str:
    return f"secret/{name}"


def secret_env_ad(service: str, var: str) -> str:
    return f"secret_env/{service}/{var}"


def derive_key(passphrase: bytes) -> bytes:
    """The 32-byte cluster key of a CA passphrase (never stored anywhere)."""
    if not passphrase:
        raise SealError("the CA passphrase is empty: this node cannot seal or open secrets")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(passphrase)


class Sealer:
    """Seals and opens with the cluster key derived from `passphrase()` (read when needed,
    so a node whose passphrase file appears later, after a join, uses it)."""

    def __init__(self, passphrase: Callable[[], bytes]) -> None:
        self._passphrase = passphrase
        self._cache: tuple[bytes, AESGCM] | None = None

    def _aead(self) -> AESGCM:
        phrase = self._passphrase()
        if self._cache is None or self._cache[0] != phrase:
            self._cache = (phrase, AESGCM(derive_key(phrase)))
        return self._cache[1]

    def seal(self, plaintext: bytes, ad: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead().encrypt(nonce, plaintext, ad.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, ad: str) -> bytes:
        if not is_sealed(sealed):
            raise SealError(f"{ad}: not a sealed value")
        try:
            raw = base64.b64decode(sealed[len(PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise SealError(f"{ad}: the sealed value is not valid base64 (altered in etcd?)") from None
        if len(raw) < _NONCE + 16:
            raise SealError(f"{ad}: the sealed value is too short (altered in etcd?)")
        try:
            return self._aead().decrypt(raw[:_NONCE], raw[_NONCE:], ad.encode())
        except InvalidTag:
            raise SealError(
                f"{ad}: the sealed value does not open: this node's CA passphrase (tls/ca.pass) is "
                "not the cluster's, or the value was altered or copied from another name"
            ) from None
