"""What the h2c engine accepts in a received header block: RFC 9113 §8.2-8.3, one pass.

The engine relays heads from the internet to replicas and back, so every block it
receives is checked before anything is done with it: requests (and the requests a
PUSH_PROMISE announces) from either side's peer, responses, informational responses and
trailers. The rules are exactly those of `h2`'s inbound validation (h2 4.x,
`h2.utilities.validate_headers`), which the engine turns off because its chain of seven
generators cost about a tenth of the CPU of a relayed call (decision 61, addendum);
tests/unit/test_proxy_h2_fields.py holds this module to h2's answer on tables and on
generated blocks. A violation raises `h2.exceptions.ProtocolError`, from inside h2's
frame handling (`node.proxy.h2_peer`), so the outcome is h2's own: a GOAWAY with
PROTOCOL_ERROR, and the connection closed.

Every field: a name of visible ASCII without uppercase (a colon only as the first
character, of a pseudo-header), not empty; a value without NUL, CR or LF, not starting
or ending with a space or a tab; no connection-specific field (connection, keep-alive,
proxy-connection, transfer-encoding, upgrade); `te` only `trailers`. Pseudo-headers:
known ones only, each at most once, before every regular field, none in trailers; a
response has `:status` and no request pseudo-header; a request has `:method`, and
`:scheme` and `:path` unless it is a plain CONNECT (which may have neither), no
`:status`, `:protocol` only with CONNECT, `:authority` or `host` (equal if both, `host`
at most once), and no empty `:path`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from h2.exceptions import ProtocolError


class Block(Enum):
    REQUEST = "request"  # a request head, or the request of a PUSH_PROMISE
    RESPONSE = "response"  # a response head, final or informational (1xx)
    TRAILERS = "trailers"


_NAME_CHARS = bytes(c for c in range(0x21, 0x7F) if c != 0x3A and not 0x41 <= c <= 0x5A)
"""What a regular field name is made of: visible ASCII but uppercase and the colon."""
_VALUE_BANNED = b"\x00\r\n"
_VALUE_EDGE = b" \t"
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":status", b":protocol"))
_REQUEST_ONLY = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
_CONNECTION = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_WATCHED = _CONNECTION | {b"te", b"host"}
"""Regular names a rule looks at beyond their characters (one set lookup for the rest)."""


def check(headers: Iterable[tuple[bytes, bytes]], block: Block) -> None:
    """Raise `ProtocolError` naming the first rule `headers` (a `block`) breaks."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    hosts: list[bytes] = []
    for name, value in headers:
        if name[:1] == b":":
            if name not in _PSEUDO:
                raise ProtocolError(f"Received custom pseudo-header field {name!r}")
            if name in pseudo:
                raise ProtocolError(f"Received duplicate pseudo-header field {name!r}")
            if regular:
                raise ProtocolError(f"Received pseudo-header field out of sequence: {name!r}")
            pseudo[name] = value
        else:
            regular = True
            if not name or name.translate(None, _NAME_CHARS):
                raise ProtocolError(f"Illegal header name: {name!r}")
            if name in _WATCHED:
                if name in _CONNECTION:
                    raise ProtocolError(f"Connection-specific header field present: {name!r}.")
                if name == b"te":
                    if value.lower() != b"trailers":
                        raise ProtocolError(f"Invalid value for TE header: {value!r}")
                else:
                    hosts.append(value)
        size = len(value)
        if len(value.translate(None, _VALUE_BANNED)) != size or len(value.strip(_VALUE_EDGE)) != size:
            raise ProtocolError(f"Illegal header value for {name!r}: {value!r}")
    if block is Block.TRAILERS:
        if pseudo:
            raise ProtocolError(f"Received pseudo-header in trailer {set(pseudo)}")
    elif block is Block.RESPONSE:
        if b":status" not in pseudo:
            raise ProtocolError("Header block missing mandatory b':status' header")
        if len(pseudo) > 1:
            raise ProtocolError(f"Encountered request-only headers {set(pseudo) & _REQUEST_ONLY}")
    else:
        _request(pseudo, hosts)


def _request(pseudo: dict[bytes, bytes], hosts: list[bytes]) -> None:
    method = pseudo.get(b":method")
    if method is None:
        raise ProtocolError("Header block missing mandatory b':method' header")
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            raise ProtocolError("Ordinary CONNECT MUST NOT include :scheme or :path")
    else:
        for required in (b":scheme", b":path"):
            if required not in pseudo:
                raise ProtocolError(f"Header block missing mandatory {required!r} header")
    if b":status" in pseudo:
        raise ProtocolError("Encountered response-only headers {b':status'}")
    if b":protocol" in pseudo and not connect:
        raise ProtocolError("Encountered connect-request-only headers {b':protocol'}")
    if len(hosts) > 1:
        raise ProtocolError("Request header block has multiple Host headers.")
    authority = pseudo.get(b":authority")
    if authority is None and not hosts:
        raise ProtocolError("Request header block does not have an :authority or Host header.")
    if authority is not None and hosts and hosts[0] != authority:
        raise ProtocolError("Request header block has mismatched :authority and Host headers")
    if pseudo.get(b":path") == b"":
        raise ProtocolError("An empty :path header is forbidden")
