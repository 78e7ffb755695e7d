"""shoal's error taxonomy, mapped to gRPC status codes in one place (`node.api.server`).

Raise these from anything a request reaches; the message is shown to the person who
made the request, so it says what is wrong and what to do.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base class; `code` names the gRPC status it becomes."""

    code = "INTERNAL"


class InvalidArgument(ShoalError):
    code = "INVALID_ARGUMENT"


class NotFound(ShoalError):
    code = "NOT_FOUND"


class FailedPrecondition(ShoalError):
    code = "FAILED_PRECONDITION"


class Conflict(ShoalError):
    """A concurrent write won; retrying the request is safe."""

    code = "ABORTED"


class Unavailable(ShoalError):
    code = "UNAVAILABLE"


class PermissionDenied(ShoalError):
    """The caller's role may not do this (the message names the rule)."""

    code = "PERMISSION_DENIED"
