"""The cluster's security state in etcd: the CA, the join token and the client tokens.

`node.security.bootstrap` computes; this module stores and reads back (keys in
`node.model.keys`, under `security/` and `tokens/`):

- `security/ca.crt`: the CA certificate (public).
- `security/ca.key`: the CA key, PKCS#8 encrypted under the CA passphrase. The
  passphrase is only on the nodes' disks (`tls/ca.pass`), so etcd alone (a reader, a
  snapshot, a backup) yields no key.
- `security/join`: the current join token's certificate and key id (what the auth
  check admits) and the token itself, sealed (AES-256-GCM) under a key derived from
  the CA passphrase, so that `shoal cluster join-token` can show it again without
  etcd ever holding it in the clear. The certificate is issued again for the same
  token (`renew_join_cert`, same key id, its uses kept) once it is due as node
  certificates are (`ca.needs_renewal`, at 2/3 of its lifetime) or has expired:
  whenever the token is handed out (`join_token`: `shoal cluster join-token`, a node
  pool's new machine) and when a member admits a host (`node.api.join`), so a token
  handed out is good for at least a third of `Lifetimes.join`. One kept and used after
  its certificate expired (nobody asked for the token or joined meanwhile) is refused
  by `bootstrap.prepare_join` with what to do: `shoal cluster join-token` renews it.
- `tokens/<id>`: `StoredToken` records (hash, role; revoked ones are kept so that a
  caller learns why it fails).

Every write that must not race is a transaction: `initialise` only when there is no
CA yet (a second `cluster init` is refused, never overwrites), a token is created
only under a new id, a rotation or a revocation compares the mod revision it read.
Errors are `node.model.errors` types with a message that says what to do.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.model.errors import Conflict, FailedPrecondition, NotFound
from node.model.keys import Keys
from node.security import bootstrap, ca
from node.security.ca import CertError, ClusterCA, Lifetimes
from node.security.tokens import TOKEN_ID, JoinToken, Role, StoredToken
from node.store import Compare, Delete, Put, Store, StoreError
from node.store.retry import compare_and_swap

log = logging.getLogger(__name__)


def _aead(passphrase: bytes, purpose: str) -> AESGCM:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"shoal seal v1 {purpose}".encode()
    ).derive(passphrase)
    return AESGCM(key)


def seal(passphrase: bytes, plaintext: bytes, purpose: str) -> str:
    """AES-256-GCM under a key derived from `passphrase` for `purpose`; base64 text."""
    nonce = os.urandom(12)
    return base64.b64encode(nonce + _aead(passphrase, purpose).encrypt(nonce, plaintext, None)).decode()


def unseal(passphrase: bytes, sealed: str, purpose: str) -> bytes:
    """The plaintext of `seal`; `CertError` when the passphrase is wrong or the text was changed."""
    try:
        raw = base64.b64decode(sealed, validate=True)
        return _aead(passphrase, purpose).decrypt(raw[:12], raw[12:], None)
    except (InvalidTag, ValueError):
        raise CertError(
            f"the sealed {purpose} cannot be opened: this node's CA passphrase (tls/ca.pass) is not "
            "the cluster's, or etcd's copy was changed"
        ) from None


@dataclass(frozen=True, repr=False)
class JoinRecord:
    """`security/join`: what a joiner dials with and what the auth check admits."""

    cert: bytes  # PEM of the join certificate (public)
    key_id: str  # ca.key_id of the join key
    sealed_token: str  # the token, `seal`ed under the CA passphrase
    since: str  # ISO 8601, UTC: when this token was made

    def to_json(self) -> bytes:
        data = {
            "cert": self.cert.decode(),
            "key_id": self.key_id,
            "sealed_token": self.sealed_token,
            "since": self.since,
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> JoinRecord:
        data = json.loads(raw)
        return cls(data["cert"].encode(), data["key_id"], data["sealed_token"], data.get("since", ""))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _join_record(join: bootstrap.JoinSecrets, passphrase: bytes) -> JoinRecord:
    return JoinRecord(
        join.cert, join.key_id, seal(passphrase, str(join.token).encode(), "join token"), _now()
    )


NOT_INITIALISED = (
    "this cluster has no CA yet (nothing under {prefix}security/ in etcd): run `shoal cluster init` "
    "on the first host (`shoal dev` does it for a local cluster)"
)


class ClusterSecurity:
    """The security records of one cluster (one key prefix) in a `Store`."""

    def __init__(self, store: Store, keys: Keys, cluster: str, lifetimes: Lifetimes | None = None) -> None:
        self.store = store
        self.keys = keys
        self.cluster = cluster
        self.lifetimes = lifetimes or Lifetimes()

    def _not_initialised(self) -> FailedPrecondition:
        return FailedPrecondition(NOT_INITIALISED.format(prefix=self.keys.prefix))

    # -- init and the CA -------------------------------------------------------------

    async def initialised(self) -> bool:
        return await self.store.get(self.keys.ca_cert) is not None

    async def initialise(
        self, admin: str = "admin"
    ) -> tuple[ClusterCA, bootstrap.ClusterSecrets, bootstrap.ClientCredentials]:
        """Make the CA, the first join token and the first admin's credentials (a token and
        a client certificate named `admin`) and store them in one transaction, once: a
        cluster that already has a CA is refused (FailedPrecondition), never overwritten."""
        made = self.prepare(admin)
        await self.store_initial(*made)
        return made

    def prepare(
        self, admin: str = "admin"
    ) -> tuple[ClusterCA, bootstrap.ClusterSecrets, bootstrap.ClientCredentials]:
        """The CA, the first join token and the first admin's credentials, in memory only
        (`store_initial` stores them): a caller can put the passphrase on disk first."""
        authority, secrets = bootstrap.init_cluster(self.cluster, self.lifetimes)
        first = bootstrap.client_credentials(
            authority, admin, Role.ADMIN, "the first admin, made by cluster init", self.lifetimes
        )
        return authority, secrets, first

    async def store_initial(
        self, authority: ClusterCA, secrets: bootstrap.ClusterSecrets, first: bootstrap.ClientCredentials
    ) -> None:
        """Store what `prepare` made, in one transaction, once (FailedPrecondition when the
        cluster already has a CA)."""
        result = await self.store.txn(
            [Compare(self.keys.ca_cert, "create", "==", 0)],
            [
                Put(self.keys.ca_cert, secrets.ca_cert),
                Put(self.keys.ca_key, secrets.ca_key_encrypted),
                Put(self.keys.join, _join_record(secrets.join, secrets.ca_passphrase).to_json()),
                Put(self.keys.token(first.record.id), first.record.to_json()),
            ],
        )
        if not result.succeeded:
            raise FailedPrecondition(
                f"the cluster under {self.keys.prefix} in etcd is already initialised (it has a CA); "
                "to add this host, start shoald with the join token (`shoal cluster join-token` on a member)"
            )

    async def ca_cert(self) -> bytes:
        kv = await self.store.get(self.keys.ca_cert)
        if kv is None:
            raise self._not_initialised()
        return kv.value

    async def load_ca(self, passphrase: bytes) -> ClusterCA:
        """The CA with its key, decrypted with this node's passphrase."""
        cert, key = await self.store.get(self.keys.ca_cert), await self.store.get(self.keys.ca_key)
        if cert is None or key is None:
            raise self._not_initialised()
        return ClusterCA.load(self.cluster, cert.value, key.value, passphrase)

    # -- the join token ----------------------------------------------------------------

    async def join_record(self) -> tuple[JoinRecord, int]:
        kv = await self.store.get(self.keys.join)
        if kv is None:
            raise self._not_initialised()
        return JoinRecord.from_json(kv.value), kv.mod_revision

    async def join_material(self) -> tuple[bytes, bytes]:
        """(CA certificate, join certificate): what a joining host reads from etcd."""
        record, _ = await self.join_record()
        return await self.ca_cert(), record.cert

    async def join_token(self, passphrase: bytes, now: datetime | None = None) -> JoinToken:
        """The current join token, to hand out: its certificate renewed first when due
        (`renew_join_cert`; a failure to is logged, and the token still returned)."""
        record, _ = await self.join_record()
        token = JoinToken.parse(unseal(passphrase, record.sealed_token, "join token").decode())
        if ca.needs_renewal(ca.load_cert(record.cert), now):
            try:
                await self.renew_join_cert(passphrase, now)
            except (CertError, Conflict, StoreError) as exc:
                log.warning("the join certificate is due for renewal and was not renewed: %s", exc)
        return token

    async def renew_join_cert(self, passphrase: bytes, now: datetime | None = None) -> bool:
        """Issue the current join token's certificate again if it is due (`ca.needs_renewal`,
        as node certificates) or expired: the same token and key id, its uses kept, so
        nothing is rotated. True when a new certificate was stored; False when none was
        due (or the CA, near its own end, cannot give a longer one); CertError when the CA
        is too near its end to sign one at all (`ClusterCA.issue`)."""
        authority: ClusterCA | None = None

        async def attempt() -> bool | None:
            nonlocal authority
            record, mod = await self.join_record()
            old = ca.load_cert(record.cert)
            if not ca.needs_renewal(old, now):
                return False
            authority = authority or await self.load_ca(passphrase)
            token = JoinToken.parse(unseal(passphrase, record.sealed_token, "join token").decode())
            if ca.key_id(token.private_key()) != record.key_id:
                raise CertError("etcd's join record holds a token that does not match its key id")
            cert = bootstrap.join_certificate(authority, token, self.lifetimes, now)
            if ca.load_cert(cert).not_valid_after_utc <= old.not_valid_after_utc:
                return False
            result = await self.store.txn(
                [Compare(self.keys.join, "mod", "==", mod)],
                [Put(self.keys.join, replace(record, cert=cert).to_json())],
            )
            return True if result.succeeded else None

        renewed = await compare_and_swap(attempt, "the join token is being changed concurrently; try again")
        if renewed:
            log.info("join certificate renewed (the join token is unchanged)")
        return renewed

    async def rotate_join_token(self, passphrase: bytes) -> tuple[JoinToken, int]:
        """A new join token and the etcd revision of the write; from then, the old one
        admits no one."""
        authority = await self.load_ca(passphrase)

        async def attempt() -> tuple[JoinToken, int] | None:
            _, mod = await self.join_record()
            join = bootstrap.new_join_token(authority, self.lifetimes)
            result = await self.store.txn(
                [Compare(self.keys.join, "mod", "==", mod)],
                [
                    Put(self.keys.join, _join_record(join, passphrase).to_json()),
                    Delete(self.keys.joins, prefix=True),  # the old token's uses (node.security.join_uses)
                ],
            )
            return (join.token, result.revision) if result.succeeded else None

        return await compare_and_swap(attempt, "the join token is being rotated concurrently; try again")

    # -- client tokens -------------------------------------------------------------------

    async def add_token(self, record: StoredToken) -> int:
        """Store a new token record; the etcd revision of the write."""
        key = self.keys.token(record.id)
        result = await self.store.txn([Compare(key, "create", "==", 0)], [Put(key, record.to_json())])
        if not result.succeeded:
            raise Conflict(f"a token with id {record.id} already exists; try again")
        return result.revision

    async def tokens(self) -> list[StoredToken]:
        kvs, _ = await self.store.range(self.keys.tokens)
        return sorted((StoredToken.from_json(kv.value) for kv in kvs), key=lambda t: (t.created, t.id))

    async def revoke_token(self, token_id: str) -> tuple[StoredToken, int]:
        """Mark a token revoked (idempotent); the record and the etcd revision of the write."""
        if not TOKEN_ID.fullmatch(token_id):
            raise NotFound(f"token {token_id[:40]!r} not found; `shoal token ls` lists the tokens")
        key = self.keys.token(token_id)

        async def attempt() -> tuple[StoredToken, int] | None:
            kv = await self.store.get(key)
            if kv is None:
                raise NotFound(f"token {token_id} not found; `shoal token ls` lists the tokens")
            record = StoredToken.from_json(kv.value)
            if record.revoked:
                return record, kv.mod_revision
            revoked = replace(record, revoked=_now())
            result = await self.store.txn(
                [Compare(key, "mod", "==", kv.mod_revision)], [Put(key, revoked.to_json())]
            )
            return (revoked, result.revision) if result.succeeded else None

        return await compare_and_swap(attempt, f"token {token_id} is being changed concurrently; try again")
