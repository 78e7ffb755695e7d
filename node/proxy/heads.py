"""Request and response heads as the L7 engine rewrites them: pure, no sockets.

A head being built is a list: [first line, then name, ": ", value, CRLF for each header
forwarded]; the special headers (hop-by-hop ones, framing, X-Forwarded-*) are kept
aside as (lowercase name, value) and decided on once the head is whole, by
`request_head` and `response_head`. `node.proxy.http_conn` fills the lists from
llhttp's callbacks; the tests in tests/unit/test_proxy_heads.py are tables of
(head in, head out).

Framing: Content-Length is kept; a body with a Transfer-Encoding is forwarded chunked
to a peer that stays connected, and the codings before `chunked` (`gzip, chunked`)
are kept in the forwarded Transfer-Encoding: llhttp only removes the chunked framing,
the bytes under it are still gzip-coded.
"""

from __future__ import annotations

from http import HTTPStatus

HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)
"""Headers about one connection only (and any header Connection names): never forwarded.
Transfer-Encoding and Content-Length are re-declared from the framing the proxy uses."""
REQ_SPECIAL = HOP_BY_HOP | {b"content-length", b"x-forwarded-for", b"x-forwarded-proto"}
RESP_SPECIAL = HOP_BY_HOP | {b"content-length"}
# name as sent -> lowercase, for the usual spellings of special headers: most headers are
# classified by one dict lookup (and a length test), without lowercasing them
REQ_SPELLINGS = {v: n for n in REQ_SPECIAL for v in (n, n.title(), n.upper())}
RESP_SPELLINGS = {v: n for n in RESP_SPECIAL for v in (n, n.title(), n.upper())}
REQ_LENGTHS = frozenset(map(len, REQ_SPECIAL))
RESP_LENGTHS = frozenset(map(len, RESP_SPECIAL))
_NOT_HEADERS = frozenset((b"close", b"keep-alive", b"upgrade"))  # Connection tokens naming no header

STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
CHUNK_END = b"0\r\n\r\n"
CRLF = b"\r\n"

Special = list[tuple[bytes, bytes]]  # (lowercase name, value) of the special headers of a head


def _drop_named(head: list[bytes], connection: bytes) -> None:
    """Remove from `head` the headers a Connection header names."""
    named = {t.strip().lower() for t in connection.split(b",")} - _NOT_HEADERS
    if named:
        kept = head[:1]
        for i in range(1, len(head), 4):
            if head[i].lower() not in named:
                kept += head[i : i + 4]
        head[:] = kept


def origin_form(url: bytes) -> bytes:
    """An absolute-form request target in origin form (`http://h/p?q` -> `/p?q`), for a
    router that chose the site by host (the ingress); other forms as they are."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or not scheme.isalpha():
        return url
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?"), rest.find(b"#")) if i >= 0), default=len(rest))
    tail = rest[cut:].partition(b"#")[0]
    return tail if tail.startswith(b"/") else b"/" + tail


def codings(transfer_encoding: bytes) -> bytes:
    """The transfer codings of `transfer_encoding` other than `chunked`, each followed by
    ", " (b"" for plain `chunked`): what a re-framed body keeps in its Transfer-Encoding."""
    if transfer_encoding.strip().lower() == b"chunked":
        return b""
    kept = [t.strip() for t in transfer_encoding.split(b",")]
    return b"".join(t + b", " for t in kept if t and t.lower() != b"chunked")


def request_head(
    line: bytes, head: list[bytes], special: Special, xff: bytes, proto: bytes
) -> tuple[bytes, bool, bool, bool]:
    """(head for the backend, body is chunked, a body may follow, keep-alive asked for).

    `xff` is the client's address, `proto` the whole X-Forwarded-Proto line.
    """
    head[0] = line
    if not special:
        head += (b"X-Forwarded-For: ", xff, CRLF, proto, CRLF)
        return b"".join(head), False, False, False
    length = connection = forwarded = coding = None
    for low, value in special:
        if low == b"content-length":
            length = value
        elif low == b"transfer-encoding":  # llhttp refuses a request whose last coding is not chunked
            coding = value if coding is None else coding + b", " + value
        elif low == b"connection":
            connection = value if connection is None else connection + b", " + value
        elif low == b"x-forwarded-for":
            forwarded = value if forwarded is None else forwarded + b", " + value
    if connection is not None and connection.lower() not in _NOT_HEADERS:
        _drop_named(head, connection)
    chunked = coding is not None
    if coding is not None:
        head += (b"Transfer-Encoding: ", codings(coding), b"chunked\r\n")
    elif length is not None:
        head += (b"Content-Length: ", length, CRLF)
    if forwarded is not None:
        xff = forwarded + b", " + xff
    head += (b"X-Forwarded-For: ", xff, CRLF, proto, CRLF)
    body = chunked or (length is not None and length.strip() != b"0")
    keep_alive = connection is not None and b"keep-alive" in connection.lower()
    return b"".join(head), chunked, body, keep_alive


def response_head(
    status: int, head: list[bytes], special: Special, http10: bool, no_body: bool, close: bool
) -> tuple[bytes, bool, bool, bool]:
    """(head for the client, re-chunk the body, the body ends at EOF, close the client after).

    `no_body`: the answer to a HEAD, or a status without a body; `close`: the client
    connection is closed after this response, whatever the backend said. A body of
    unknown length goes chunked to a client that stays, as is to one that is closed.
    """
    head[0] = STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
    length = coding = connection = None
    for low, value in special:
        if low == b"content-length":
            length = value
        elif low == b"connection":
            connection = value if connection is None else connection + b", " + value
        elif low == b"transfer-encoding":
            coding = value if coding is None else coding + b", " + value
    if connection is not None and connection.lower() not in _NOT_HEADERS:
        _drop_named(head, connection)
    if length is not None and (coding is None or no_body):
        head += (b"Content-Length: ", length, CRLF)  # a Transfer-Encoding overrides it
    chunk_out = until_eof = False
    if not no_body and (length is None or coding is not None):
        chunked_in = coding is not None and coding.rstrip().lower().endswith(b"chunked")
        until_eof = not chunked_in
        if http10:
            close = True  # an HTTP/1.0 client reads such a body until the connection closes
        kept = codings(coding) if coding is not None else b""
        if not close:
            chunk_out = True
            head += (b"Transfer-Encoding: ", kept, b"chunked\r\n")
        elif kept:  # read until the close, still coded
            head += (b"Transfer-Encoding: ", kept[:-2], CRLF)
    if close:
        head.append(b"Connection: close\r\n\r\n")
    elif http10:
        head.append(b"Connection: keep-alive\r\n\r\n")
    else:
        head.append(CRLF)
    return b"".join(head), chunk_out, until_eof, close


def error_response(
    status: int, body: bytes, close: bool, head_only: bool = False, extra: bytes = b""
) -> bytes:
    """An answer of the proxy's own: `status`, a one-line text body (`extra`: more header lines)."""
    return b"".join((
        STATUS_LINES[status],
        extra,
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
        b"Connection: close\r\n\r\n" if close else CRLF,
        b"" if head_only else body,
    ))  # fmt: skip


class BadMessage(Exception):
    """A message llhttp accepts but the proxy will not forward."""


def upgrade_value(special: Special) -> bytes | None:
    """The Upgrade header of a head's special headers (several joined), None without one."""
    values = [value for low, value in special if low == b"upgrade"]
    return b", ".join(values) if values else None


def with_upgrade(head: bytes, upgrade: bytes) -> bytes:
    """`head` (whole, ending in an empty line) with `Connection: upgrade` and `Upgrade`
    kept: the hop-by-hop headers an upgrade must pass on to the next hop."""
    return b"%sConnection: upgrade\r\nUpgrade: %s\r\n\r\n" % (head[:-2], upgrade)
