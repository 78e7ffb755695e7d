"""The name server's kept answers (node.proxy.dnsserver, decision 74): a repeated query
is answered from the kept bytes with its own ID, per asker, and nothing kept survives a
new name table (a VIP written, a service removed)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from node.proxy import dnswire as w
from node.proxy.dnsserver import MAX_CACHED, DnsServer
from node.proxy.names import NameTable, VipRecord
from node.proxy.sources import SourceMap
from node.runtime.base import Container
from tests.unit.test_names_dns import DB, TABLE, WEB

CLIENT = ("172.17.0.9", 40000)


class Sent(asyncio.DatagramTransport):
    def __init__(self) -> None:
        super().__init__()
        self.replies: list[bytes] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.replies.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def server(table: list[NameTable], sources: SourceMap | None = None) -> tuple[DnsServer, Sent]:
    s = DnsServer(lambda: table[0], [], sources=sources)
    sent = Sent()
    s.connection_made(sent)
    return s, sent


def ask(s: DnsServer, sent: Sent, name: str, ident: int, qtype: int = w.A) -> w.Answer:
    s.datagram_received(w.build_query(name, qtype, ident=ident), CLIENT)
    return w.parse_answer(sent.replies[-1])


def test_a_repeated_query_is_answered_from_kept_bytes_with_its_own_id() -> None:
    s, sent = server([TABLE])
    first, again = ask(s, sent, "web", 1), ask(s, sent, "web", 2)
    assert (first.id, again.id) == (1, 2) and first.a == again.a == ["10.213.0.17"]
    assert sent.replies[0][2:] == sent.replies[1][2:] and s.cache_hits == 1
    assert ask(s, sent, "web", 3, w.SRV).srv and s.cache_hits == 1  # another question: not kept yet
    nx = ask(s, sent, "nothing.shoal", 4)
    assert nx.rcode == w.NXDOMAIN and ask(s, sent, "nothing.shoal", 5).rcode == w.NXDOMAIN
    assert s.cache_hits == 2


def test_a_new_table_drops_what_was_kept() -> None:
    tables = [NameTable.build([DB, WEB], [VipRecord("app_db", "u1", "10.213.0.16")])]
    s, sent = server(tables)
    assert ask(s, sent, "web", 1).rcode == w.SERVFAIL  # its VIP not written yet
    tables[0] = TABLE  # the names loop built a new table: web's VIP is there
    assert ask(s, sent, "web", 2).a == ["10.213.0.17"] and s.cache_hits == 0


async def test_answers_are_kept_per_asker() -> None:
    async def listing() -> list[Container]:
        return [Container("c1", "x", {"io.shoal.service": "app_db"}, "running", ip=CLIENT[0])]

    sources = SourceMap(listing, (ipaddress.IPv4Network("127.0.0.0/8"),))
    await sources.refresh()
    s, sent = server([TABLE], sources)
    assert ask(s, sent, "app_db", 1).a == ["10.213.0.16"] and s.cache_hits == 0  # asked by app_db
    host = ("127.0.0.1", 5353)  # the host: another asker, answered for itself
    s.datagram_received(w.build_query("app_db", w.A, ident=2), host)
    assert s.cache_hits == 0
    s.datagram_received(w.build_query("app_db", w.A, ident=3), host)
    assert s.cache_hits == 1 and w.parse_answer(sent.replies[-1]).id == 3


def test_the_kept_answers_are_bounded() -> None:
    s, sent = server([TABLE])
    for i in range(MAX_CACHED + 10):
        ask(s, sent, f"n{i}.shoal", i % 65536)
    assert len(s._cached) <= MAX_CACHED


def test_queries_padded_with_junk_are_answered_but_not_kept() -> None:
    """Bytes after the question are ignored by the parser; as part of the cache key, 4,096
    queries of 60 KB each held about 250 MB (a read-only audit found it)."""
    s, sent = server([TABLE])
    for i in range(50):
        query = w.build_query("nothing-here.shoal", w.A, ident=i) + bytes([i]) * 60_000
        s.datagram_received(query, CLIENT)
        assert w.parse_answer(sent.replies[-1]).rcode == w.NXDOMAIN
    assert s._cached == {}
    ask(s, sent, "nothing-here.shoal", 7)  # a plain query is kept as before
    assert len(s._cached) == 1
