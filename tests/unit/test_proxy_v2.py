"""PROXY protocol v2 ahead of tcp connections (spec `proxy_protocol`): the header by
table, the spec's check, and the mesh sending it (and only where asked) to a real socket."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest

from node.model.domain import EndpointRecord
from node.model.spec import SpecError, parse_spec
from node.proxy.proxy_v2 import LOCAL, SIGNATURE, header
from node.proxy.routes import listeners
from tests.factories import make_service, make_task
from tests.helpers import wait_until
from tests.unit.test_proxy_mesh import HOST, KEYS, World, free_port, world  # noqa: F401  (a fixture)


def parse(data: bytes) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """A receiver's reading of a v2 header (None: LOCAL)."""
    assert data[:12] == SIGNATURE and data[12] >> 4 == 2
    length = struct.unpack("!H", data[14:16])[0]
    if data[12] & 0xF == 0:
        return None
    size = 4 if data[13] == 0x11 else 16
    body = data[16 : 16 + length]
    src, dst = ipaddress.ip_address(body[:size]), ipaddress.ip_address(body[size : 2 * size])
    sp, dp = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    return (str(src), sp), (str(dst), dp)


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        (("10.1.2.3", 40000), ("192.168.0.9", 443), (("10.1.2.3", 40000), ("192.168.0.9", 443))),
        (("::1", 5, 0, 0), ("fe80::1", 80, 0, 0), (("::1", 5), ("fe80::1", 80))),
        (("10.1.2.3", 1), ("::1", 2, 0, 0), None),  # two families: LOCAL
        (None, ("10.0.0.1", 2), None),  # unknown: LOCAL
        (("/run/x.sock",), ("10.0.0.1", 2), None),
    ],
)
def test_the_header(src: object, dst: object, expected: object) -> None:
    data = header(src, dst)
    assert parse(data) == expected
    assert len(data) == {None: 16}.get(expected, 16 + (12 if "." in str(expected) else 36))  # type: ignore[arg-type]


def test_known_bytes_of_an_ipv4_header() -> None:
    assert header(("127.0.0.1", 1), ("127.0.0.2", 2)) == (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x02\x00\x01\x00\x02"
    )
    assert LOCAL == b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


@pytest.mark.parametrize(
    ("ports", "proxy", "message"),
    [
        ("[{container: 5432}]", "[80]", "proxy_protocol[0]: port 80 is not a tcp container port"),
        (
            "[{container: 80, protocol: http}]",
            "[80]",
            "proxy_protocol[0]: port 80 is not a tcp container port",
        ),
        ("[{container: 80}]", "[]", "proxy_protocol"),
    ],
)
def test_the_spec_names_tcp_ports_of_its_own(ports: str, proxy: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(f"name: db\nimage: x:1\nports: {ports}\nproxy_protocol: {proxy}\n")
    spec = parse_spec(
        "name: db\nimage: x:1\nports: [{container: 5432, published: 15432}]\nproxy_protocol: [5432]\n"
    )
    assert spec.proxy_protocol == [5432]


def test_routes_carry_the_flag() -> None:
    on = make_service("db", ports=[{"container": 5432, "published": 15432}], proxy_protocol=[5432])
    off = make_service("web", ports=[{"container": 80, "published": 18080}])
    routes = listeners([on, off])
    assert (routes[15432].proxy_v2, routes[18080].proxy_v2) == (True, False)


async def test_the_mesh_sends_the_header_first_only_where_asked(world: World) -> None:  # noqa: F811
    got: dict[str, bytes] = {}

    async def replica(name: str, container: int, published: int, proxy: list[int] | None) -> None:
        extra = {"proxy_protocol": proxy} if proxy else {}
        service = make_service(name, ports=[{"container": container, "published": published}], **extra)
        await world.store.put(KEYS.service(name), service.to_json())

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got[name] = await reader.read()  # until the client's EOF, passed on
            writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        world.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        task = make_task(service, 1, "n1")
        await world.store.put(KEYS.task(name, 1), task.to_json())
        record = EndpointRecord(task.task_id, name, "n1", HOST, port, container, {str(container): port})
        await world.store.put(KEYS.endpoint(name, task.task_id), record.to_json())

    on_port, off_port = free_port(), free_port()
    await replica("db", 5432, on_port, [5432])
    await replica("web", 80, off_port, None)
    await wait_until(lambda: {on_port, off_port} <= set(world.mesh.listeners), timeout=5)
    await wait_until(
        lambda: all(len(world.mesh.listeners[p].balancer) for p in (on_port, off_port)), timeout=5
    )
    for name, port in (("db", on_port), ("web", off_port)):
        _, writer = await asyncio.open_connection(HOST, port)
        client = writer.get_extra_info("sockname")
        writer.write(b"hello")
        writer.write_eof()
        await wait_until(lambda n=name: n in got, timeout=5)  # type: ignore[misc]
        writer.close()
        if name == "db":
            assert parse(got["db"]) == ((client[0], client[1]), (HOST, on_port))
            assert got["db"][28:] == b"hello"
        else:
            assert got["web"] == b"hello"
