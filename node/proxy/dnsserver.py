"""The node's name server for its containers: UDP on `<dns address>:53`.

Answers service names from the current `NameTable` (`node.proxy.names`), at once and
from memory; forwards every other name to the host's resolver (the first `nameserver`
of the host's /etc/resolv.conf that is not our own address), relaying its answer as it
comes; with no resolver to forward to, or one that does not answer within
`FORWARD_TIMEOUT`, the client gets REFUSED or SERVFAIL at once rather than waiting out
its own timeout. Forwarded queries in flight are bounded (`MAX_FORWARDS`); beyond,
SERVFAIL. An unreadable query gets FORMERR (or nothing, if not even its header reads).

Networks (decision 64): with a `SourceMap`, each query is answered for the container
that asks (its source address -> its service -> its networks): a service that shares no
network with it is answered as if it did not exist (NXDOMAIN under `.shoal`, forwarded
otherwise, as any unknown name), and so is an alias held on no network of it (decision
73). A name of the zone with names below it that the asker sees (`app.shoal`, and the
zone's apex) has no data: NOERROR and no records, never NXDOMAIN (RFC 8020). A source
the map does not know yet is answered after one refresh of the map.

Answers from the table are kept, encoded, per (asker, query without its ID) until the
table changes (`MAX_CACHED` at most): a repeated query is answered by copying its ID
in front of the kept bytes, without parsing, resolving or encoding (decision 74).

Answers carry TTL `TTL` (5 s): a removed service's name stops answering here at once,
and a client cache holds the old VIP (which no longer listens) for at most that.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from node.proxy import dnswire as w
from node.proxy.names import NameTable, in_zone
from node.proxy.sources import SourceMap

log = logging.getLogger(__name__)

TTL = 5
FORWARD_TIMEOUT = 2.0
MAX_FORWARDS = 256
MAX_CACHED = 4096  # encoded answers kept (per asker and query); all dropped when full
CACHEABLE = 512  # bytes of a query kept as a cache key at most: a stub's query is far less


def host_resolvers(path: Path = Path("/etc/resolv.conf"), exclude: tuple[str, ...] = ()) -> list[str]:
    """The IPv4 `nameserver`s of the host's resolv.conf, without `exclude` (our own)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and "." in parts[1] and parts[1] not in exclude:
            out.append(parts[1])
    return out


class Resolver:
    """The pure-ish part: a query in, the answer bytes out (or None: forward it)."""

    def __init__(self, table: Callable[[], NameTable]) -> None:
        self.table = table

    def answer(self, q: w.Query, asker: str | None = None) -> bytes | None:
        """`asker`: the service of the asking container (None: the host); a service that
        shares no network with it is answered as if it did not exist (decision 64)."""
        if q.qclass != w.IN or (q.flags >> 11) & 0xF:
            return w.answer_error(q, w.NOTIMP)
        table = self.table()
        if q.qtype == w.SRV:
            found = table.srv_resolve(q.name, asker)
            if found is not None:
                base, target = found
                if target.address is None:
                    return w.answer_error(q, w.SERVFAIL)
                srv = [w.SrvTarget(p, base) for p in target.ports]
                return w.answer_srv(q, srv, {base: target.address} if srv else {}, TTL)
        else:
            named = table.resolve(q.name, asker)
            if named is not None:
                if named.address is None:
                    return w.answer_error(q, w.SERVFAIL)
                addresses = [named.address] if q.qtype in (w.A, w.ANY) else []
                return w.answer_a(q, addresses, TTL)
        if in_zone(q.name):
            if table.has_below(q.name, asker) or (q.qtype != w.SRV and table.srv_resolve(q.name, asker)):
                return w.answer_a(q, [], TTL)  # there, with names below or SRV records: no data (RFC 8020)
            return w.answer_error(q, w.NXDOMAIN, authoritative=True)
        return None


class DnsServer(asyncio.DatagramProtocol):
    def __init__(
        self,
        table: Callable[[], NameTable],
        upstreams: list[str],
        upstream_port: int = 53,
        sources: SourceMap | None = None,
    ) -> None:
        self.resolver = Resolver(table)
        self.sources = sources  # None: every asker sees every service (no networks)
        self.upstreams = upstreams
        self.upstream_port = upstream_port
        self.transport: asyncio.DatagramTransport | None = None
        self.forwards: set[asyncio.Task[None]] = set()
        self.answered = 0
        self.forwarded = 0
        self.cache_hits = 0
        self._cached: dict[tuple[str | None, bytes], bytes] = {}  # (asker, query[2:]) -> answer[2:]
        self._cached_table: NameTable | None = None

    @classmethod
    async def start(
        cls,
        address: str,
        port: int,
        table: Callable[[], NameTable],
        upstreams: list[str],
        upstream_port: int = 53,
        sources: SourceMap | None = None,
    ) -> DnsServer:
        """Bound on `address:port` (no SO_REUSEADDR: a second server on one host fails
        with EADDRINUSE, which the caller takes as "another node serves it")."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        server = cls(table, upstreams, upstream_port, sources)
        await loop.create_datagram_endpoint(lambda: server, sock=sock)
        return server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) <= CACHEABLE and (self.sources is None or self.sources.known(addr[0])):
            tail = self._cached.get((self._asker(addr), data[2:]))
            if tail is not None and self._cached_table is self.resolver.table():
                self.answered += 1
                self.cache_hits += 1
                self._send(data[:2] + tail, addr)
                return
        try:
            q = w.parse_query(data)
        except w.DnsFormatError:
            reply = w.formerr(data)
            if reply is not None:
                self._send(reply, addr)
            return
        if self.sources is not None and not self.sources.known(addr[0]) and len(self.forwards) < MAX_FORWARDS:
            # a container started since the map's last refresh: learn it, then answer
            self._spawn(self._answer_later(data, q, addr))
            return
        self._answer(data, q, addr)

    async def _answer_later(self, data: bytes, q: w.Query, addr: tuple[str, int]) -> None:
        assert self.sources is not None
        await self.sources.refresh()
        self._answer(data, q, addr)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.forwards.add(task)
        task.add_done_callback(self.forwards.discard)

    def _asker(self, addr: tuple[str, int]) -> str | None:
        return self.sources.asker(addr[0]) if self.sources is not None else None

    def _answer(self, data: bytes, q: w.Query, addr: tuple[str, int]) -> None:
        asker = self._asker(addr)
        table = self.resolver.table()
        if table is not self._cached_table:
            self._cached, self._cached_table = {}, table
        try:
            reply = self.resolver.answer(q, asker)
        except ValueError as exc:  # a record that cannot be encoded: say so, answer SERVFAIL
            log.warning("names: cannot answer %s: %s", q.name, exc)
            reply = w.answer_error(q, w.SERVFAIL)
        if reply is not None:
            if len(data) <= CACHEABLE:  # a query padded with junk is answered, not kept
                if len(self._cached) >= MAX_CACHED:
                    self._cached = {}
                self._cached[(asker, data[2:])] = reply[2:]
            self.answered += 1
            self._send(reply, addr)
            return
        if not self.upstreams:
            self._send(w.answer_error(q, w.REFUSED), addr)
            return
        if len(self.forwards) >= MAX_FORWARDS:
            self._send(w.answer_error(q, w.SERVFAIL), addr)
            return
        self._spawn(self._forward(data, q, addr))

    async def _forward(self, data: bytes, q: w.Query, addr: tuple[str, int]) -> None:
        self.forwarded += 1
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class _Up(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, _addr: tuple[str, int]) -> None:
                if not got.done() and w.reply_id(reply) == q.id:
                    got.set_result(reply)

            def error_received(self, exc: Exception) -> None:
                if not got.done():
                    got.set_exception(exc)

        transport = None
        try:
            transport, _ = await loop.create_datagram_endpoint(
                _Up, remote_addr=(self.upstreams[0], self.upstream_port)
            )
            transport.sendto(data)
            # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation (close())
            # that arrives with the upstream's answer; on timeout `got` is cancelled either way
            async with asyncio.timeout(FORWARD_TIMEOUT):
                reply = await got
        except (OSError, TimeoutError) as exc:
            log.debug("names: forwarding %s to %s failed: %s", q.name, self.upstreams[0], exc)
            reply = w.answer_error(q, w.SERVFAIL)
        finally:
            if transport is not None:
                transport.close()
        self._send(reply, addr)

    def _send(self, reply: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def close(self) -> None:
        for task in list(self.forwards):
            task.cancel()
        if self.transport is not None:
            self.transport.close()
