"""The names component (node.proxy.vips) over a MemoryStore, with real sockets: its
"VIP range" is a 127.x /24 (every loopback address is local, like the host route makes
the real range), the name server answers on a free UDP port, backends are small asyncio
servers published as endpoints the way agents publish them."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from node.model.domain import EndpointRecord, ServiceRecord, new_service_uid
from node.model.keys import Keys
from node.proxy import dnswire as w
from node.proxy.dnsserver import DnsServer
from node.proxy.mesh import Mesh, MeshSettings
from node.proxy.names import NameTable, VipRecord
from node.proxy.vips import ALLOCATION_RETRY, Names
from node.proxy.vipstore import VipRangeFull
from node.store.memory import MemoryStore
from tests.factories import make_service, make_task
from tests.helpers import wait_until

KEYS = Keys()
HOST = "127.0.0.1"


def free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


async def query(address: str, port: int, name: str, qtype: int = w.A) -> w.Answer:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(address, port))
    try:
        transport.sendto(w.build_query(name, qtype, ident=4242))
        answer = w.parse_answer(await asyncio.wait_for(got, 2.0))
        assert answer.id == 4242
        return answer
    finally:
        transport.close()


async def ask_tcp(address: str, port: int) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 2.0)
    try:
        return (await asyncio.wait_for(reader.read(100), 2.0)).decode().strip()
    finally:
        writer.close()


class World:
    def __init__(self, net: ipaddress.IPv4Network) -> None:
        self.store = MemoryStore()
        self.net = net
        self.dns_port = free_udp_port(HOST)
        self.servers: list[asyncio.Server] = []
        self.runs: list[asyncio.Task[None]] = []

    def node(self, name: str) -> tuple[Mesh, Names]:
        settings = MeshSettings(connect_timeout=0.5, drain_timeout=0.5, rebind_interval=0.2)
        mesh = Mesh(self.store, KEYS, name, HOST, settings=settings)
        names = Names(mesh, self.net, [], dns_port=self.dns_port)
        self.runs += [asyncio.create_task(mesh.run()), asyncio.create_task(names.run())]
        return mesh, names

    async def service(self, name: str, stack: str | None = None, port: int = 80) -> ServiceRecord:
        extra: dict[str, object] = {"ports": [{"container": port}]}
        if stack:
            extra["stack"] = stack
        record = replace(make_service(name, replicas=2, **extra), uid=new_service_uid())
        await self.store.put(KEYS.service(name), record.to_json())
        return record

    async def backend(self, record: ServiceRecord, slot: int, node: str, port: int = 80) -> str:
        task = replace(make_task(record, slot, node), uid=record.uid)
        said = f"{record.name}.{slot}@{node}"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(said.encode() + b"\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        self.servers.append(server)
        host_port = server.sockets[0].getsockname()[1]
        await self.store.put(KEYS.task(record.name, slot), task.to_json())
        endpoint = EndpointRecord(
            task.task_id, record.name, node, HOST, host_port, port, {str(port): host_port}
        )
        await self.store.put(KEYS.endpoint(record.name, task.task_id), endpoint.to_json())
        return said

    async def http_backend(self, record: ServiceRecord, slot: int, node: str, port: int) -> str:
        """A replica answering every HTTP/1.1 request with its name, keeping the connection."""
        task = replace(make_task(record, slot, node), uid=record.uid)
        said = f"{record.name}.{slot}@{node}"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(said), said.encode())
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        self.servers.append(server)
        host_port = server.sockets[0].getsockname()[1]
        await self.store.put(KEYS.task(record.name, slot), task.to_json())
        endpoint = EndpointRecord(
            task.task_id, record.name, node, HOST, host_port, port, {str(port): host_port}
        )
        await self.store.put(KEYS.endpoint(record.name, task.task_id), endpoint.to_json())
        return said

    async def vip(self, service: str) -> VipRecord:
        async def written() -> VipRecord | None:
            kv = await self.store.get(KEYS.vip(service))
            return VipRecord.from_json(kv.value) if kv is not None else None

        return await wait_until(written, 5.0, message=f"a VIP for {service}")

    async def close(self) -> None:
        for t in self.runs:
            t.cancel()
        await asyncio.gather(*self.runs, return_exceptions=True)
        for s in self.servers:
            s.close()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w_ = World(ipaddress.IPv4Network("127.77.0.0/24"))
    yield w_
    await w_.close()


async def test_a_service_answers_by_name_and_its_vip_spreads_over_replicas(world: World) -> None:
    _, names = world.node("n1")
    db = await world.service("app_db", stack="app")
    said = {await world.backend(db, 1, "n1"), await world.backend(db, 2, "n2")}
    vip = await world.vip("app_db")
    assert vip.uid == db.uid and ipaddress.IPv4Address(vip.address) in world.net
    for name in ("app.db", "db.app.shoal", "app_db"):
        answer = await wait_until(
            lambda n=name: _answered(world, n),
            5.0,
            message=f"{name} answered",  # type: ignore[misc]
        )
        assert answer.a == [vip.address]
    srv = await query(names.dns_address, world.dns_port, "_x._tcp.db.app.shoal", w.SRV)
    assert srv.srv == [(80, "db.app.shoal")]
    await wait_until(lambda: (vip.address, 80) in names.listeners, 5.0)
    await wait_until(lambda: len(names.listeners[(vip.address, 80)].balancer.backends) == 2, 5.0)
    seen = {await ask_tcp(vip.address, 80) for _ in range(6)}
    assert seen == said  # both replicas, on "both nodes", answered through the VIP


async def test_an_http_port_is_balanced_per_request_through_the_vip(world: World) -> None:
    """A port with `protocol: http` gets the mesh's L7 engine on the VIP too: two requests
    on one kept-alive client connection go to both replicas."""
    _, names = world.node("n1")
    record = replace(
        make_service("api", replicas=2, ports=[{"container": 8080, "protocol": "http"}]),
        uid=new_service_uid(),
    )
    await world.store.put(KEYS.service("api"), record.to_json())
    said = set()
    for slot, node in ((1, "n1"), (2, "n2")):
        said.add(await world.http_backend(record, slot, node, 8080))
    vip = await world.vip("api")
    await wait_until(lambda: (vip.address, 8080) in names.listeners, 5.0)
    await wait_until(lambda: len(names.listeners[(vip.address, 8080)].balancer.backends) == 2, 5.0)
    reader, writer = await asyncio.open_connection(vip.address, 8080)
    bodies = set()
    try:
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            bodies.add((await reader.readexactly(length)).decode())
    finally:
        writer.close()
    assert bodies == said


async def _answered(world: World, name: str) -> w.Answer | None:
    answer = await query(str(world.net.network_address + 1), world.dns_port, name)
    return answer if answer.rcode == w.NOERROR and answer.a else None


async def test_after_rm_the_name_is_gone_the_vip_stops_and_a_recreation_is_fresh(world: World) -> None:
    _, names = world.node("n1")
    db = await world.service("app_db", stack="app")
    await world.backend(db, 1, "n1")
    old = await world.vip("app_db")
    await wait_until(lambda: (old.address, 80) in names.listeners, 5.0)
    await world.store.delete(KEYS.service("app_db"))

    async def gone() -> bool:
        answer = await query(names.dns_address, world.dns_port, "db.app.shoal")
        return answer.rcode == w.NXDOMAIN and (old.address, 80) not in names.listeners

    await wait_until(gone, 5.0, message="the name and the listener gone")
    await wait_until(lambda: _no_record(world), 5.0, message="the VIP released")
    with pytest.raises(OSError):
        await ask_tcp(old.address, 80)
    again = await world.service("app_db", stack="app")
    new = await world.vip("app_db")
    assert new.uid == again.uid and new.address != old.address
    answer = await wait_until(lambda: _answered(world, "app.db"), 5.0)
    assert answer.a == [new.address]


async def test_a_vip_ports_changed_protocol_keeps_its_socket_and_serves_on(world: World) -> None:
    """A VIP port whose route changes (tcp to http) gets its new engine on the same kernel
    socket, before the old one stops (`node.proxy.ports`): the port is never shut
    between. Before, the old listener was closed first and the new one bound after."""
    from tests.helpers import listening_inodes

    _, names = world.node("n1")
    db = await world.service("app_db", stack="app")
    said = await world.http_backend(db, 1, "n1", 80)
    vip = await world.vip("app_db")
    await wait_until(lambda: (vip.address, 80) in names.listeners, 5.0)
    before = listening_inodes(80, vip.address)
    assert len(before) == 1
    http = make_service("app_db", replicas=2, stack="app", ports=[{"container": 80, "protocol": "http"}])
    await world.store.put(KEYS.service("app_db"), replace(http, uid=db.uid).to_json())
    await wait_until(lambda: names.listeners[(vip.address, 80)].route.protocol == "http", 5.0)
    assert listening_inodes(80, vip.address) == before  # the VIP's socket is still the one
    reader, writer = await asyncio.open_connection(vip.address, 80)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        assert (await reader.readexactly(length)).decode() == said
    finally:
        writer.close()


async def _no_record(world: World) -> bool:
    return (
        await world.store.get(KEYS.vip("app_db")) is None and not (await world.store.range(KEYS.vipaddrs))[0]
    )


async def test_two_nodes_on_one_stack_one_serves_the_other_takes_over(world: World) -> None:
    """`shoal dev`: every node on one network stack; the first to bind serves."""
    _, first = world.node("n1")
    await wait_until(lambda: first.dns is not None, 5.0)
    _, second = world.node("n2")
    db = await world.service("db")
    said = await world.backend(db, 1, "n1")
    vip = await world.vip("db")
    await wait_until(
        lambda: (vip.address, 80) in first.listeners or (vip.address, 80) in second.listeners, 5.0
    )
    await wait_until(lambda: len(first.listeners) + len(second.listeners) == 1 and second.dns is None, 5.0)
    owner, other = (first, second) if (vip.address, 80) in first.listeners else (second, first)
    assert "in use" in other.waiting[(vip.address, 80)]
    assert await ask_tcp(vip.address, 80) == said
    stopping = world.runs[0:2] if owner is first else world.runs[2:4]  # the owner's mesh and names
    for t in stopping:
        t.cancel()
    await asyncio.gather(*stopping, return_exceptions=True)
    await wait_until(lambda: (vip.address, 80) in other.listeners, 5.0, message="the other node took the VIP")
    assert await ask_tcp(vip.address, 80) == said
    if owner is first:
        await wait_until(lambda: second.dns is not None, 5.0, message="the other node took the name server")


class Upstream(asyncio.DatagramProtocol):
    """A host resolver: answers every A question with 192.0.2.1."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(w.answer_a(w.parse_query(data), ["192.0.2.1"], 60), addr)


async def test_other_names_are_forwarded_to_the_host_resolver_or_refused() -> None:
    loop = asyncio.get_running_loop()
    up_port = free_udp_port(HOST)
    up, _ = await loop.create_datagram_endpoint(Upstream, local_addr=(HOST, up_port))
    port = free_udp_port(HOST)
    server = await DnsServer.start(HOST, port, NameTable, [HOST], upstream_port=up_port)
    try:
        answer = await query(HOST, port, "example.com")
        assert (answer.rcode, answer.a) == (w.NOERROR, ["192.0.2.1"]) and server.forwarded == 1
        server.upstreams = []
        assert (await query(HOST, port, "example.com")).rcode == w.REFUSED
        assert (await query(HOST, port, "nope.shoal")).rcode == w.NXDOMAIN  # ours: never forwarded
    finally:
        server.close()
        up.close()


async def test_an_upstream_that_does_not_answer_is_servfail_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("node.proxy.dnsserver.FORWARD_TIMEOUT", 0.2)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((HOST, 0))
    port = free_udp_port(HOST)
    server = await DnsServer.start(HOST, port, NameTable, [HOST], upstream_port=silent.getsockname()[1])
    try:
        assert (await query(HOST, port, "example.com")).rcode == w.SERVFAIL
    finally:
        server.close()
        silent.close()


async def test_garbage_gets_formerr_or_nothing_and_the_server_goes_on() -> None:
    port = free_udp_port(HOST)
    server = await DnsServer.start(HOST, port, NameTable, [])
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            got.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(HOST, port))
    try:
        transport.sendto(b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab")
        assert w.parse_answer(await asyncio.wait_for(got.get(), 2.0)).rcode == w.FORMERR
        transport.sendto(b"\x01")  # not even a header: dropped
        assert (await query(HOST, port, "nope.shoal")).rcode == w.NXDOMAIN
        assert got.empty()
    finally:
        transport.close()
        server.close()


class CountingStore(MemoryStore):
    """Counts the reads of every claim (`vipaddrs/`), what each allocation try costs."""

    def __init__(self) -> None:
        super().__init__()
        self.claim_reads = 0

    async def range(self, prefix: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def,override]
        if prefix == KEYS.vipaddrs:
            self.claim_reads += 1
        return await super().range(prefix, *args, **kwargs)


async def full_range(count: int) -> tuple[CountingStore, Names]:
    """`count` services on a /26 (47 addresses), one pass of allocation done."""
    store = CountingStore()
    for i in range(count):
        record = replace(make_service(f"svc-{i:02d}", ports=[{"container": 80}]), uid=new_service_uid())
        await store.put(KEYS.service(record.name), record.to_json())
    names = Names(Mesh(store, KEYS, "n1", HOST), ipaddress.IPv4Network("10.213.0.0/26"), [])
    await allocation_pass(store, names)
    return store, names


async def allocation_pass(store: MemoryStore, names: Names) -> dict[str, VipRecord]:
    services, _ = await store.range(KEYS.services)
    vips, _ = await store.range(KEYS.vips)
    readable = [ServiceRecord.from_json(kv.value) for kv in services]
    records = [r for kv in vips if (r := VipRecord.from_json(kv.value)) is not None]
    await names._allocate(readable, records)
    vips, _ = await store.range(KEYS.vips)
    return {r.service: r for kv in vips if (r := VipRecord.from_json(kv.value)) is not None}


async def test_a_full_range_recovers_when_services_are_removed() -> None:
    """Before, the allocation of the waiting service raised before the releases ran: the
    removed services kept their addresses for good and the waiting one never got one."""
    store, names = await full_range(49)  # 47 fit: svc-47 and svc-48 wait
    assert names.retry_allocation
    for i in range(5):
        await store.delete(KEYS.service(f"svc-{i:02d}"))
    held = await allocation_pass(store, names)
    assert {"svc-47", "svc-48"} <= set(held) and not set(held) & {f"svc-{i:02d}" for i in range(5)}
    assert names.full == {} and not names.retry_allocation


async def test_one_service_without_an_address_does_not_hold_the_others() -> None:
    """Before, the first service to meet a full range stopped the pass: the services after
    it were not allocated either."""
    store, names = await full_range(40)
    late = [f"late-{i}" for i in range(2)]
    for name in late:
        record = replace(make_service(name, ports=[{"container": 80}]), uid=new_service_uid())
        await store.put(KEYS.service(name), record.to_json())
    real = names.allocator.allocate

    async def first_is_full(service: str) -> VipRecord | None:
        if service == late[0]:
            raise VipRangeFull("full for this one")
        return await real(service)

    names.allocator.allocate = first_is_full  # type: ignore[method-assign]
    held = await allocation_pass(store, names)
    assert late[1] in held and late[0] not in held and list(names.full) == [late[0]]


async def test_a_full_range_is_tried_again_on_a_backed_off_timer_not_every_sync() -> None:
    """Before, every sync and a 0.1-0.5 s timer tried again, each try reading every claim."""
    store, names = await full_range(48)
    tried = time.monotonic()
    await allocation_pass(store, names)  # the records the full pass wrote: one more try
    first = names._full_retry_at - tried  # the delay it set (not what is left of it: load)
    reads = store.claim_reads
    for _ in range(5):  # syncs for other reasons (endpoints): nothing freed, no new read
        await allocation_pass(store, names)
    assert store.claim_reads == reads and names.retry_allocation
    names._full_retry_at = 0.0  # the timer is due
    tried = time.monotonic()
    await allocation_pass(store, names)
    assert store.claim_reads == reads + 1
    assert names._full_retry_at - tried > 1.5 and first >= 2 * ALLOCATION_RETRY  # doubling
    await store.delete(KEYS.service("svc-00"))  # something freed: tried at once
    assert "svc-47" in await allocation_pass(store, names)
