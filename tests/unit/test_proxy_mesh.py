"""The routing mesh over a MemoryStore, with real sockets on 127.0.0.1.

Backends are small asyncio servers that say their name; the mesh learns them from
`endpoints/` records exactly as it does from the agents in a real cluster.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from node.gossip.member import Member, MemberState
from node.model.domain import EndpointRecord, ServiceRecord, readable_endpoints
from node.model.keys import Keys
from node.proxy.mesh import Mesh, MeshSettings
from node.proxy.metrics import MeshCollector
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_service, make_task
from tests.helpers import Knocker, wait_until

HOST = "127.0.0.1"
KEYS = Keys()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class FakeGossip:
    states: dict[str, MemberState] = field(default_factory=dict)
    woken: list[asyncio.Event] = field(default_factory=list)

    def members(self) -> list[Member]:
        return [Member(n, f"{HOST}:1", 1, s, 0.0) for n, s in self.states.items()]

    def listener(self) -> asyncio.Event:
        event = asyncio.Event()
        self.woken.append(event)
        return event

    def set(self, node: str, state: MemberState) -> None:
        self.states[node] = state
        for e in self.woken:
            e.set()


class RecordedEvents(EventLog):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, KEYS, "n1")
        self.kinds: list[str] = []

    def emit(self, kind: str, message: str, service: str = "", task: str = "", cause: str = "") -> None:
        self.kinds.append(kind)


class World:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.gossip = FakeGossip()
        self.events = RecordedEvents(self.store)
        self.lease = 0
        self.mesh = Mesh(
            self.store,
            KEYS,
            "n1",
            HOST,
            self.events,
            self.gossip,
            lambda: self.lease,
            MeshSettings(connect_timeout=0.5, drain_timeout=1.0, rebind_interval=0.2),
        )
        self.servers: list[asyncio.Server] = []

    async def backend(self, service: ServiceRecord, slot: int, node: str, container_port: int = 80) -> str:
        """A replica of `service` on `node` answering its name; published and assigned."""
        task = make_task(service, slot, node)
        name = f"{service.name}.{slot}@{node}"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(name.encode() + b"\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        await self.store.put(KEYS.task(service.name, slot), task.to_json())
        record = EndpointRecord(
            task.task_id, service.name, node, HOST, port, container_port, {str(container_port): port}
        )
        await self.store.put(KEYS.endpoint(service.name, task.task_id), record.to_json())
        return task.task_id

    async def close(self) -> None:
        for s in self.servers:
            s.close()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    lease = await w.store.grant(30)
    w.lease = lease
    runner = asyncio.create_task(w.mesh.run())
    yield w
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await w.close()


def tcp_service(name: str, published: int, container: int = 80) -> ServiceRecord:
    return make_service(
        name, replicas=3, ports=[{"container": container, "published": published, "protocol": "tcp"}]
    )


async def ask(port: int) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        return (await asyncio.wait_for(reader.read(100), 2.0)).decode().strip()
    finally:
        writer.close()


async def answers(port: int, n: int) -> list[str]:
    return [await ask(port) for _ in range(n)]


async def test_listens_on_published_ports_and_spreads_over_replicas(world: World) -> None:
    port = free_port()
    web = tcp_service("web", port)
    await world.store.put(KEYS.service("web"), web.to_json())
    for slot, node in ((1, "n1"), (2, "n2"), (3, "n3")):
        await world.backend(web, slot, node)
    await wait_until(
        lambda: len(world.mesh.listeners.get(port, ()) and world.mesh.listeners[port].balancer) == 3, 3.0
    )
    got = await answers(port, 9)
    assert sorted(set(got)) == ["web.1@n1", "web.2@n2", "web.3@n3"]
    assert all(got.count(name) == 3 for name in set(got)), got


async def test_a_withdrawn_or_reassigned_replica_leaves_the_rotation(world: World) -> None:
    port = free_port()
    web = tcp_service("web", port)
    await world.store.put(KEYS.service("web"), web.to_json())
    t1 = await world.backend(web, 1, "n1")
    await world.backend(web, 2, "n2")
    listener = lambda: world.mesh.listeners.get(port)  # noqa: E731
    await wait_until(lambda: listener() is not None and len(listener().balancer) == 2, 3.0)

    await world.store.delete(KEYS.endpoint("web", t1))
    await wait_until(lambda: len(listener().balancer) == 1, 3.0, message="withdrawn endpoint removed")
    assert set(await answers(port, 4)) == {"web.2@n2"}

    moved = make_task(web, 2, "n3")  # the leader moved slot 2 elsewhere; n2's endpoint is stale
    await world.store.put(KEYS.task("web", 2), moved.to_json())
    await wait_until(lambda: len(listener().balancer) == 0, 3.0, message="reassigned task removed")


async def test_gossip_death_removes_a_node_at_once_and_alive_brings_it_back(world: World) -> None:
    port = free_port()
    web = tcp_service("web", port)
    await world.store.put(KEYS.service("web"), web.to_json())
    await world.backend(web, 1, "n1")
    await world.backend(web, 2, "n2")
    listener = lambda: world.mesh.listeners.get(port)  # noqa: E731
    await wait_until(lambda: listener() is not None and len(listener().balancer) == 2, 3.0)

    world.gossip.set("n2", MemberState.DEAD)
    await wait_until(lambda: [b.node for b in listener().balancer.backends] == ["n1"], 3.0)
    assert set(await answers(port, 4)) == {"web.1@n1"}

    world.gossip.set("n2", MemberState.ALIVE)
    await wait_until(lambda: len(listener().balancer) == 2, 3.0)

    await world.store.put(KEYS.down("n2"), b"{}")  # the leader's verdict, whatever gossip says
    await wait_until(lambda: len(listener().balancer) == 1, 3.0)


async def test_no_replica_closes_tcp_connections_at_once(world: World) -> None:
    port = free_port()
    await world.store.put(KEYS.service("web"), tcp_service("web", port).to_json())
    await wait_until(lambda: port in world.mesh.listeners, 3.0)
    assert await ask(port) == ""


async def test_a_taken_port_is_reported_retried_and_does_not_stop_other_services(world: World) -> None:
    taken, other = free_port(), free_port()
    blocker = socket.socket()
    blocker.bind((HOST, taken))
    blocker.listen()
    try:
        web, api = tcp_service("web", taken), tcp_service("api", other)
        await world.store.put(KEYS.service("web"), web.to_json())
        await world.store.put(KEYS.service("api"), api.to_json())
        await world.backend(api, 1, "n1")
        await wait_until(lambda: taken in world.mesh.bind_errors and other in world.mesh.listeners, 3.0)
        assert await ask(other) == "api.1@n1"
        kv = await world.store.get(KEYS.bind("web", "n1"))
        assert kv is not None and kv.lease == world.lease
        [error] = json.loads(kv.value)["errors"]
        assert error["port"] == taken and "address already in use" in error["error"].lower(), error
        assert world.events.kinds.count("proxy.bind_failed") == 1, "reported once, not at every retry"
    finally:
        blocker.close()
    await wait_until(lambda: taken in world.mesh.listeners, 3.0, message="bound once the port is free")
    assert "proxy.bound" in world.events.kinds

    async def cleared() -> bool:
        return await world.store.get(KEYS.bind("web", "n1")) is None

    await wait_until(cleared, 3.0, message="binds/ entry removed")


async def test_removing_a_service_frees_its_port(world: World) -> None:
    port = free_port()
    await world.store.put(KEYS.service("web"), tcp_service("web", port).to_json())
    await wait_until(lambda: port in world.mesh.listeners, 3.0)
    await world.store.delete(KEYS.service("web"))
    await wait_until(lambda: port not in world.mesh.listeners, 3.0)
    with socket.socket() as s:
        s.bind((HOST, port))  # free again


async def test_metrics_count_per_service_port(world: World) -> None:
    port = free_port()
    web = tcp_service("web", port)
    await world.store.put(KEYS.service("web"), web.to_json())
    await world.backend(web, 1, "n1")
    await wait_until(
        lambda: port in world.mesh.listeners and len(world.mesh.listeners[port].balancer) == 1, 3.0
    )
    await answers(port, 5)
    registry = CollectorRegistry()
    registry.register(MeshCollector(world.mesh))
    text = generate_latest(registry).decode()
    labels = f'port="{port}",protocol="tcp",service="web"'
    assert f"shoal_proxy_requests_total{{{labels}}} 5.0" in text, text
    assert f"shoal_proxy_backends{{{labels}}} 1.0" in text
    assert f"shoal_proxy_latency_seconds_count{{{labels}}} 5.0" in text
    assert f'shoal_proxy_latency_seconds_bucket{{le="+Inf",{labels}}} 5.0' in text


def route_of(world: World, port: int) -> int:
    """The container port the listener on `port` routes to (0: none)."""
    listener = world.mesh.listeners.get(port)
    return listener.route.container_port if listener is not None else 0


async def test_a_changed_route_refuses_no_connection(world: World) -> None:
    """A published port whose route changes (its container port, here 40 times) gets a new
    engine, which listens before the old one stops (both in the port's SO_REUSEPORT group):
    a client connecting in a loop meanwhile is never refused. Before, the daemon's mesh
    closed the old listener first, and the port was shut in between. `tcp_migrate_req` is
    set as the daemon sets it at start (`migrate_queues`), not left to the order of the
    tests: at the kernel's default 0 the old listener's queued connections were reset."""
    from node.proxy import migrate

    assert migrate.ensure() == "", "the test runs as root on Linux 5.14 or later"
    port = free_port()
    web = tcp_service("web", port)
    await world.store.put(KEYS.service("web"), web.to_json())
    await world.backend(web, 1, "n1")
    await wait_until(lambda: port in world.mesh.listeners, 3.0)
    async with Knocker(HOST, port) as k:
        await wait_until(lambda: len(k.connected) > 20, timeout=10)
        for i in range(40):
            changed = tcp_service("web", port, container=81 + i % 2)
            await world.store.put(KEYS.service("web"), changed.to_json())
            # a deadline, not a speed: on a loaded machine (load 20) the knocking thread
            # holds the GIL enough that a change took over 5 s to be served
            await wait_until(lambda c=81 + i % 2: route_of(world, port) == c, 30.0, message=f"change {i}")  # type: ignore[misc]
    assert k.refused == [], k.summary()
    assert len(k.connected) > 20


async def test_a_changed_route_keeps_the_ports_socket_and_a_removed_one_closes_it(world: World) -> None:
    """A route change gives the port a new engine on the same kernel socket (its inode
    does not change): no listener of the port closes while it is published, the moment
    Linux resets a handshake that completes on it (`node.proxy.ports`). Before, each
    change bound a new SO_REUSEPORT socket and closed the old. Once the service is
    removed the port is closed."""
    from tests.helpers import listening_inodes

    port = free_port()
    web = tcp_service("web", port)
    await world.store.put(KEYS.service("web"), web.to_json())
    await world.backend(web, 1, "n1")
    await wait_until(lambda: port in world.mesh.listeners, 3.0)
    inodes = listening_inodes(port)
    assert len(inodes) == 1
    for container in (81, 82, 81):
        await world.store.put(KEYS.service("web"), tcp_service("web", port, container=container).to_json())
        await wait_until(lambda c=container: route_of(world, port) == c, 10.0)  # type: ignore[misc]
        assert listening_inodes(port) == inodes
    with socket.create_connection((HOST, port), timeout=5):
        pass
    await world.store.delete(KEYS.service("web"))
    await wait_until(lambda: port not in world.mesh.listeners, 5.0)
    assert listening_inodes(port) == set() and len(world.mesh.ports) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=5)


async def test_a_bind_error_is_reported_again_on_a_new_lease(world: World) -> None:
    """The node's lease is replaced (etcd was away): the `binds/` entry died with the old
    one and is written again on the new one, though the error itself did not change."""
    taken = free_port()
    blocker = socket.socket()
    blocker.bind((HOST, taken))
    blocker.listen()
    try:
        await world.store.put(KEYS.service("web"), tcp_service("web", taken).to_json())

        async def reported_on(lease: int) -> bool:
            kv = await world.store.get(KEYS.bind("web", "n1"))
            return kv is not None and kv.lease == lease

        await wait_until(lambda: reported_on(world.lease), 3.0, message="reported on the first lease")
        old = world.lease
        world.lease = await world.store.grant(30)
        await world.store.revoke(old)
        await wait_until(lambda: reported_on(world.lease), 3.0, message="reported again on the new lease")
    finally:
        blocker.close()


BAD_ENDPOINTS = [
    b"null",
    b"[]",
    b'{"task_id": "x"}',
    b'{"task_id": "x", "service": "web", "node": "n2", "address": "127.0.0.1", "port": 1, '
    b'"container_port": 80, "ports": {"80": "x"}}',
    b'{"task_id": "x", "service": "web", "node": "n2", "address": "127.0.0.1", "port": 70000, '
    b'"container_port": 80, "ports": {"80": 70000}}',
    b'{"task_id": "x", "service": "web", "node": "n2", "address": 7, "port": 1, "container_port": 80}',
]


@pytest.mark.parametrize("raw", BAD_ENDPOINTS)
def test_an_unreadable_endpoint_record_is_left_out_and_the_others_kept(raw: bytes) -> None:
    good = EndpointRecord("t1", "web", "n1", HOST, 1234, 80, {"80": 1234})
    assert readable_endpoints([raw, good.to_json()]) == [good]


async def test_a_bad_endpoint_record_does_not_stop_the_mesh(world: World) -> None:
    """Written around the agents (by hand, a tool, a bug): the mesh's sync raised, the
    daemon exited, and every restart on every node met the record again. Port 70000 was
    wrapped by uvloop to 4464."""
    port = free_port()
    web = tcp_service("web", port)
    await world.store.put(KEYS.service("web"), web.to_json())
    await world.backend(web, 1, "n1")
    for i, raw in enumerate(BAD_ENDPOINTS):
        await world.store.put(KEYS.endpoint("web", f"bad{i}"), raw)
    await wait_until(
        lambda: len(world.mesh.listeners.get(port, ()) and world.mesh.listeners[port].balancer) == 1, 3.0
    )
    assert await answers(port, 2) == ["web.1@n1", "web.1@n1"]
