"""The client API's security calls (admin only): client tokens and the join token.

`node.security.auth` has already admitted the caller (these methods are in no role's
table, so only an admin token reaches them, and never a node certificate). What is
here: check every field, store through `ClusterSecurity`, and wait until this node's
own credential mirror has the change, so that the caller's next call sees it.

A token's secret is in exactly one answer (`CreateToken`) and nowhere else: not in
etcd (a hash), not in a log line (the id only), not in an error message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from node.api.server import handle
from node.model.errors import FailedPrecondition, InvalidArgument
from node.pb import api_pb2
from node.security import ca
from node.security.auth import current_caller
from node.security.ca import CertError, ClusterCA, Kind, Lifetimes
from node.security.cluster import ClusterSecurity
from node.security.credentials import EtcdCredentials
from node.security.tokens import TOKEN_ID, StoredToken, TokenError, parse_role

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 200
MAX_CSR_BYTES = 16 * 1024
MAX_EXPIRES_IN = 10 * 365 * 86400  # s
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]*")


@dataclass
class Signer:
    """What a node needs to sign and to change the cluster's security records."""

    security: ClusterSecurity
    passphrase: Callable[[], bytes]  # the CA key's passphrase, read from this node's disk
    lifetimes: Lifetimes
    credentials: EtcdCredentials | None = None  # this node's mirror, to wait for its own writes

    async def authority(self) -> ClusterCA:
        return await self.security.load_ca(self.passphrase())

    async def caught_up(self, key: str, revision: int) -> None:
        if self.credentials is not None:
            await self.credentials.caught_up(key, revision)


def token_info(t: StoredToken) -> api_pb2.TokenInfo:
    return api_pb2.TokenInfo(
        id=t.id,
        role=t.role,
        description=t.description,
        created=t.created,
        expires=t.expires,
        revoked=t.revoked,
    )


def _caller() -> str:
    caller = current_caller()
    return str(caller) if caller is not None else "?"


def check_text(value: str, what: str, longest: int) -> str:
    if len(value) > longest or not _PRINTABLE.fullmatch(value):
        raise InvalidArgument(f"{what}: at most {longest} characters, no control characters")
    return value


class AdminHandlers:
    """The security RPCs of `shoal.v1.Shoal`, mixed into its servicer. `signer` is set by
    the daemon; a servicer without one (tests, a node without security) refuses them."""

    signer: Signer | None = None

    def _signer(self) -> Signer:
        if self.signer is None:
            raise FailedPrecondition("this node does not manage the cluster's security")
        return self.signer

    @handle
    async def CreateToken(
        self, request: api_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.CreateTokenResponse:
        signer = self._signer()
        try:
            role = parse_role(request.role[:40])
        except TokenError as exc:
            raise InvalidArgument(f"role: {exc}") from None
        description = check_text(request.description, "description", MAX_DESCRIPTION)
        if request.expires_in > MAX_EXPIRES_IN:
            raise InvalidArgument(f"expires_in: at most {MAX_EXPIRES_IN} seconds (10 years); 0 never expires")
        client_cert = b""
        authority: ClusterCA | None = None
        if request.csr:
            if len(request.csr) > MAX_CSR_BYTES:
                raise InvalidArgument(f"csr: larger than {MAX_CSR_BYTES // 1024} KiB")
            try:
                asked, _ = ca.read_csr(request.csr)
            except CertError as exc:
                raise InvalidArgument(f"csr: {exc}") from None
            if asked.kind is not Kind.CLIENT or asked.cluster != signer.security.cluster:
                raise InvalidArgument(
                    f"csr: asks for {asked.uri}; a token's certificate is "
                    f"spiffe://shoal/{signer.security.cluster}/client/<name>"
                )
            authority = await signer.authority()
            client_cert = authority.sign_csr(request.csr, asked, lifetime=signer.lifetimes.client)
        # read before the token is stored: etcd failing after the store left a token whose
        # secret no one ever received (an admin one, until revoked by hand)
        ca_pem = authority.cert_pem if authority is not None else await signer.security.ca_cert()
        expires = datetime.now(UTC) + timedelta(seconds=request.expires_in) if request.expires_in else None
        token, record = StoredToken.issue(role, description, expires)
        revision = await signer.security.add_token(record)
        await signer.caught_up(signer.security.keys.token(record.id), revision)
        log.info("token %s (%s) created by %s", record.id, record.role, _caller())
        return api_pb2.CreateTokenResponse(
            token=str(token), info=token_info(record), client_certificate=client_cert, ca_certificate=ca_pem
        )

    @handle
    async def ListTokens(
        self, request: api_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListTokensResponse:
        tokens = await self._signer().security.tokens()
        return api_pb2.ListTokensResponse(tokens=[token_info(t) for t in tokens])

    @handle
    async def RevokeToken(
        self, request: api_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RevokeTokenResponse:
        signer = self._signer()
        if not TOKEN_ID.fullmatch(request.id):
            raise InvalidArgument(
                f"id: {request.id[:40]!r} is not a token id (10 characters a-z, 2-7; `shoal token ls`)"
            )
        record, revision = await signer.security.revoke_token(request.id)
        await signer.caught_up(signer.security.keys.token(record.id), revision)
        log.info("token %s (%s) revoked by %s", record.id, record.role, _caller())
        return api_pb2.RevokeTokenResponse(info=token_info(record))

    @handle
    async def RotateJoinToken(
        self, request: api_pb2.RotateJoinTokenRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.JoinTokenResponse:
        signer = self._signer()
        try:
            token, revision = await signer.security.rotate_join_token(signer.passphrase())
        except CertError as exc:
            raise FailedPrecondition(str(exc)) from None
        await signer.caught_up(signer.security.keys.join, revision)
        log.info("join token rotated by %s", _caller())
        return api_pb2.JoinTokenResponse(token=str(token))

    @handle
    async def GetJoinToken(
        self, request: api_pb2.GetJoinTokenRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.JoinTokenResponse:
        signer = self._signer()
        try:
            token = await signer.security.join_token(signer.passphrase())
        except (CertError, TokenError) as exc:
            raise FailedPrecondition(str(exc)) from None
        return api_pb2.JoinTokenResponse(token=str(token))
