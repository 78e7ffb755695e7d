"""Service names, pure parts: the DNS wire format, the name table, the resolver's
answers and the VIP planning rules (node.proxy.dnswire, node.proxy.names,
node.proxy.dnsserver.Resolver)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace

import pytest

from node.model.config import ConfigError, vip_network
from node.model.domain import ServiceRecord
from node.proxy import dnswire as w
from node.proxy.dnsserver import Resolver, host_resolvers
from node.proxy.names import FIRST_VIP, NameTable, VipRecord, dns_address, in_zone, next_free, plan
from tests.factories import make_service

NET = ipaddress.IPv4Network("10.213.0.0/24")


def service(name: str, uid: str, stack: str | None = None, ports: tuple[int, ...] = (3306,)) -> ServiceRecord:
    extra: dict[str, object] = {"ports": [{"container": p} for p in ports]}
    if stack:
        extra["stack"] = stack
    return replace(make_service(name, **extra), uid=uid)


DB = service("app_db", "u1", stack="app", ports=(3306, 9104))
WEB = service("web", "u2", ports=(8080,))
TABLE = NameTable.build(
    [DB, WEB], [VipRecord("app_db", "u1", "10.213.0.16"), VipRecord("web", "u2", "10.213.0.17")]
)


def ask(name: str, qtype: int = w.A, table: NameTable = TABLE) -> w.Answer | None:
    q = w.parse_query(w.build_query(name, qtype, ident=77))
    reply = Resolver(lambda: table).answer(q)
    return None if reply is None else w.parse_answer(reply)


# -- the wire -------------------------------------------------------------------------


def test_query_round_trip_keeps_id_flags_and_lowercases_the_name() -> None:
    raw = w.build_query("DB.App.Shoal", w.SRV, ident=0xBEEF)
    q = w.parse_query(raw)
    assert (q.id, q.name, q.qtype, q.qclass, q.udp_size) == (0xBEEF, "db.app.shoal", w.SRV, w.IN, 512)
    assert q.flags & w.RD
    assert q.raw_question == raw[12:]  # echoed as sent, case kept


def test_a_answer_encodes_the_records_and_compresses_the_name() -> None:
    q = w.parse_query(w.build_query("web", w.A, ident=9))
    reply = w.answer_a(q, ["10.213.0.17", "10.213.0.18"], ttl=5)
    a = w.parse_answer(reply)
    assert (a.id, a.rcode, a.a) == (9, w.NOERROR, ["10.213.0.17", "10.213.0.18"])
    assert a.flags & w.QR and a.flags & w.AA and a.flags & w.RA and a.flags & w.RD
    assert b"\xc0\x0c" in reply[len(q.raw_question) + 12 :]
    ttl = struct.unpack("!I", reply[12 + len(q.raw_question) + 6 : 12 + len(q.raw_question) + 10])[0]
    assert ttl == 5


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x00\x01", "12-byte header"),
        (struct.pack("!6H", 1, w.QR, 1, 0, 0, 0) + w.encode_name("a") + b"\0\1\0\1", "not a query"),
        (struct.pack("!6H", 1, 0, 2, 0, 0, 0) + w.encode_name("a") + b"\0\1\0\1", "exactly one question"),
        (struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1", "compressed"),
        (struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\x05ab", "too long or cut short"),
        (struct.pack("!6H", 1, 0, 1, 0, 0, 0) + w.encode_name("a"), "cut short"),
        (struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\x02\xff\xfe\0\0\1\0\1", "not ASCII"),
    ],
)
def test_unreadable_queries_are_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(w.DnsFormatError, match=why):
        w.parse_query(data)


def test_formerr_answers_a_readable_header_and_ignores_the_rest() -> None:
    bad = struct.pack("!6H", 42, w.RD, 1, 0, 0, 0) + b"\x05ab"
    reply = w.formerr(bad)
    assert reply is not None and w.parse_answer(reply).rcode == w.FORMERR and w.parse_answer(reply).id == 42
    assert w.formerr(b"\x00") is None
    assert w.formerr(struct.pack("!6H", 1, w.QR, 0, 0, 0, 0)) is None  # never answer an answer


def test_names_that_cannot_be_encoded_are_refused() -> None:
    with pytest.raises(ValueError, match="1 to 63"):
        w.encode_name("a" * 64 + ".shoal")
    with pytest.raises(ValueError, match="longer than 255"):
        w.encode_name(".".join(["a" * 60] * 5))


def test_an_answer_too_big_for_udp_is_truncated_and_edns_lifts_the_bound() -> None:
    many = tuple(range(1000, 1064))
    table = NameTable.build([service("big", "u", ports=many)], [VipRecord("big", "u", "10.213.0.20")])
    plain = w.build_query("big", w.SRV)
    reply = Resolver(lambda: table).answer(w.parse_query(plain))
    assert reply is not None and len(reply) <= 512
    assert struct.unpack("!H", reply[2:4])[0] & w.TC
    assert w.parse_answer(reply).srv == []
    opt = b"\0" + struct.pack("!HHIH", w.OPT, 4096, 0, 0)  # an EDNS OPT record offering 4096 bytes
    edns = plain[:10] + struct.pack("!H", 1) + plain[12:] + opt
    q = w.parse_query(edns)
    assert q.udp_size == 4096
    reply = Resolver(lambda: table).answer(q)
    assert reply is not None and not struct.unpack("!H", reply[2:4])[0] & w.TC
    answer = w.parse_answer(reply)
    assert sorted(p for p, _ in answer.srv) == list(many) and answer.a == ["10.213.0.20"]


def with_opt(query: bytes, size: int = 4096) -> bytes:
    """`query` with an EDNS OPT record offering `size` bytes (ARCOUNT 1)."""
    return query[:10] + struct.pack("!H", 1) + query[12:] + b"\0" + struct.pack("!HHIH", w.OPT, size, 0, 0)


def last_record_type(reply: bytes, additional: int) -> int:
    """The type of the message's last record (our OPT record is 11 bytes, the root name)."""
    assert struct.unpack("!H", reply[10:12])[0] == additional
    return struct.unpack("!H", reply[-10:-8])[0]


@pytest.mark.parametrize(
    ("name", "qtype"), [("web.shoal", w.A), ("nothing.shoal", w.A), ("web.shoal", w.AAAA)]
)
def test_an_edns_query_gets_an_opt_record_back_and_a_plain_one_none(name: str, qtype: int) -> None:
    """RFC 6891 6.1.1: an answer to a query with OPT carries OPT, with the size we take."""
    resolver = Resolver(lambda: TABLE)
    plain = resolver.answer(w.parse_query(w.build_query(name, qtype)))
    edns = resolver.answer(w.parse_query(with_opt(w.build_query(name, qtype))))
    assert plain is not None and edns is not None
    assert (
        edns
        == plain[:10]
        + struct.pack("!H", struct.unpack("!H", plain[10:12])[0] + 1)
        + plain[12:]
        + w.OPT_RECORD
    )
    assert last_record_type(edns, struct.unpack("!H", plain[10:12])[0] + 1) == w.OPT
    assert w.parse_answer(edns).rcode == w.parse_answer(plain).rcode


def test_a_truncated_edns_answer_keeps_its_opt_record() -> None:
    many = tuple(range(1000, 1064))
    table = NameTable.build([service("big", "u", ports=many)], [VipRecord("big", "u", "10.213.0.20")])
    reply = Resolver(lambda: table).answer(w.parse_query(with_opt(w.build_query("big", w.SRV), 1232)))
    assert reply is not None and len(reply) <= 1232 and struct.unpack("!H", reply[2:4])[0] & w.TC
    assert reply.endswith(w.OPT_RECORD) and struct.unpack("!H", reply[10:12])[0] == 1


def test_a_name_of_255_bytes_is_read_and_one_of_256_is_not() -> None:
    """The limit counts the root label's byte (RFC 1035 2.3.4), as `encode_name` does."""
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 4 x 1 + 250 + 1 = 255 bytes
    assert len(w.encode_name(longest)) == 255
    assert w.parse_query(w.build_query(longest, w.A)).name == longest
    labels = [b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 62]  # one byte more: 256 on the wire
    wire = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    assert len(wire) == 256
    too_long = struct.pack("!6H", 1, 0, 1, 0, 0, 0) + wire + b"\0\1\0\1"
    with pytest.raises(w.DnsFormatError, match="too long"):
        w.parse_query(too_long)


# -- the names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["app_db", "APP_DB", "app.db", "db.app.shoal", "app_db.shoal", "app_db."])
def test_every_form_of_a_stack_service_name_answers_its_vip(name: str) -> None:
    answer = ask(name)
    assert answer is not None and answer.rcode == w.NOERROR and answer.a == ["10.213.0.16"]
    assert answer.flags & w.AA


def test_a_service_outside_stacks_answers_by_its_name() -> None:
    for name in ("web", "web.shoal"):
        answer = ask(name)
        assert answer is not None and answer.a == ["10.213.0.17"]


def test_short_names_are_not_answered_outside_the_search_domain() -> None:
    assert ask("db") is None  # forwarded: `db` alone is the stack's only through its search domain
    missing = ask("db.other.shoal")
    assert missing is not None and missing.rcode == w.NXDOMAIN and missing.flags & w.AA


BARE = [
    ("app_db.app.shoal", "10.213.0.16"),
    ("web.app.shoal", "10.213.0.17"),
    ("app.db.other.shoal", "10.213.0.16"),
]


@pytest.mark.parametrize(("name", "vip"), BARE)
def test_under_a_search_domain_other_names_answer_as_if_asked_bare(name: str, vip: str) -> None:
    answer = ask(name)  # busybox's nslookup stops at the first search domain's NXDOMAIN
    assert answer is not None and answer.a == [vip]
    assert ask("nope.app.shoal") is not None and ask("nope.app.shoal").rcode == w.NXDOMAIN  # type: ignore[union-attr]


def test_srv_lists_every_container_port_with_the_vip_as_additional() -> None:
    for name in ("_mysql._tcp.db.app.shoal", "db.app.shoal", "_x._tcp.app.db"):
        answer = ask(name, w.SRV)
        assert answer is not None and answer.rcode == w.NOERROR
        base = name.split("._tcp.")[-1]
        assert sorted(answer.srv) == [(3306, base), (9104, base)]
        assert answer.a == ["10.213.0.16"]


def test_a_known_name_of_another_type_has_no_data_not_nxdomain() -> None:
    answer = ask("app_db", w.AAAA)
    assert answer is not None and (answer.rcode, answer.a) == (w.NOERROR, [])


def test_other_names_are_forwarded_and_unknown_shoal_names_are_nxdomain() -> None:
    assert ask("example.com") is None
    assert ask("example.com", w.SRV) is None
    for name in ("nope.shoal", "other.shoal", "_x._tcp.nope.shoal", "x.app.shoal.shoal"):
        answer = ask(name, w.SRV if name.startswith("_") else w.A)
        assert answer is not None and answer.rcode == w.NXDOMAIN
    assert in_zone("A.SHOAL.") and not in_zone("shoalx")


@pytest.mark.parametrize("qtype", [w.A, w.AAAA, w.SRV, w.SOA])
@pytest.mark.parametrize(
    "name", ["shoal", "app.shoal", "APP.Shoal.", "_tcp.web.shoal", "_http._tcp.db.app.shoal"]
)
def test_a_name_with_names_below_it_has_no_data_not_nxdomain(name: str, qtype: int) -> None:
    """RFC 8020: NXDOMAIN says nothing exists below a name either, and a resolver that
    cuts there would lose `db.app.shoal` after asking `app.shoal` (the zone's apex and a
    stack's domain), or `_http._tcp.web.shoal`'s SRV after an A question for it."""
    answer = ask(name, qtype)
    if qtype == w.SRV and name.startswith("_"):
        assert answer is not None and answer.rcode == w.NOERROR and answer.srv  # its SRV, as before
        return
    assert answer is not None and (answer.rcode, answer.a, answer.srv) == (w.NOERROR, [], [])
    assert answer.flags & w.AA


def test_a_stack_domain_is_there_only_for_an_asker_that_sees_a_name_below_it() -> None:
    front = service("app_web", "u1", stack="app")
    front = replace(front, spec=front.spec.model_copy(update={"networks": ["frontnet"]}))
    back = service("app_db", "u2", stack="app")
    back = replace(back, spec=back.spec.model_copy(update={"networks": ["backnet"]}))
    lone = service("lone", "u3")
    lone = replace(lone, spec=lone.spec.model_copy(update={"networks": ["lonenet"]}))
    table = NameTable.build(
        [front, back, lone],
        [
            VipRecord("app_web", "u1", "10.213.0.16"),
            VipRecord("app_db", "u2", "10.213.0.17"),
            VipRecord("lone", "u3", "10.213.0.18"),
        ],
    )

    def rcode(name: str, asker: str | None) -> int:
        q = w.parse_query(w.build_query(name, w.A))
        reply = Resolver(lambda: table).answer(q, asker)
        assert reply is not None
        return w.parse_answer(reply).rcode

    assert rcode("app.shoal", "app_web") == w.NOERROR and rcode("app.shoal", None) == w.NOERROR
    assert rcode("app.shoal", "lone") == w.NXDOMAIN  # it sees no name there: as if none existed
    assert rcode("db.app.shoal", "lone") == w.NXDOMAIN
    assert rcode("shoal", "lone") == w.NOERROR  # the zone's apex, always there
    assert rcode("nope.shoal", None) == w.NXDOMAIN and rcode("other.app.shoal", None) == w.NXDOMAIN


def test_a_class_or_opcode_it_does_not_serve_is_notimp() -> None:
    raw = bytearray(w.build_query("web", w.A))
    raw[-1] = 3  # class CH
    assert (a := ask_raw(bytes(raw))) is not None and a.rcode == w.NOTIMP
    raw = bytearray(w.build_query("web", w.A))
    raw[2] |= 0x10  # opcode 2 (status)
    assert (a := ask_raw(bytes(raw))) is not None and a.rcode == w.NOTIMP


def ask_raw(data: bytes) -> w.Answer | None:
    reply = Resolver(lambda: TABLE).answer(w.parse_query(data))
    return None if reply is None else w.parse_answer(reply)


def test_a_stale_record_is_never_answered_and_a_missing_one_is_servfail() -> None:
    recreated = replace(DB, uid="u9")  # removed and created again: the old record names u1
    table = NameTable.build([recreated], [VipRecord("app_db", "u1", "10.213.0.16")])
    answer = ask("app.db", table=table)
    assert answer is not None and answer.rcode == w.SERVFAIL and answer.a == []
    gone = NameTable.build([], [VipRecord("app_db", "u1", "10.213.0.16")])  # removed, record not yet released
    answer = ask("app.db", table=gone)
    assert answer is None  # not ours any more: forwarded (and the host's resolver knows no such name)
    answer = ask("db.app.shoal", table=gone)
    assert answer is not None and answer.rcode == w.NXDOMAIN


def test_a_service_name_wins_over_another_stack_form_that_spells_the_same() -> None:
    # the names are distinct by construction except through `<stack>.<service>` vs a dotted
    # external name; a service name can hold no dot, so `a.b` is only ever stack a's b
    table = NameTable.build([service("a_b", "u", stack="a")], [VipRecord("a_b", "u", "10.213.0.30")])
    assert table.lookup("a.b") is not None and table.lookup("b.a") is None


# -- the VIP rules ----------------------------------------------------------------------


def test_addresses_are_handed_out_in_turn_after_the_cursor_and_wrap() -> None:
    first = str(NET.network_address + FIRST_VIP)
    assert next_free(NET, set(), None) == first
    assert next_free(NET, {first}, None) == "10.213.0.17"
    assert next_free(NET, set(), "10.213.0.40") == "10.213.0.41"  # a released .20 waits its turn
    assert next_free(NET, set(), "10.213.0.254") == first  # wraps; never the broadcast address
    assert next_free(NET, set(), "junk") == first
    every = {str(NET.network_address + i) for i in range(FIRST_VIP, 255)}
    assert next_free(NET, every, None) is None
    assert dns_address(NET) == "10.213.0.1"


def test_plan_allocates_for_new_and_recreated_services_and_releases_removed_ones() -> None:
    records = [VipRecord("app_db", "u0", "10.213.0.16"), VipRecord("old", "u3", "10.213.0.18")]
    p = plan([DB, WEB], records)
    assert [s.name for s in p.allocate] == ["app_db", "web"]  # app_db: another incarnation's record
    assert [v.service for v in p.release] == ["old"]
    settled = plan([DB], [VipRecord("app_db", "u1", "10.213.0.16")])
    assert settled.allocate == [] and settled.release == []
    moved = plan([DB], [VipRecord("app_db", "u1", "10.213.0.16")], ipaddress.IPv4Network("10.99.0.0/24"))
    assert [s.name for s in moved.allocate] == ["app_db"]  # vip_range changed: a new address in it


def test_vip_record_reads_back_and_unreadable_values_are_none() -> None:
    r = VipRecord("web", "u2", "10.213.0.17")
    assert VipRecord.from_json(r.to_json()) == r
    for raw in (b"{", b"{}", b'{"service": "a", "uid": "b", "address": "300.1.1.1"}'):
        assert VipRecord.from_json(raw) is None


@pytest.mark.parametrize(("text", "why"), [("10.213.0.1/16", "host bits"), ("10.0.0.0/30", "/8 to /26"),
                                           ("nonsense", "not an IPv4 network")])  # fmt: skip
def test_a_bad_vip_range_is_refused_with_what_to_fix(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        vip_network(text)


def test_host_resolvers_skips_our_own_address_and_ipv6(tmp_path: object) -> None:
    from pathlib import Path

    conf = Path(str(tmp_path)) / "resolv.conf"
    conf.write_text("# x\nsearch lan\nnameserver 10.213.0.1\nnameserver ::1\nnameserver 192.0.2.53\n")
    assert host_resolvers(conf, exclude=("10.213.0.1",)) == ["192.0.2.53"]
    assert host_resolvers(Path(str(tmp_path)) / "missing") == []
