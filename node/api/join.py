"""The member's side of a join (`shoal.v1.Peer/Join`): sign a new host's node certificate.

Only a caller holding the current join token's certificate gets here
(`node.security.auth` checks its key against `security/join`). This handler checks
what the new host asks for: a CSR for a node of this cluster with a valid node id
and at most a few addresses, and a node id that no live node of another address
holds (a host cannot take over a running node's name, and with it its tasks). Then
it signs with the CA from etcd, records the token's use (`node.security.join_uses`: never a
running node's id, a node id once per token (the same CSR asked again, after a lost
answer, is the same use), at most `max_uses` hosts; all in one etcd transaction) and
answers with the CA key's passphrase, which makes the new host a full member (it can
renew itself and admit others, as any node). A join certificate due for renewal is then
issued again for the same token (`ClusterSecurity.renew_join_cert`; a failure to is
logged, the join is not refused for it).
"""

from __future__ import annotations

import ipaddress
import logging
import re

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from node.api.admin import MAX_CSR_BYTES, Signer
from node.model.domain import NodeInfo
from node.model.errors import FailedPrecondition, InvalidArgument, ShoalError, Unavailable
from node.model.keys import Keys
from node.pb import peer_pb2
from node.security import bootstrap, ca, join_uses
from node.security.ca import CertError, Kind
from node.store import Store, StoreError

log = logging.getLogger(__name__)

MAX_NAMES = 16
_NODE_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # node.model.config.NODE_ID


def _caller_key(context: grpc.aio.ServicerContext) -> str | None:
    """`ca.key_id` of the caller's certificate (the join token's key), if it has one."""
    pems = list(context.auth_context().get("x509_pem_cert") or [])
    if not pems:
        return None
    public = ca.load_cert(bytes(pems[0])).public_key()
    return ca.key_id(public) if isinstance(public, ec.EllipticCurvePublicKey) else None


class JoinHandler:
    def __init__(
        self, store: Store, keys: Keys, node: str, signer: Signer, max_uses: int = join_uses.DEFAULT_MAX_USES
    ) -> None:
        self.store = store
        self.keys = keys
        self.node = node
        self.signer = signer
        self.max_uses = max_uses

    def _check(self, request: peer_pb2.JoinRequest) -> tuple[str, str, list[str], list[str]]:
        """(node id, `ca.key_id` of the CSR's key, IPs, DNS names) of a well-formed request."""
        if not request.csr or len(request.csr) > MAX_CSR_BYTES:
            raise InvalidArgument(f"csr: a PEM certificate request of at most {MAX_CSR_BYTES // 1024} KiB")
        try:
            asked, public = ca.read_csr(request.csr)
        except CertError as exc:
            raise InvalidArgument(f"csr: {exc}") from None
        cluster = self.signer.security.cluster
        if asked.kind is not Kind.NODE or asked.cluster != cluster:
            raise InvalidArgument(f"csr: asks for {asked.uri}, not spiffe://shoal/{cluster}/node/<node-id>")
        if not _NODE_ID.fullmatch(asked.name):
            raise InvalidArgument(f"csr: {asked.name!r} is not a node id (1-63 of a-z, 0-9, '-')")
        if not request.addresses or len(request.addresses) + len(request.dns_names) > MAX_NAMES:
            raise InvalidArgument(f"addresses: one to {MAX_NAMES} addresses (and DNS names) in all")
        for ip in request.addresses:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise InvalidArgument(f"addresses: {ip[:60]!r} is not an IP address") from None
        return asked.name, ca.key_id(public), list(request.addresses), list(request.dns_names)

    async def join(
        self, request: peer_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.JoinResponse:
        node_id, csr_key, ips, dns = self._check(request)
        kv = await self.store.get(self.keys.node(node_id))
        if kv is not None:
            other = NodeInfo.from_json(kv.value)
            raise FailedPrecondition(
                f"node id {node_id!r} is already running at {other.address}:{other.grpc_port}; "
                "give the new host another --node-id (or wait until that node's lease expires)"
            )
        record, join_mod = await self.signer.security.join_record()
        if _caller_key(context) != record.key_id:  # rotated since the auth check let it in
            raise FailedPrecondition(
                "this join token was rotated meanwhile; get the current one with `shoal cluster join-token`"
            )
        try:
            passphrase = self.signer.passphrase()
            authority = await self.signer.security.load_ca(passphrase)
        except CertError as exc:
            raise Unavailable(f"member {self.node} cannot sign: {exc}; try another member") from None
        try:
            cert = bootstrap.grant_join(authority, request.csr, node_id, ips, dns, self.signer.lifetimes)
        except CertError as exc:
            raise InvalidArgument(f"csr: {exc}") from None
        use = await join_uses.record_join(
            self.store,
            self.keys,
            record.key_id,
            join_mod,
            node_id,
            ips + dns,
            self.node,
            self.max_uses,
            key=csr_key,
        )
        log.info(
            "signed a node certificate for %s (%s) on its join (use %d of %d of this join token)",
            node_id,
            ", ".join(ips + dns),
            use,
            self.max_uses,
        )
        if ca.needs_renewal(ca.load_cert(record.cert)):
            try:
                await self.signer.security.renew_join_cert(passphrase)
            except (CertError, ShoalError, StoreError) as exc:
                log.warning("the join certificate is due for renewal and was not renewed: %s", exc)
        return peer_pb2.JoinResponse(
            certificate=cert, ca_certificate=authority.cert_pem, ca_passphrase=passphrase, member=self.node
        )
