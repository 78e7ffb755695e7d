"""How a failed gRPC call reads to a person: `error_from_rpc` turns a `grpc.RpcError`
into the `ShoalError` of its status, with a message that names the address and says
what to do when no node answered (nothing listening, DNS, TLS) or the deadline passed.
Split from `node.wire.client`, which re-exports `error_from_rpc`.
"""

from __future__ import annotations

import grpc

from node.model.errors import CredentialsMissing, ShoalError, error_class

_HINT = "start one (shoal dev) or point --addr / SHOAL_ADDR at a node"

# Substrings of gRPC-core details that mean no server took part in the call (as opposed
# to a node that answered UNAVAILABLE itself, e.g. because etcd is unreachable).
_TRANSPORT_MARKERS = (
    "failed to connect",
    "errors resolving",
    "dns resolution failed",
    "connection refused",
    "connection reset",
    "socket closed",
    "broken pipe",
    "http1.x server",
    "connections to all backends failing",
    "empty address list",
    "endpoint closing",
)
# How a node's own UNAVAILABLE answers begin (node.store: its etcd is unreachable). Their
# reason may contain a marker above ("etcd unreachable at h:p: connection refused"), but
# a node did answer: the message must name etcd, not claim that no node answers.
_NODE_ANSWERS = ("etcd ",)


_CHECK_CREDENTIALS = (
    "check the client's credentials: the context file (SHOAL_CONTEXT_FILE, written by `shoal dev` "
    "and `shoal cluster init`) or SHOAL_CA, SHOAL_CERT and SHOAL_KEY"
)


def _tls_failure(details: str, target: str) -> str | None:
    """A message for a TLS handshake that failed, or None when `details` is not one."""
    low = details.lower()
    if "certificate_verify_failed" in low or ("handshake" in low and "ssl" in low):
        reason = details.rsplit(":", 2)[-2].strip() if details.count(":") >= 2 else "handshake failed"
        return (
            f"the TLS handshake with {target} failed ({_one_line(reason, 80).lower()}): its certificate is "
            f"not signed by the CA this client trusts, is it a node of another cluster? {_CHECK_CREDENTIALS}"
        )
    if "failed to connect" in low and "socket closed" in low:
        return (
            f"{target} closed the connection during the TLS handshake: shoal nodes accept only a client "
            "certificate from their cluster's CA, and this one is missing, from another CA, or expired; "
            + _CHECK_CREDENTIALS
        )
    return None


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _short_reason(details: str) -> str:
    """The gist of a gRPC-core transport error, e.g. 'connection refused'."""
    low = details.lower()
    if "errors resolving" in low or "dns resolution failed" in low:
        cause = details.rstrip("]").rsplit(": ", 1)[-1]
        return f"cannot resolve the host name ({_one_line(cause, 80)})"
    if "connection refused" in low:
        return "connection refused"
    return _one_line(details.rsplit(": ", 1)[-1], 80).lower() or "unreachable"


def error_from_rpc(err: grpc.RpcError, target: str, timeout: float | None = None) -> ShoalError:
    """Turn a `grpc.RpcError` from a call to `target` into the matching `ShoalError`.

    The server's details are the message, except for transport failures (nothing
    listening, DNS) and deadlines, whose messages name the address and what to do.
    """
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code: grpc.StatusCode | None = code_fn() if callable(code_fn) else None
    details = (details_fn() if callable(details_fn) else None) or ""
    cls = error_class(code.name) if code is not None else ShoalError
    tls_failure = _tls_failure(details, target) if code == grpc.StatusCode.UNAVAILABLE else None
    if tls_failure is not None:
        message = tls_failure
    elif code == grpc.StatusCode.UNAVAILABLE and (
        not details
        or (
            not details.lower().startswith(_NODE_ANSWERS)
            and any(m in details.lower() for m in _TRANSPORT_MARKERS)
        )
    ):
        message = f"no shoal node answers at {target}: {_short_reason(details)}; {_HINT}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout:g}s" if timeout is not None else ""
        message = (
            f"no answer from {target}{within} (deadline exceeded); the node may be overloaded "
            "or unreachable: retry with a larger --timeout or check --addr"
        )
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        message = (
            f"the server at {target} does not implement this call ({_one_line(details, 120)}); "
            "is it a shoal node of a compatible version?"
        )
    elif details:
        message = _one_line(details)
    else:
        name = code.name if code is not None else "UNKNOWN"
        message = f"call to {target} failed with {name}"
    return cls(message, code=code, target=target)


# What gRPC-core says when a call reached no server at all: safe to send to another node.
_NEVER_CONNECTED = (
    "failed to connect",
    "connection refused",
    "errors resolving",
    "dns resolution failed",
    "empty address list",
    "no route to host",
)


def _never_connected(err: grpc.RpcError) -> bool:
    code_fn, details_fn = getattr(err, "code", None), getattr(err, "details", None)
    if not callable(code_fn) or code_fn() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = ((details_fn() if callable(details_fn) else "") or "").lower()
    return not details.startswith(_NODE_ANSWERS) and any(m in details for m in _NEVER_CONNECTED)


def split_targets(addr: str) -> list[str]:
    """ "h1:7070, h2:7070" -> ["h1:7070", "h2:7070"]: the nodes to call, in order of preference."""
    targets = [t.strip() for t in addr.split(",") if t.strip()]
    if not targets:
        raise CredentialsMissing(f"no node address in {addr!r}: give HOST:PORT[,HOST:PORT...]")
    return targets
