"""shoal's one error family, for the server and the client, and its gRPC status codes.

A node raises these from anything a request reaches; `node.api.server` aborts the call
with the status `STATUS` names for the class. The client (`node.wire.client.error_from_rpc`)
turns the status it receives back into the class `error_class` names, so a caller
catches the same `NotFound` a handler raised. The message is shown to the person who
made the request: it says what is wrong and what to do.

`STATUS` is the one table: every class that crosses the wire, exactly once, by the name
of its `grpc.StatusCode` (names, so this module stays free of grpc). A status without a
class (INTERNAL, UNIMPLEMENTED, ...) arrives as the base `ShoalError`.
`CredentialsMissing` never crosses the wire: the client raises it before any call.

Pure: no grpc here.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "STATUS",
    "Conflict",
    "CredentialsMissing",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ShoalError",
    "Unauthenticated",
    "Unavailable",
    "error_class",
    "status_of",
]


class ShoalError(Exception):
    """A failed request. `str(err)` is one actionable line.

    On the client, `code` is the `grpc.StatusCode` the call ended with (None when the
    error did not come from gRPC) and `target` the address of the node that was called;
    on the server both are unset (the class names the status, `STATUS`)."""

    def __init__(self, message: str = "", *, code: Enum | None = None, target: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.target = target


class InvalidArgument(ShoalError):
    """The request was rejected as invalid (e.g. a spec error with its field path); nothing changed."""


class NotFound(ShoalError):
    """The named service (or other object) does not exist."""


class FailedPrecondition(ShoalError):
    """The cluster is not in a state that allows the operation (e.g. no leader yet)."""


class Conflict(ShoalError):
    """A concurrent write won; retrying the request is safe."""


class Unavailable(ShoalError):
    """No node answers at the address, or the node cannot reach its store right now. Retry later."""


class PermissionDenied(ShoalError):
    """The caller's role (or certificate's kind) may not do this (the message names the rule)."""


class Unauthenticated(ShoalError):
    """No token, or a token the cluster does not accept (unknown, wrong, revoked, expired)."""


class DeadlineExceeded(ShoalError):
    """The node did not answer within the caller's timeout (or its own handler bound)."""


class ResourceExhausted(ShoalError):
    """A bound was reached (e.g. the streams one token may hold open on a node); the message names it."""


class CredentialsMissing(ShoalError):
    """The client has no (complete) credentials; the message names what is missing and how to get it.
    Raised by the client before any call: never on the wire, so not in `STATUS`."""


STATUS: dict[type[ShoalError], str] = {
    ShoalError: "INTERNAL",
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    FailedPrecondition: "FAILED_PRECONDITION",
    Conflict: "ABORTED",
    Unavailable: "UNAVAILABLE",
    PermissionDenied: "PERMISSION_DENIED",
    Unauthenticated: "UNAUTHENTICATED",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
}
"""Error class -> the name of the `grpc.StatusCode` it travels as (and comes back from)."""

_BY_STATUS: dict[str, type[ShoalError]] = {status: cls for cls, status in STATUS.items()}
assert len(_BY_STATUS) == len(STATUS), "two error classes share a status code"


def status_of(exc: ShoalError) -> str:
    """The status code name a handler aborts with for `exc`: its class's, or that of the
    nearest base in `STATUS` (a subclass defined elsewhere travels as its base)."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return STATUS[ShoalError]


def error_class(status: str) -> type[ShoalError]:
    """The class a call that ended with status code `status` (its name) raises on the client."""
    return _BY_STATUS.get(status, ShoalError)
