"""This node's certificate: loaded, obtained by joining, renewed without a restart.

At start (`load`, then `ensure`):
1. `<data_dir>/tls` holds the node's key and certificate (`node.security.files`): they
   are checked against the cluster's CA in etcd, this node's id and address.
2. Otherwise, with a join token (`join_token`, SHOAL_JOIN_TOKEN, `join_token_file`)
   the node joins: it reads the CA and the join certificate from etcd, checks them
   against the token (`bootstrap.prepare_join`: the CA hash pins the CA), dials a
   registered member with the join certificate and asks it to sign a CSR for a key
   made here. The answer brings the CA key's passphrase, so this node can renew
   itself and admit others later.
3. Otherwise the daemon refuses to start, saying how to get a certificate.

`run` renews the certificate at 2/3 of its lifetime (`ca.renew_at`): a new key and
certificate signed with the CA from etcd, written atomically, served from the next
handshake on (`rpc.ServerTls.update`), and handed to `on_renewed` callbacks, which
open new client channels. Nothing restarts; open connections are kept. A failed
renewal is retried every few seconds and logged (never with a key or a token). At each
of its wakes (hourly at least) it also renews the cluster's join certificate when due
(`renew_join_cert`), so a join token nobody asked for in a year still joins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
from cryptography import x509

from node.model.config import NodeConfig
from node.model.domain import NodeInfo
from node.model.errors import ShoalError
from node.model.keys import Keys
from node.pb import peer_pb2, peer_pb2_grpc
from node.security import bootstrap, ca
from node.security.ca import CertError, Identity, Kind, Lifetimes
from node.security.cluster import ClusterSecurity
from node.security.files import NodeFiles, read_secret, write_secret
from node.security.provision import split_address
from node.security.tokens import JoinToken, TokenError
from node.store import Store, StoreError
from node.store.retry import patiently
from node.wire import rpc

log = logging.getLogger(__name__)

RETRY = 5.0  # s between renewal attempts after a failure
JOIN_CHECK = 3600.0  # s between checks of the join certificate (one etcd read each)
JOIN_TIMEOUT = 10.0  # s for one Join call


class IdentityError(Exception):
    """This node has no usable certificate and cannot get one; the message says what to do."""


def read_join_token(config: NodeConfig) -> str:
    """The join token from the config or its file; "" when there is none."""
    if config.join_token_file:
        try:
            return read_secret(Path(config.join_token_file)).decode().strip()
        except OSError as exc:
            raise IdentityError(f"join_token_file: cannot read {config.join_token_file}: {exc}") from None
    return config.join_token.strip()


class NodeIdentity:
    def __init__(self, config: NodeConfig, store: Store, keys: Keys) -> None:
        self.config = config
        self.store = store
        self.keys = keys
        self.files = NodeFiles.of(config.data_dir)
        self.security = ClusterSecurity(store, keys, config.cluster, self.lifetimes)
        self.identity = Identity(config.cluster, Kind.NODE, config.node_id)
        self.ips, self.dns = split_address(config.address)
        self.server_tls: rpc.ServerTls | None = None
        self._client_tls: rpc.ClientTls | None = None
        self._cert: x509.Certificate | None = None
        self._listeners: list[Callable[[rpc.ClientTls], None]] = []
        self.renewals = 0

    @property
    def lifetimes(self) -> Lifetimes:
        return Lifetimes(node=timedelta(seconds=self.config.cert_lifetime))

    @property
    def client_tls(self) -> rpc.ClientTls | None:
        """What this node dials its peers with (None before `ensure`)."""
        return self._client_tls

    def on_renewed(self, callback: Callable[[rpc.ClientTls], None]) -> None:
        self._listeners.append(callback)

    def passphrase(self) -> bytes:
        """The CA key's passphrase, from this node's disk."""
        try:
            return read_secret(self.files.ca_passphrase).strip()
        except FileNotFoundError:
            raise CertError(
                f"{self.files.ca_passphrase} is missing: this node cannot sign certificates"
            ) from None

    # -- start -------------------------------------------------------------------------

    def load(self) -> bool:
        """Read the node's TLS files if there are any (no checks yet); True when found."""
        try:
            ca_pem, key, cert = self.files.load()
        except FileNotFoundError:
            return False
        except (ValueError, PermissionError) as exc:  # not PEM; readable by others (InsecureFile)
            raise IdentityError(f"{self.files.identity}: {exc}") from None
        try:
            self._use(ca_pem, key, cert)
        except CertError as exc:
            raise IdentityError(
                f"{self.files.root} holds no usable key and certificate ({exc}); remove it and join again"
            ) from None
        return True

    async def ensure(self) -> None:
        """A valid certificate for this node of this cluster, or `IdentityError`."""
        try:
            cluster_ca = await self.security.ca_cert()
        except ShoalError as exc:
            raise IdentityError(str(exc)) from None
        if self._client_tls is None:
            token = read_join_token(self.config)
            if not token:
                raise IdentityError(
                    f"this node has no certificate ({self.files.identity}) and no join token: to add it "
                    "to the cluster, set SHOAL_JOIN_TOKEN (or join_token_file) to the output of "
                    "`shoal cluster join-token` on a member; on the first host run `shoal cluster init`"
                )
            await self.join(token)
            return
        if ca.fingerprint(cluster_ca) != ca.fingerprint(self._client_tls.ca_pem):
            raise IdentityError(
                f"{self.files.ca_cert} is not the CA of the cluster under {self.keys.prefix} in etcd: "
                f"this data dir belongs to another cluster; use another --data-dir (or remove "
                f"{self.files.root} and join with a join token)"
            )
        if not self.files.ca_passphrase.exists():  # a join cut off between its two writes (older shoal)
            raise IdentityError(
                f"this node has a certificate but no CA passphrase ({self.files.ca_passphrase}): it could "
                "not open secrets nor renew its certificate. Copy that file (mode 0600) from a member's "
                f"data dir, or remove {self.files.root} and join again with a new join token "
                "(`shoal cluster rotate-token`)"
            )
        problem = self._problem(self._client_tls)
        if problem is not None:
            log.info("node certificate %s; renewing it now", problem)
            try:
                await self.renew()
            except (CertError, ShoalError, StoreError) as exc:
                raise IdentityError(f"the node certificate {problem} and cannot be renewed: {exc}") from None

    def _problem(self, tls: rpc.ClientTls) -> str | None:
        """Why this certificate must be replaced now, or None."""
        cert = ca.load_cert(tls.cert_pem)
        try:
            identity = ca.verify(ca.load_cert(tls.ca_pem), cert, self.config.cluster)
        except CertError as exc:
            return f"is not usable ({exc})"
        if identity != self.identity:
            return f"is for {identity}, not node {self.config.node_id}"
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        names = set(san.get_values_for_type(x509.DNSName))
        if not set(self.ips) <= ips or not {d.lower() for d in self.dns} <= names:
            return f"does not name the address {self.config.address}"
        if ca.needs_renewal(cert):
            return f"is due for renewal (valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)"
        return None

    def _use(self, ca_pem: bytes, key: bytes, cert: bytes) -> None:
        if self.server_tls is None:
            self.server_tls = rpc.ServerTls(ca_pem, key, cert)
        else:
            self.server_tls.update(key, cert, ca_pem)
        self._client_tls = rpc.ClientTls(ca_pem, key, cert)
        self._cert = ca.load_cert(cert)

    # -- join --------------------------------------------------------------------------

    async def join(self, token_text: str) -> None:
        try:
            token = JoinToken.parse(token_text)
            ca_pem, join_cert = await self.security.join_material()
            attempt = bootstrap.prepare_join(
                token, self.config.cluster, self.config.node_id, ca_pem, join_cert
            )
        except (TokenError, CertError, ShoalError) as exc:
            raise IdentityError(f"cannot join: {exc}") from None
        targets = await self._members()
        if not targets:
            raise IdentityError(
                f"cannot join: no member is registered in etcd under {self.keys.nodes} to ask for a "
                "certificate; start the first node (after `shoal cluster init`) first"
            )
        request = peer_pb2.JoinRequest(csr=attempt.csr, addresses=self.ips, dns_names=self.dns)
        tried: list[str] = []
        for target in targets:
            try:
                async with rpc.aio_channel(target, attempt.tls) as channel:
                    answer = await peer_pb2_grpc.PeerStub(channel).Join(request, timeout=JOIN_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    raise IdentityError(f"cannot join: {target} refused: {details}") from None
                tried.append(f"{target} ({code.name})")
                continue
            if answer.ca_certificate != ca_pem:
                raise IdentityError(f"cannot join: {target} answered with another CA than the token pins")
            try:
                bootstrap.accept_certificate(ca_pem, attempt.key, answer.certificate, self.identity)
            except CertError as exc:
                raise IdentityError(
                    f"cannot join: the certificate from {target} is not usable: {exc}"
                ) from None
            if answer.ca_passphrase:  # first: a node.pem on disk is what says "joined" at the next start
                write_secret(self.files.ca_passphrase, answer.ca_passphrase)
            self.files.save(ca_pem, attempt.key, answer.certificate)
            self._use(ca_pem, attempt.key, answer.certificate)
            log.info("joined the cluster: node certificate signed by %s", answer.member or target)
            return
        raise IdentityError(f"cannot join: no member answered ({', '.join(tried)})")

    async def _members(self) -> list[str]:
        kvs, _ = await self.store.range(self.keys.nodes)
        found = []
        for kv in kvs:
            info = NodeInfo.from_json(kv.value)
            if info.id != self.config.node_id:
                found.append(f"{info.address}:{info.grpc_port}")
        return found + [s for s in self.config.join if s not in found]

    # -- renewal -----------------------------------------------------------------------

    async def renew(self) -> None:
        """A new key and certificate, signed by the cluster CA (read from etcd), in use at once."""
        authority = await self.security.load_ca(self.passphrase())
        issued = bootstrap.node_identity(authority, self.config.node_id, self.ips, self.dns, self.lifetimes)
        self.files.save(authority.cert_pem, issued.key, issued.cert)
        self._use(authority.cert_pem, issued.key, issued.cert)
        self.renewals += 1
        assert self._cert is not None and self._client_tls is not None
        log.info(
            "node certificate renewed: valid until %s UTC",
            self._cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for callback in self._listeners:
            callback(self._client_tls)

    async def run(self) -> None:
        """Renew the certificate whenever it is due, forever (a renewal that fails is
        tried again every `RETRY` seconds until it succeeds)."""
        renewing = patiently(
            "node certificate not renewed yet",
            retry_on=(CertError, ShoalError, StoreError, OSError),
            first=RETRY,
            most=RETRY,
            logger=log,
        )
        while True:  # not a retry: sleep until the certificate is due
            assert self._cert is not None
            wait = (ca.renew_at(self._cert) - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(0.0, min(wait, JOIN_CHECK)))
            await self.renew_join_cert()
            if datetime.now(UTC) >= ca.renew_at(self._cert):
                await renewing(self.renew)

    async def renew_join_cert(self) -> None:
        """The cluster's join certificate issued again for the same token once it is due
        (`ClusterSecurity.renew_join_cert`; any member may, the first write wins): checked
        at every wake of `run`, at least hourly, so a token kept unused for a year still
        joins. A failure is logged and tried at the next wake."""
        try:
            await self.security.renew_join_cert(self.passphrase())
        except (CertError, ShoalError, StoreError, OSError) as exc:
            log.warning("the cluster's join certificate could not be checked or renewed: %s", exc)
