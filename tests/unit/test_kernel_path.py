"""The kernel fast path's shell (decision 75): when `nft` runs, what a failure does, and
the mesh feeding it. `nft` itself is a recorded fake here (a real one in
tests/integration/test_kernel_path.py), except where a stand-in program is run."""

from __future__ import annotations

import asyncio
import stat
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from node.model.domain import EndpointRecord
from node.proxy import kernel_path as kp
from node.proxy.kernel_path import KernelPath
from node.proxy.kernel_rules import KernelPort
from node.proxy.nft import NftError
from tests.factories import make_service, make_task
from tests.helpers import wait_until
from tests.unit.test_proxy_mesh import KEYS, World

PORT = KernelPort("raw", 18080, (("172.17.0.2", 8080), ("172.17.0.3", 8080)))
ROUTES = (
    "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
    "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\n"
)


class FakeNft:
    """Records every text; fails the next `failures` runs with `error`."""

    def __init__(self, failures: int = 0, error: NftError | None = None) -> None:
        self.texts: list[str] = []
        self.failures, self.error = failures, error or NftError("nft -f - exited with 1: Error: no")

    async def __call__(self, program: str, text: str) -> None:
        self.texts.append(text)
        if self.failures:
            self.failures -= 1
            raise self.error


class Events:
    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    def emit(self, kind: str, message: str, *args: str) -> None:
        self.got.append((kind, message))


def path(tmp_path: Path, nft: FakeNft, program: str = "sh", **kw: object) -> tuple[KernelPath, Events]:
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    (tmp_path / "conf" / "docker0").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "docker0" / "route_localnet").write_text("0\n")
    events = Events()
    kw.setdefault("net_class", tmp_path / "net")  # no bridge but those a test makes
    kernel = KernelPath(
        program, "shoal_t_n1", events, run=nft, routes_file=routes, sysctl=tmp_path / "conf", **kw
    )  # type: ignore[arg-type]
    return kernel, events


async def test_the_table_is_written_once_per_change(tmp_path: Path) -> None:
    nft = FakeNft()
    kernel, events = path(tmp_path, nft)
    assert await kernel.sync("127.0.0.1", [PORT]) == [PORT]
    assert await kernel.sync("127.0.0.1", [PORT]) == [PORT]  # steady state runs nothing
    assert len(nft.texts) == 1 and "numgen inc mod 2" in nft.texts[0]
    assert (tmp_path / "conf" / "docker0" / "route_localnet").read_text().strip() == "1"
    assert 'iifname { "docker0" }' in nft.texts[0]
    assert await kernel.sync("127.0.0.1", []) == []  # the last replica gone: the table goes
    assert nft.texts[-1] == "table ip shoal_t_n1\ndelete table ip shoal_t_n1\n"
    assert events.got == []


async def test_route_localnet_is_put_back_when_its_guard_goes(tmp_path: Path) -> None:
    """It stayed 1 after the table (and the guard rule dropping new connections to
    127.0.0.0/8 from the bridge) was gone: a neighbour on the bridge could then reach the
    host's loopback services (CVE-2020-8558's shape)."""
    setting = tmp_path / "conf" / "docker0" / "route_localnet"
    nft = FakeNft()
    kernel, _ = path(tmp_path, nft)
    await kernel.sync("127.0.0.1", [PORT])
    assert setting.read_text().strip() == "1" and "drop" in nft.texts[-1]
    await kernel.sync("127.0.0.1", [])  # the last port gone: the table and its guard go
    assert setting.read_text().strip() == "0"
    # a fallback (nft refuses) removes the table: put back too
    await kernel.sync("127.0.0.1", [PORT])
    assert setting.read_text().strip() == "1"
    nft.failures = kp.ATTEMPTS
    other = KernelPort("raw", 18081, PORT.targets)
    assert await kernel.sync("127.0.0.1", [PORT, other]) == []
    assert "delete table" in nft.texts[-1] and setting.read_text().strip() == "0"
    # a node whose setting was 1 before shoal keeps it
    setting.write_text("1\n")
    await kernel.sync("127.0.0.1", [PORT])
    await kernel.sync("127.0.0.1", [])
    assert setting.read_text().strip() == "1"


async def test_a_node_on_a_real_address_sets_no_route_localnet(tmp_path: Path) -> None:
    nft = FakeNft()
    kernel, _ = path(tmp_path, nft)
    await kernel.sync("10.0.0.5", [PORT])
    assert (tmp_path / "conf" / "docker0" / "route_localnet").read_text().strip() == "0"
    assert "masquerade" not in nft.texts[0]


async def test_the_replicas_bridges_and_the_vip_ranges_are_the_listeners(tmp_path: Path) -> None:
    """Prerouting skips clients on the bridge its container targets are reached through
    (from /proc/net/route: docker0 here); a node on 0.0.0.0 matches no VIP range."""
    nft = FakeNft()
    kernel, _ = path(tmp_path, nft, vips=[IPv4Network("10.213.0.0/16")])
    bridged = KernelPort("raw", 18080, PORT.targets, frozenset(a for a, _ in PORT.targets))
    await kernel.sync("0.0.0.0", [bridged])
    pre, out = nft.texts[-1].split("chain output")
    rule = "fib daddr type local ip daddr != { 10.213.0.0/16 } tcp dport 18080"
    assert f'iifname != {{ "docker0" }} {rule}' in pre and f"    {rule}" in out
    await kernel.sync("10.0.0.5", [PORT])  # published ports of the host: no bridge to skip
    assert "iifname" not in nft.texts[-1] and "10.213" not in nft.texts[-1]


async def test_clients_on_every_container_bridge_are_the_listeners(tmp_path: Path) -> None:
    """A container on another Docker network (`br-…`) DNATed to a replica on docker0 was
    dropped by Docker's isolation between networks (seen on the real engine: the connect
    timed out, where the listener answers it). Every Linux bridge with an on-link route
    is skipped, but not one that carries the default route (a host's uplink `br0`)."""
    nft = FakeNft()
    kernel, _ = path(tmp_path, nft)
    (tmp_path / "route").write_text(
        ROUTES
        + "br-45b499639e75\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\n"
        + "br0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\n"  # default route via br0
        + "br0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
        + "eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
    )
    for bridge in ("docker0", "br-45b499639e75", "br0"):
        (tmp_path / "net" / bridge / "bridge").mkdir(parents=True)
    (tmp_path / "net" / "eth1").mkdir(parents=True)  # not a bridge
    await kernel.sync("10.0.0.5", [PORT])  # published ports of the host: none is a replica's bridge
    assert 'iifname != { "br-45b499639e75", "docker0" }' in nft.texts[-1].split("chain output")[0]
    assert "br0" not in nft.texts[-1] and "eth1" not in nft.texts[-1]


async def test_a_refusal_is_retried_then_served_by_the_userland_once(tmp_path: Path) -> None:
    nft = FakeNft(failures=kp.ATTEMPTS)  # every attempt; the removal after them works
    kernel, events = path(tmp_path, nft)
    assert await kernel.sync("127.0.0.1", [PORT]) == []
    assert len(nft.texts) == kp.ATTEMPTS + 1 and "delete table" in nft.texts[-1]
    assert [k for k, _ in events.got] == ["proxy.kernel_fallback"]
    assert "exited with 1" in events.got[0][1]
    assert not kernel.stale
    assert await kernel.sync("127.0.0.1", [PORT]) == []  # the same table is not tried again
    assert len(nft.texts) == kp.ATTEMPTS + 1 and len(events.got) == 1
    bigger = KernelPort("raw", 18080, (*PORT.targets, ("172.17.0.4", 8080)))
    assert await kernel.sync("127.0.0.1", [bigger]) == [bigger]  # a change tries again: it works
    assert [k for k, _ in events.got] == ["proxy.kernel_fallback", "proxy.kernel_path"]


async def test_a_table_that_could_not_be_removed_either_is_tried_again(tmp_path: Path) -> None:
    """The new text failed and so did the removal: the kernel may still DNAT to a replica
    since withdrawn. The same text was never tried again until the ports changed; it is
    now, and the mesh syncs on a timer while the kernel is `stale`."""
    nft = FakeNft()
    kernel, _ = path(tmp_path, nft)
    old = KernelPort("raw", 18080, (*PORT.targets, ("172.17.0.4", 8080)))
    assert await kernel.sync("127.0.0.1", [old]) == [old]
    nft.failures = kp.ATTEMPTS + 1  # the withdrawal's text, and the removal after it
    assert await kernel.sync("127.0.0.1", [PORT]) == []
    assert kernel.stale
    runs = len(nft.texts)
    assert await kernel.sync("127.0.0.1", [PORT]) == [PORT]  # the same text, tried again: it works
    assert len(nft.texts) == runs + 1 and not kernel.stale


async def test_a_passing_refusal_is_retried_with_tenacity(tmp_path: Path) -> None:
    nft = FakeNft(failures=kp.ATTEMPTS - 1)
    kernel, events = path(tmp_path, nft)
    assert await kernel.sync("127.0.0.1", [PORT]) == [PORT]
    assert len(nft.texts) == kp.ATTEMPTS and len(set(nft.texts)) == 1 and events.got == []


@pytest.mark.parametrize(
    ("program", "why"), [("/nonexistent/nft", "/nonexistent/nft is not found"), ("", "nft is off")]
)
async def test_no_nft_falls_back_with_one_event(tmp_path: Path, program: str, why: str) -> None:
    nft = FakeNft()
    kernel, events = path(tmp_path, nft, program)
    assert await kernel.sync("127.0.0.1", []) == []
    assert events.got == []  # nothing asked for the kernel: nothing to say
    for _ in range(2):
        assert await kernel.sync("127.0.0.1", [PORT]) == []
    assert nft.texts == [] and [k for k, _ in events.got] == ["proxy.kernel_fallback"]
    assert why in events.got[0][1]


async def test_an_ipv6_node_falls_back(tmp_path: Path) -> None:
    nft = FakeNft()
    kernel, events = path(tmp_path, nft)
    assert await kernel.sync("::1", [PORT]) == [] and nft.texts == []
    assert "not IPv4" in events.got[0][1]


async def test_off_at_start_removes_a_former_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nft = FakeNft()
    monkeypatch.setattr(kp.shutil, "which", lambda name: "/usr/sbin/nft" if name == "nft" else None)
    kernel, _ = path(tmp_path, nft, "")
    await kernel.start()
    assert nft.texts == ["table ip shoal_t_n1\ndelete table ip shoal_t_n1\n"]
    on, _ = path(tmp_path, FakeNft())
    await on.start()  # on: the first sync replaces it instead
    assert on.applied is None


async def test_leave_on_stop_removes_the_table(tmp_path: Path) -> None:
    nft = FakeNft()
    kernel, _ = path(tmp_path, nft, remove_on_stop=True)
    await kernel.sync("127.0.0.1", [PORT])
    await kernel.remove()
    assert nft.texts[-1].endswith("delete table ip shoal_t_n1\n") and kernel.served == []


def script(tmp_path: Path, body: str) -> str:
    program = tmp_path / "nft"
    program.write_text("#!/bin/sh\n" + body)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return str(program)


# -- the mesh feeds it ---------------------------------------------------------------------


async def test_the_mesh_dnats_to_its_own_replicas_only(tmp_path: Path) -> None:
    w = World()
    nft = FakeNft()
    w.mesh.kernel, _ = path(tmp_path, nft)
    service = make_service(
        "raw", replicas=3, ports=[{"container": 8080, "published": 18080, "fast_path": "kernel"}]
    )
    await w.store.put(KEYS.service("raw"), service.to_json())
    for slot, node, address in ((1, "n1", "127.0.0.1"), (2, "n1", "127.0.0.1"), (3, "n2", "127.0.0.2")):
        task = make_task(service, slot, node)
        await w.store.put(KEYS.task("raw", slot), task.to_json())
        record = EndpointRecord(
            task.task_id, "raw", node, address, 30000 + slot, 8080, {"8080": 30000 + slot}
        )
        await w.store.put(KEYS.endpoint("raw", task.task_id), record.to_json())
    runner = asyncio.create_task(w.mesh.run())
    try:
        served = await wait_until(lambda: w.mesh.kernel_served, 5.0, message="the kernel serves the port")
        assert [p.published for p in served] == [18080]
        assert sorted(served[0].targets) == [("127.0.0.1", 30001), ("127.0.0.1", 30002)]  # not n2's
        assert 18080 in w.mesh.listeners  # the userland listener stays bound: the fallback
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert "delete table" not in nft.texts[-1]  # a stop leaves the table serving (decision 75)


async def test_replicas_published_on_every_address_stay_with_the_listener(tmp_path: Path) -> None:
    """A node on 0.0.0.0 publishes there (no container address to use): the rule said
    `dnat to 0.0.0.0:30001`, which reaches nothing."""
    w = World()
    nft = FakeNft()
    w.mesh.kernel, _ = path(tmp_path, nft)
    service = make_service("raw", ports=[{"container": 8080, "published": 18080, "fast_path": "kernel"}])
    await w.store.put(KEYS.service("raw"), service.to_json())
    task = make_task(service, 1, "n1")
    await w.store.put(KEYS.task("raw", 1), task.to_json())
    record = EndpointRecord(task.task_id, "raw", "n1", "0.0.0.0", 30001, 8080, {"8080": 30001})
    await w.store.put(KEYS.endpoint("raw", task.task_id), record.to_json())
    runner = asyncio.create_task(w.mesh.run())
    try:
        await wait_until(lambda: 18080 in w.mesh.listeners, 5.0, message="the listener serves the port")
        await wait_until(lambda: w.mesh.syncs > 0 and w.mesh.ready.is_set(), 5.0, message="a sync")
        assert w.mesh.kernel_served == [] and not any("0.0.0.0:" in t for t in nft.texts)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_a_stale_table_is_tried_again_on_the_mesh_timer(tmp_path: Path) -> None:
    """A withdrawal's table failed and so did its removal: the kernel may still DNAT to the
    replica that left. No store change comes to wake the mesh; it syncs again on its
    timer (`rebind_interval`) until the table is written."""
    w = World()
    nft = FakeNft()
    w.mesh.kernel, _ = path(tmp_path, nft)
    service = make_service(
        "raw", replicas=2, ports=[{"container": 8080, "published": 18080, "fast_path": "kernel"}]
    )
    await w.store.put(KEYS.service("raw"), service.to_json())
    endpoints = []
    for slot in (1, 2):
        task = make_task(service, slot, "n1")
        await w.store.put(KEYS.task("raw", slot), task.to_json())
        record = EndpointRecord(
            task.task_id, "raw", "n1", "127.0.0.1", 30000 + slot, 8080, {"8080": 30000 + slot}
        )
        endpoints.append(KEYS.endpoint("raw", task.task_id))
        await w.store.put(endpoints[-1], record.to_json())
    runner = asyncio.create_task(w.mesh.run())
    try:
        await wait_until(
            lambda: len(w.mesh.kernel_served[0].targets) == 2 if w.mesh.kernel_served else False,
            5.0,
            message="two targets",
        )
        nft.failures = kp.ATTEMPTS + 1  # the withdrawal's text, and the removal after it
        await w.store.delete(endpoints[1])
        await wait_until(lambda: nft.failures == 0, 5.0, message="the withdrawal and its removal failed")
        await wait_until(
            lambda: w.mesh.kernel_served and len(w.mesh.kernel_served[0].targets) == 1,
            5.0,
            message="tried again",
        )
        assert sorted(w.mesh.kernel_served[0].targets) == [("127.0.0.1", 30001)]
        assert w.mesh.kernel is not None and not w.mesh.kernel.stale
        assert nft.texts[-1] == nft.texts[-2 - kp.ATTEMPTS]  # the same text, written again
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


# -- what it reports: counters (/metrics) and its state (`shoal node ls`) ---------------------


class FakeQuery:
    """`nft -j list counters …`: answers `listing`, or raises `error`; counts its calls."""

    def __init__(self, packets: int = 0) -> None:
        self.packets, self.calls, self.error = packets, 0, None

    def __call__(self, program: str, args: object) -> object:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return {"nftables": [{"counter": {"name": "conn_18080", "packets": self.packets, "bytes": 60}}]}


async def test_the_counters_are_read_at_most_once_per_age(tmp_path: Path) -> None:
    query, now = FakeQuery(3), [100.0]
    kernel, _ = path(tmp_path, FakeNft(), query=query, clock=lambda: now[0])
    assert kernel.counts() == {} and query.calls == 0  # no table: no nft run
    await kernel.sync("10.0.0.5", [PORT])
    assert kernel.counts() == {18080: 3} and query.calls == 1
    query.packets = 9
    assert kernel.counts() == {18080: 3} and query.calls == 1  # a scrape within the age: cached
    now[0] += kp.COUNTS_AGE
    assert kernel.counts() == {18080: 9} and query.calls == 2
    query.error = NftError("nft -j list exited with 1")
    now[0] += kp.COUNTS_AGE
    assert kernel.counts() == {}  # unknown: no series (not a reset to 0)


async def test_the_metrics_export_the_kernel_connections(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from node.proxy.metrics import MeshCollector

    w = World()
    w.mesh.kernel, _ = path(tmp_path, FakeNft(), query=FakeQuery(42))
    w.mesh.kernel_served = await w.mesh.kernel.sync("10.0.0.5", [PORT])
    registry = CollectorRegistry()
    registry.register(MeshCollector(w.mesh))
    text = generate_latest(registry).decode()
    labels = 'port="18080",protocol="tcp",service="raw"'
    assert f"shoal_proxy_kernel_connections_total{{{labels}}} 42.0" in text, text
    assert f"shoal_proxy_kernel_backends{{{labels}}} 2.0" in text


async def test_the_state_a_node_reports_and_its_changes(tmp_path: Path) -> None:
    nft = FakeNft()
    kernel, _ = path(tmp_path, nft)
    changes: list[tuple[str, str]] = []
    kernel.on_change(lambda: changes.append(kernel.state()))
    assert kernel.state() == ("on", "")
    await kernel.sync("10.0.0.5", [PORT])
    assert changes == []  # served: still "on", nothing to re-register
    nft.failures = kp.ATTEMPTS + 1
    await kernel.sync("10.0.0.5", [KernelPort("raw", 18080, (("172.17.0.9", 8080),))])
    assert [s for s, _ in changes] == ["fallback"] and "exited with 1" in changes[0][1]
    await kernel.sync("10.0.0.5", [])  # no port asks for the kernel any more: nothing falls back
    assert changes[-1] == ("on", "")
    off, _ = path(tmp_path, FakeNft(), "")
    assert off.state() == ("off", "proxy_nft is off")
    missing, _ = path(tmp_path, FakeNft(), "/nonexistent/nft")
    assert missing.state() == ("fallback", "/nonexistent/nft is not found")  # before any port asks


def test_query_nft_runs_the_program_and_reads_its_json(tmp_path: Path) -> None:
    from node.proxy.nft import NftMissing, query_nft

    args = tmp_path / "args"
    good = script(
        tmp_path, f'echo "$@" > {args}\necho \'{{"nftables": [{{"counter": {{"name": "conn_1"}}}}]}}\'\n'
    )
    assert query_nft(good, ["list", "counters", "table", "ip", "t"]) == {
        "nftables": [{"counter": {"name": "conn_1"}}]
    }
    assert args.read_text().split() == ["-j", "list", "counters", "table", "ip", "t"]
    refusing = script(tmp_path, "echo 'Error: No such file or directory' >&2\nexit 1\n")
    with pytest.raises(NftError, match="exited with 1: Error: No such file"):
        query_nft(refusing, ["list", "counters"])
    with pytest.raises(NftMissing):
        query_nft(str(tmp_path / "absent"), ["list", "counters"])
    slow = script(tmp_path, "sleep 5\n")
    with pytest.raises(NftError, match="no answer within"):
        query_nft(slow, ["list", "counters"], timeout=0.2)


def test_the_daemons_kernel_path_leaves_its_vip_range_alone(tmp_path: Path) -> None:
    from node.model.config import NodeConfig
    from node.proxy.workers import kernel_path_for

    config = NodeConfig(node_id="n1", cluster="c", data_dir=tmp_path, vip_range="10.77.0.0/16")
    assert kernel_path_for(config, None).vips == (IPv4Network("10.77.0.0/16"),)
