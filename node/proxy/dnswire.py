"""DNS messages on the wire (RFC 1035, SRV from RFC 2782): just what the node's name
server needs.

`parse_query` reads a query's header and its one question (names without compression,
as every stub resolver sends them; anything else is `DnsFormatError`); the builders
make the answer to it: A and SRV records with the question's name compressed, an
authoritative NXDOMAIN, NODATA, REFUSED, SERVFAIL, FORMERR. An answer that would not
fit the client's UDP size (512 bytes, or what its EDNS OPT record offers) is sent
without its records and with TC set, so the client asks again over TCP or settles. A
query with an OPT record gets one back (RFC 6891 6.1.1: it says the size we take), so a
resolver does not conclude that this server knows no EDNS.

Pure: no sockets, no asyncio.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

A, NS, CNAME, SOA, PTR, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 28, 33, 41, 255
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
UDP_SIZE = 512  # what a client without EDNS takes
MAX_UDP = 4096  # the most we send over UDP whatever EDNS offers
MAX_NAME = 255


class DnsFormatError(ValueError):
    """Not a query this server can read; the message says why."""


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str  # lower case, no trailing dot ("" for the root)
    qtype: int
    qclass: int
    udp_size: int = UDP_SIZE  # from an EDNS OPT record, else 512
    raw_question: bytes = b""  # the question as sent (name case kept), echoed in the answer
    edns: bool = False  # it had an OPT record: the answer carries one


@dataclass(frozen=True)
class SrvTarget:
    port: int
    target: str  # a name that has an A record in the same answer
    priority: int = 0
    weight: int = 0


def encode_name(name: str) -> bytes:
    """`db.app.shoal` (a trailing dot or not) -> length-prefixed labels, root-terminated."""
    name = name[:-1] if name.endswith(".") else name
    out = bytearray()
    for label in name.split(".") if name else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"DNS label {label!r} must be 1 to 63 characters")
        out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > MAX_NAME:
        raise ValueError(f"DNS name {name!r} is longer than {MAX_NAME} bytes")
    return bytes(out)


def _read_name(data: bytes, at: int) -> tuple[str, int]:
    labels: list[str] = []
    size = 1  # the root label's byte: a name is at most MAX_NAME bytes with it
    while True:
        if at >= len(data):
            raise DnsFormatError("the question's name runs past the end of the message")
        n = data[at]
        if n & 0xC0:
            raise DnsFormatError("compressed or extended labels in a question are not supported")
        at += 1
        if n == 0:
            return ".".join(labels), at
        size += n + 1
        if size > MAX_NAME or at + n > len(data):
            raise DnsFormatError("the question's name is too long or cut short")
        try:
            labels.append(data[at : at + n].decode("ascii"))
        except UnicodeDecodeError:
            raise DnsFormatError("a label of the question's name is not ASCII") from None
        at += n


def parse_query(data: bytes) -> Query:
    if len(data) < 12:
        raise DnsFormatError(f"a DNS message has a 12-byte header; got {len(data)} bytes")
    ident, flags, qd, an, ns, ar = struct.unpack("!6H", data[:12])
    if flags & QR:
        raise DnsFormatError("this is an answer, not a query")
    if qd != 1:
        raise DnsFormatError(f"a query must have exactly one question; this one has {qd}")
    name, at = _read_name(data, 12)
    if at + 4 > len(data):
        raise DnsFormatError("the question's type and class are cut short")
    qtype, qclass = struct.unpack("!HH", data[at : at + 4])
    raw_question = data[12 : at + 4]
    offered = _edns_size(data, at + 4) if an == 0 and ns == 0 and ar >= 1 else 0
    return Query(ident, flags, name.lower(), qtype, qclass, offered or UDP_SIZE, raw_question, bool(offered))


def _edns_size(data: bytes, at: int) -> int:
    """The UDP size an OPT record (root name, type 41) right after the question offers."""
    if at + 11 <= len(data) and data[at] == 0:
        rtype, size = struct.unpack("!HH", data[at + 1 : at + 5])
        if rtype == OPT:
            return max(UDP_SIZE, min(size, MAX_UDP))
    return 0


OPT_RECORD = b"\0" + struct.pack("!HHIH", OPT, MAX_UDP, 0, 0)
"""Our OPT record: the root name, the UDP size we take, extended rcode 0, version 0, no options."""


def _header(q: Query, rcode: int, answers: int, additional: int, authoritative: bool) -> bytes:
    """The header, counting our OPT record (last of the message, `_opt`) for an EDNS query."""
    flags = QR | (q.flags & 0x7800) | (q.flags & RD) | RA | rcode  # opcode and RD echoed
    if authoritative:
        flags |= AA
    return struct.pack("!6H", q.id, flags, 1, answers, 0, additional + q.edns)


def _opt(q: Query) -> bytes:
    return OPT_RECORD if q.edns else b""


def _record(name: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return name + struct.pack("!HHIH", rtype, IN, ttl, len(rdata)) + rdata


QNAME = b"\xc0\x0c"  # a pointer to the question's name, right after the 12-byte header


def answer_a(q: Query, addresses: list[str], ttl: int) -> bytes:
    """A records for the question's name (NODATA when `addresses` is empty)."""
    records = [_record(QNAME, A, ttl, _ipv4(a)) for a in addresses]
    return _fit(q, records, [])


def answer_srv(q: Query, targets: list[SrvTarget], addresses: dict[str, str], ttl: int) -> bytes:
    """SRV records for the question's name; each target's A record as additional."""
    records = [
        _record(QNAME, SRV, ttl, struct.pack("!HHH", t.priority, t.weight, t.port) + encode_name(t.target))
        for t in targets
    ]
    extra = [_record(encode_name(n), A, ttl, _ipv4(a)) for n, a in sorted(addresses.items())]
    return _fit(q, records, extra)


def answer_error(q: Query, rcode: int, authoritative: bool = False) -> bytes:
    return _header(q, rcode, 0, 0, authoritative) + q.raw_question + _opt(q)


def formerr(data: bytes) -> bytes | None:
    """FORMERR for an unreadable query whose header can be read; None: nothing to answer."""
    if len(data) < 12 or struct.unpack("!H", data[2:4])[0] & QR:
        return None
    ident, flags = struct.unpack("!HH", data[:4])
    return struct.pack("!6H", ident, QR | (flags & RD) | RA | FORMERR, 0, 0, 0, 0)


def _fit(q: Query, records: list[bytes], extra: list[bytes]) -> bytes:
    head = _header(q, NOERROR, len(records), len(extra), True) + q.raw_question
    body = b"".join(records)
    opt = _opt(q)
    if len(head) + len(body) + sum(map(len, extra)) + len(opt) <= q.udp_size:
        return head + body + b"".join(extra) + opt
    if len(head) + len(body) + len(opt) <= q.udp_size:
        return _header(q, NOERROR, len(records), 0, True) + q.raw_question + body + opt
    truncated = bytearray(_header(q, NOERROR, 0, 0, True))
    truncated[2:4] = struct.pack("!H", struct.unpack("!H", truncated[2:4])[0] | TC)
    return bytes(truncated) + q.raw_question + opt


def _ipv4(address: str) -> bytes:
    parts = [int(p) for p in address.split(".")]
    if len(parts) != 4 or any(not 0 <= p <= 255 for p in parts):
        raise ValueError(f"{address!r} is not an IPv4 address")
    return bytes(parts)


def reply_id(data: bytes) -> int | None:
    """The id of an answer (for matching a forwarded query's reply), None if too short."""
    return struct.unpack("!H", data[:2])[0] if len(data) >= 12 else None


def build_query(name: str, qtype: int, ident: int = 0x1234, rd: bool = True) -> bytes:
    """A plain query (for tests and the benchmark's lookups)."""
    return (
        struct.pack("!6H", ident, RD if rd else 0, 1, 0, 0, 0)
        + encode_name(name)
        + struct.pack("!HH", qtype, IN)
    )


@dataclass(frozen=True)
class Answer:
    """A parsed answer (for tests and the benchmark): rcode, flags and records' data."""

    id: int
    flags: int
    rcode: int
    a: list[str]
    srv: list[tuple[int, str]]  # (port, target)


def parse_answer(data: bytes) -> Answer:
    ident, flags, qd, an, ns, ar = struct.unpack("!6H", data[:12])
    at = 12
    for _ in range(qd):
        at = _skip_name(data, at) + 4
    a: list[str] = []
    srv: list[tuple[int, str]] = []
    for _ in range(an + ns + ar):
        at = _skip_name(data, at)
        rtype, _cls, _ttl, size = struct.unpack("!HHIH", data[at : at + 10])
        at += 10
        rdata = data[at : at + size]
        if rtype == A:
            a.append(".".join(str(b) for b in rdata))
        elif rtype == SRV:
            port = struct.unpack("!H", rdata[4:6])[0]
            srv.append((port, _read_name(rdata, 6)[0]))
        at += size
    return Answer(ident, flags, flags & 0xF, a, srv)


def _skip_name(data: bytes, at: int) -> int:
    while True:
        n = data[at]
        if n & 0xC0:
            return at + 2
        at += 1 + n
        if n == 0:
            return at
