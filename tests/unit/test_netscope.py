"""Networks scope names and VIPs (decision 64): the spec field and its cluster-wide names,
who sees whom in the name table and the resolver's answers, the source-address map, the
listener's gate (a refused client is reset before the engine sees it; under uvloop too),
the name server answering a source it does not know yet only after a refresh, and the
Compose mapping."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from dataclasses import replace

import pytest
import uvloop

from node.compose.translate import ComposeError, translate
from node.model.domain import ServiceRecord
from node.model.spec import SpecError, parse_spec
from node.model.spec_networks import CLUSTER_NETWORK, networks_of
from node.proxy import dnswire as w
from node.proxy import sources as sources_module
from node.proxy.balancer import Backend, Balancer
from node.proxy.dnsserver import DnsServer, Resolver
from node.proxy.names import OUTSIDER, NameTable, VipRecord
from node.proxy.sources import SourceMap
from node.proxy.tcp import TcpProxy
from node.runtime.base import LABELS, Container
from tests.factories import make_service

HOST = "127.0.0.1"


def service(name: str, uid: str, stack: str | None, networks: list[str] | None) -> ServiceRecord:
    extra: dict[str, object] = {"ports": [{"container": 80}]}
    if stack:
        extra["stack"] = stack
    if networks is not None:
        extra["networks"] = networks
    return replace(make_service(name, **extra), uid=uid)


SERVICES = [
    service("app_web", "u1", "app", ["frontnet"]),
    service("app_api", "u2", "app", ["frontnet", "backnet"]),
    service("app_db", "u3", "app", ["backnet"]),
    service("plain", "u4", None, None),
    service("other_x", "u5", "other", ["app_backnet"]),  # joins app's backnet by its full name
]
TABLE = NameTable.build(
    SERVICES, [VipRecord(s.name, s.uid, f"10.213.0.{16 + i}") for i, s in enumerate(SERVICES)]
)


def ask(name: str, asker: str | None, qtype: int = w.A) -> w.Answer | None:
    q = w.parse_query(w.build_query(name, qtype, ident=5))
    reply = Resolver(lambda: TABLE).answer(q, asker)
    return None if reply is None else w.parse_answer(reply)


def test_networks_field_and_their_cluster_wide_names() -> None:
    assert parse_spec("name: a\nimage: x\nnetworks: [frontnet, app_backnet]\n").networks == [
        "frontnet",
        "app_backnet",
    ]
    assert parse_spec("name: a\nimage: x\n").networks is None
    for bad, why in (("[Front]", "a-z"), ("[]", "must not be empty"), ("frontnet", "list")):
        with pytest.raises(SpecError, match=why):
            parse_spec(f"name: a\nimage: x\nnetworks: {bad}\n")
    assert networks_of(None, "app") == {CLUSTER_NETWORK}
    assert networks_of(["frontnet", "other_net"], "app") == {"app_frontnet", "other_net"}
    assert networks_of(["frontnet"], None) == {"frontnet"}


def test_who_shares_a_network_with_whom() -> None:
    t = TABLE
    assert t.shares("app_web", "app_api") and t.shares("app_api", "app_db")
    assert not t.shares("app_web", "app_db") and not t.shares("app_db", "app_web")
    assert not t.shares("app_web", "plain") and not t.shares("plain", "app_db")
    assert t.shares("other_x", "app_db") and not t.shares("other_x", "app_web")
    assert t.shares(None, "app_db") and t.shares(None, "plain")  # the host sees everything
    assert t.shares(OUTSIDER, "plain") and not t.shares(OUTSIDER, "app_api")  # cluster network only
    assert not t.shares("gone", "plain")  # a service the table no longer has sees nothing


def test_the_resolver_answers_each_asker_for_its_networks() -> None:
    web = ask("db.app.shoal", "app_web")
    assert web is not None and web.rcode == w.NXDOMAIN  # as if app_db did not exist
    assert ask("app_db", "app_web") is None  # not in the zone: forwarded, like any unknown name
    seen = ask("api.app.shoal", "app_web")
    assert seen is not None and seen.rcode == w.NOERROR and seen.a == ["10.213.0.17"]
    api = ask("db.app.shoal", "app_api")
    assert api is not None and api.a == ["10.213.0.18"]
    hidden = ask("_x._tcp.db.app.shoal", "app_web", w.SRV)
    assert hidden is not None and hidden.rcode == w.NXDOMAIN and hidden.srv == []
    srv = ask("_x._tcp.db.app.shoal", "app_api", w.SRV)
    assert srv is not None and srv.srv == [(80, "db.app.shoal")]
    host = ask("app.db", None)
    assert host is not None and host.a == ["10.213.0.18"]
    plain = ask("plain", OUTSIDER)
    assert plain is not None and plain.a == ["10.213.0.19"]


def container(ip: str, service: str, state: str = "running") -> Container:
    return Container(f"c-{ip}", f"{service}.1", {LABELS.SERVICE: service}, state, ip=ip)


async def test_source_map_asker_host_and_bounded_refreshes() -> None:
    calls = 0
    found = [container("172.17.0.5", "app_web"), container("172.17.0.6", "app_db", state="exited")]

    async def listed() -> list[Container]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 3:
            raise ConnectionError("engine away")
        return list(found)

    m = SourceMap(listed, (ipaddress.IPv4Network("10.213.0.0/16"),), ("192.0.2.7",))
    assert m.asker("172.17.0.5") == OUTSIDER and not m.known("172.17.0.5")
    await asyncio.gather(m.refresh(), m.refresh(), m.refresh())  # joined: one list
    assert calls == 1 and m.asker("172.17.0.5") == "app_web"
    assert m.asker("172.17.0.6") == OUTSIDER  # not running: not an asker
    assert m.asker("10.213.0.40") is None and m.asker("192.0.2.7") is None  # the host
    assert m.asker("127.0.0.1") == OUTSIDER  # loopback is the host only when given (of_runtime)
    await m.refresh()
    assert calls == 1  # within MIN_REFRESH of the last: skipped
    m.refreshed = 0.0
    found.append(container("172.17.0.9", "app_api"))
    await m.refresh()
    assert calls == 2 and m.asker("172.17.0.9") == "app_api"
    m.refreshed = 0.0
    await m.refresh()  # the engine does not answer: the map is kept
    assert calls == 3 and m.asker("172.17.0.9") == "app_api"


async def test_refresh_after_lists_after_the_ask_even_within_the_window() -> None:
    found = [container("172.17.0.5", "app_web")]
    calls = 0

    async def listed() -> list[Container]:
        nonlocal calls
        calls += 1
        return list(found)

    m = SourceMap(listed, ())
    changes: list[int] = []
    m.on_change.append(lambda: changes.append(m.version))
    await m.refresh()
    found.append(container("172.17.0.9", "app_api"))  # started just after that list
    await m.refresh()
    assert calls == 1 and m.asker("172.17.0.9") == OUTSIDER  # skipped: within MIN_REFRESH
    await m.refresh_after()  # waits out the window, then lists
    assert calls == 2 and m.asker("172.17.0.9") == "app_api" and changes == [1, 2]
    await m.refresh_after()
    assert calls == 3 and changes == [1, 2]  # nothing changed: no call


async def test_a_hung_engine_list_is_given_up_and_the_map_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_module, "LIST_TIMEOUT", 0.05)
    hang = asyncio.Event()

    async def listed() -> list[Container]:
        if hang.is_set():
            await asyncio.Event().wait()  # never answers
        return [container("172.17.0.5", "app_web")]

    m = SourceMap(listed, ())
    await m.refresh()
    hang.set()
    m.refreshed = 0.0
    async with asyncio.timeout(2):
        await m.refresh()
    assert m.asker("172.17.0.5") == "app_web" and m.refreshes == 1


async def _echo_backend() -> tuple[asyncio.Server, Backend]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    return server, Backend("t1", HOST, server.sockets[0].getsockname()[1], "n1")


async def _first_line(port: int) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        async with asyncio.timeout(5):
            return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _gate() -> None:
    server, backend = await _echo_backend()
    balancer = Balancer()
    balancer.set_endpoints([backend])
    allowed: list[str] = []
    proxy = TcpProxy(HOST, 0, balancer, connect_timeout=1.0, drain_timeout=1.0)
    proxy.admit = lambda address: allowed.append(address) is None and len(allowed) % 2 == 1
    await proxy.start()
    assert await _first_line(proxy.port) == b"hello\n"  # admitted: served by the engine
    with pytest.raises(ConnectionResetError):  # refused: reset, no byte
        line = await _first_line(proxy.port)
        raise AssertionError(f"a refused client was answered {line!r}")
    assert allowed == [HOST, HOST] and proxy.refused == 1 and proxy.stats.connections == 1
    assert await _first_line(proxy.port) == b"hello\n"
    await proxy.close()
    server.close()


async def test_the_listener_gate_resets_a_refused_client_and_serves_the_others() -> None:
    await _gate()


def test_the_listener_gate_under_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_gate())


async def test_the_name_server_learns_a_new_source_before_it_answers() -> None:
    found: list[Container] = []

    async def listed() -> list[Container]:
        return list(found)

    sources = SourceMap(listed, ())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    server = await DnsServer.start(HOST, port, lambda: TABLE, [], sources=sources)
    loop = asyncio.get_running_loop()

    async def query(name: str) -> w.Answer:
        got: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got.done() or got.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(HOST, port))
        try:
            transport.sendto(w.build_query(name, w.A, ident=9))
            return w.parse_answer(await asyncio.wait_for(got, 2.0))
        finally:
            transport.close()

    try:
        outsider = await query("db.app.shoal")  # 127.0.0.1 is no container: the cluster network
        assert outsider.rcode == w.NXDOMAIN and (await query("plain")).a == ["10.213.0.19"]
        found.append(container(HOST, "app_api"))  # "started" now: the next query refreshes first
        sources.refreshed = 0.0
        sources.by_address = {}
        answer = await query("db.app.shoal")
        assert answer.rcode == w.NOERROR and answer.a == ["10.213.0.18"]
        assert sources.asker(HOST) == "app_api"
    finally:
        server.close()


COMPOSE = """\
name: shop
services:
  web:
    image: shoal-demo/web:1
    networks: [frontnet]
  api:
    image: shoal-demo/web:1
    networks:
      frontnet: {aliases: [x], priority: 10}
      backnet:
  db:
    image: shoal-demo/web:1
    networks: [backnet, shared]
  tool:
    image: shoal-demo/web:1
networks:
  frontnet: {driver: overlay}
  backnet: {}
  shared: {external: true, name: other_net}
"""


def test_compose_networks_map_onto_the_spec() -> None:
    out = translate(COMPOSE, "c.yaml")
    nets = {k: v.get("networks") for k, v in out.document["services"].items()}
    assert nets == {
        "web": ["frontnet"],
        "api": [{"name": "frontnet", "aliases": ["x"]}, "backnet"],
        "db": ["backnet", "other_net"],
        "tool": None,
    }
    warned = [n.render("c.yaml") for n in out.warnings]
    assert any("c.yaml:9:32: services.api.networks.frontnet.priority: ignored" in x for x in warned), warned
    assert any("networks.frontnet.driver: ignored" in x for x in warned), warned


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("[backnet, shared]", "[backnet, nope]"),
            "c.yaml:13:5: services.db.networks.nope: undefined network 'nope'",
        ),
        (
            ("name: other_net", "name: othernet"),
            "networks.shared.external: an external network is another stack's",
        ),
        (("{driver: overlay}", "{drivr: overlay}"), "networks.frontnet.drivr: unknown network key"),
        (("networks: [frontnet]", "networks: frontnet"), "services.web.networks: must be a list"),
    ],
)
def test_compose_networks_errors_name_the_line(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ComposeError, match=message.replace(".", r"\.").replace("'", ".")):
        translate(COMPOSE.replace(*change), "c.yaml")
