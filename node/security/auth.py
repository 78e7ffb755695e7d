"""Who may call what: the server interceptor that runs before every handler.

The TLS handshake has already proved the caller holds a certificate of the cluster CA
(`node.wire.rpc` requires one). This layer reads who the certificate speaks for (its URI
SAN, `node.security.ca.Identity`) and, for the client API, the bearer token
(`authorization: Bearer shoal_<id>_<secret>`), and decides:

| method                                  | needs                                            |
|-----------------------------------------|--------------------------------------------------|
| the join method (`Policy.join_methods`) | the join certificate of the *current* join token |
| peer API (`shoal.v1.Peer`)              | a node certificate                               |
| health, reflection                      | a node or client certificate                     |
| anything else (client API, …)           | a token whose role allows it (`tokens.allowed`)  |

and a node certificate never calls an admin-only method, whatever token comes with it.

A refusal is UNAUTHENTICATED (no credentials, unknown, wrong, revoked or expired
token, rotated join token) or PERMISSION_DENIED (known caller, not allowed), with a
message that says what to do. The request body is parsed only after the check, so an
unauthorised caller never reaches the protobuf parser, and the handler never runs.
Tokens never appear in logs or messages, only their id; credentials are looked up
through `CredentialStore` (in memory here, etcd in the daemon), and a store that
fails makes the call UNAVAILABLE, never open.

The caller of the running handler is `current_caller()` (for audit and events).

Server streams made with a token are bounded per token and end when the token is
revoked or expires (`node.security.streams`).
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric import ec

from node.security import ca
from node.security.results import stream_result, unary_result
from node.security.streams import StreamGuard
from node.security.tokens import ClientToken, Role, StoredToken, TokenError, allowed, least_role, split_method

log = logging.getLogger(__name__)

PEER_SERVICE = "shoal.v1.Peer"
JOIN_METHOD = "/shoal.v1.Peer/Join"
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


class CredentialStore(Protocol):
    """Where the server looks credentials up; raising means "cannot tell now" (UNAVAILABLE)."""

    async def token(self, token_id: str) -> StoredToken | None:
        """The stored record of a client token (revoked ones included), or None."""
        ...

    async def join_key_id(self) -> str | None:
        """`ca.key_id` of the current join token's key, or None when joining is closed."""
        ...


@dataclass
class MemoryCredentials:
    """A `CredentialStore` in memory, for tests and simulations."""

    tokens: dict[str, StoredToken] = field(default_factory=dict)
    join_key: str | None = None
    unavailable: bool = False  # every lookup raises, as etcd down would
    lookups: int = 0

    def add(self, record: StoredToken) -> None:
        self.tokens[record.id] = record

    def revoke(self, token_id: str, now: datetime | None = None) -> None:
        revoked = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        self.tokens[token_id] = replace(self.tokens[token_id], revoked=revoked)

    async def token(self, token_id: str) -> StoredToken | None:
        self._check()
        return self.tokens.get(token_id)

    async def join_key_id(self) -> str | None:
        self._check()
        return self.join_key

    def _check(self) -> None:
        self.lookups += 1
        if self.unavailable:
            raise ConnectionError("credential store unavailable")


@dataclass(frozen=True)
class Policy:
    """Which services need which credentials (see the module's table)."""

    cluster: str
    peer_services: frozenset[str] = frozenset({PEER_SERVICE})
    join_methods: frozenset[str] = frozenset({JOIN_METHOD})
    open_services: frozenset[str] = OPEN_SERVICES
    max_streams_per_token: int = 32  # open server streams per client token on one node


@dataclass(frozen=True)
class Caller:
    """Who is calling: the certificate's identity, and the token's id and role if one was used."""

    identity: ca.Identity
    token_id: str = ""
    role: Role | None = None

    def __str__(self) -> str:
        by = f" with token {self.token_id} ({self.role})" if self.token_id else ""
        return f"{self.identity}{by}"


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("shoal_caller", default=None)


def current_caller() -> Caller | None:
    """The authenticated caller of the RPC this code runs in (None outside one)."""
    return _caller.get()


class Denied(Exception):
    """A refusal: the status code and the message the caller sees."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@functools.lru_cache(maxsize=1024)
def _read_peer_cert(pem: bytes) -> tuple[ca.Identity, str]:
    cert = ca.load_cert(pem)
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ca.CertError("the certificate's key is not an ECDSA key")
    return ca.identity_of(cert), ca.key_id(public)


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    values = [v for k, v in metadata or () if k.lower() == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Denied(grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header; send one token")
    value = values[0].decode(errors="replace") if isinstance(values[0], bytes) else values[0]
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(
            grpc.StatusCode.UNAUTHENTICATED, "the authorization header must be `Bearer shoal_<id>_<secret>`"
        )
    return token.strip()


NO_TOKEN = (
    "this call needs a client token (`authorization: Bearer shoal_…`): the CLI takes it from "
    "SHOAL_TOKEN or its context file (~/.config/shoal/context.json); an admin makes one with "
    "`shoal token create --role viewer|deployer|admin`"
)


class Authorizer:
    """The decision, apart from grpc's plumbing: `authorize` returns the caller or raises `Denied`."""

    def __init__(self, credentials: CredentialStore, policy: Policy) -> None:
        self.credentials = credentials
        self.policy = policy
        self.streams = StreamGuard(credentials, policy.max_streams_per_token)

    async def authorize(
        self, method: str, auth_context: Mapping[str, Iterable[bytes]], metadata: Any
    ) -> Caller:
        pems = list(auth_context.get("x509_pem_cert") or [])
        if not pems:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "no client certificate: shoal nodes accept only mutual TLS with a cluster CA certificate",
            )
        try:
            identity, key = _read_peer_cert(bytes(pems[0]))
        except ca.CertError as exc:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED, f"the client certificate is not usable: {exc}"
            ) from None
        if identity.cluster != self.policy.cluster:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the client certificate is for cluster {identity.cluster!r}, not {self.policy.cluster!r}",
            )
        service, name = split_method(method)

        if method in self.policy.join_methods or identity.kind is ca.Kind.JOIN:
            return await self._join(method, identity, key)
        if service in self.policy.peer_services:
            if identity.kind is not ca.Kind.NODE:
                raise Denied(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{name} is for shoal nodes: it needs a node certificate, not a {identity.kind} one",
                )
            return Caller(identity)
        if service in self.policy.open_services:
            return Caller(identity)
        if identity.kind is ca.Kind.NODE and least_role(method) is Role.ADMIN:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"a node certificate cannot call admin methods ({name}); use a client certificate and token",
            )
        return await self._token(method, identity, metadata)

    async def _join(self, method: str, identity: ca.Identity, key: str) -> Caller:
        if method not in self.policy.join_methods:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED, "a join certificate can only call the join method"
            )
        if identity.kind is not ca.Kind.JOIN:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"joining needs the join token's certificate, not a {identity.kind} one",
            )
        current = await self._lookup(self.credentials.join_key_id())
        if current is None or current != key:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "this join token is no longer valid (it was rotated, or joining is closed); get the "
                "current one from a member with `shoal cluster join-token`",
            )
        return Caller(identity)

    async def _token(self, method: str, identity: ca.Identity, metadata: Any) -> Caller:
        text = _bearer(metadata)
        if text is None:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, f"no token: {NO_TOKEN}")
        try:
            token = ClientToken.parse(text)
        except TokenError as exc:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        record = await self._lookup(self.credentials.token(token.id))
        if record is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"token {token.id} is not known to this cluster; ask an admin for one (`shoal token create`)",
            )
        if not record.matches(token):
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, f"token {token.id}: the secret is wrong")
        problem = record.problem()
        if problem is not None:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, f"{problem}; ask an admin for a new one")
        role = Role(record.role)
        if not allowed(role, method):
            need = least_role(method)
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {token.id} has role {role}, which may not call {split_method(method)[1] or method} "
                f"(it needs {need}{' or admin' if need is not Role.ADMIN else ''}); "
                "ask an admin for a token with that role",
            )
        return Caller(identity, token.id, role)

    async def _lookup(self, pending: Awaitable[Any]) -> Any:
        try:
            return await pending
        except Exception as exc:
            log.warning("credential lookup failed: %s", exc)
            raise Denied(
                grpc.StatusCode.UNAVAILABLE, "cannot check credentials now (the cluster store is unreachable)"
            ) from None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Runs `Authorizer` before every handler; put it first in the server's interceptors."""

    def __init__(self, credentials: CredentialStore, policy: Policy) -> None:
        self.authorizer = Authorizer(credentials, policy)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return _guarded(handler, details.method, self.authorizer)


async def _admit(authorizer: Authorizer, method: str, context: grpc.aio.ServicerContext) -> Caller:
    try:
        caller = await authorizer.authorize(method, context.auth_context(), context.invocation_metadata())
    except Denied as denied:
        log.info("refused %s from %s: %s", method, context.peer(), denied.message)
        await context.abort(denied.code, denied.message)
    _caller.set(caller)
    return caller


def _guarded(handler: grpc.RpcMethodHandler, method: str, authorizer: Authorizer) -> grpc.RpcMethodHandler:
    """The same handler, taking raw bytes, checking the caller, then parsing and calling."""
    deserialize = handler.request_deserializer
    serialize = handler.response_serializer

    async def parse(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except Exception:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request is not a valid message"
            )

    async def parse_all(raws: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for raw in raws:
            yield await parse(raw, context)

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            await _admit(authorizer, method, context)
            return await unary_result(inner_uu, await parse(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, None, serialize)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            caller = await _admit(authorizer, method, context)
            request = await parse(raw, context)
            async for item in authorizer.streams.guard(
                caller, context, stream_result(inner_us, request, context)
            ):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, None, serialize)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(raws: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            await _admit(authorizer, method, context)
            return await unary_result(inner_su, parse_all(raws, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, None, serialize)
    inner_ss: Callable[..., Any] = handler.stream_stream  # type: ignore[assignment]

    async def stream_stream(
        raws: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        # Guarded as a server stream (Exec): ended when its token is revoked or expires,
        # and counted in the token's streams.
        caller = await _admit(authorizer, method, context)
        async for item in authorizer.streams.guard(
            caller, context, stream_result(inner_ss, parse_all(raws, context), context)
        ):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, None, serialize)
