"""Test ports come from outside the kernel's ephemeral range (issue 11, item 14b).

A server restarted by a test (etcd after an outage) must find its port free again;
ports from `ip_local_port_range` can meanwhile be the source port of any outgoing
connection on the machine.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from node.dev import devcluster, freeports
from node.dev.freeports import free_port, free_port_pair
from tests import helpers


def in_ephemeral(port: int) -> bool:
    first, last = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return first <= port <= last


@pytest.mark.parametrize("where", [helpers, devcluster], ids=["tests.helpers", "node.dev.devcluster"])
def test_every_helper_draws_outside_the_ephemeral_range(where: object) -> None:
    drawn = [where.free_port() for _ in range(50)]  # type: ignore[attr-defined]
    drawn += [where.free_port_pair() for _ in range(20)]  # type: ignore[attr-defined]
    drawn += [where.free_port_on_all(["127.0.0.1", "127.0.0.2", "127.0.0.3"]) for _ in range(20)]  # type: ignore[attr-defined]
    assert [p for p in drawn if in_ephemeral(p)] == []


def test_a_port_is_handed_out_once_per_process_and_is_bindable() -> None:
    drawn = [free_port() for _ in range(200)]
    assert len(set(drawn)) == len(drawn)
    p = free_port_pair()
    for q in (p, p + 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", q))
    assert p + 1 not in {free_port() for _ in range(200)}  # the pair's second port is taken too


def test_a_port_in_use_is_never_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        busy = held.getsockname()[1]
        monkeypatch.setattr(freeports, "candidates", lambda: range(busy, busy + 2))
        monkeypatch.setattr(freeports, "_given", set())
        real = freeports._bindable  # the held port is checked for real; the one above it
        # may be taken by anything else on a busy machine, so it is taken as free
        monkeypatch.setattr(freeports, "_bindable", lambda host, q: real(host, q) if q == busy else True)
        assert free_port() == busy + 1


def test_the_range_is_read_from_the_kernel_and_falls_back_sensibly(tmp_path: Path) -> None:
    conf = tmp_path / "ip_local_port_range"
    conf.write_text("32768\t60999\n")
    assert freeports.ephemeral_range(conf) == (32768, 60999)
    assert freeports.outside_ephemeral(conf) == range(freeports.LOW, 32768)
    conf.write_text("1024 50000\n")  # starts too low: draw above it
    assert freeports.outside_ephemeral(conf) == range(50001, 65536)
    conf.write_text("1024 65000\n")
    with pytest.raises(freeports.NoFreePort, match=r"net\.ipv4\.ip_local_port_range"):
        freeports.outside_ephemeral(conf)
    assert freeports.ephemeral_range(tmp_path / "missing") == freeports.DEFAULT_EPHEMERAL


def test_test_workers_draw_ports_from_slices_of_their_own() -> None:
    pool = range(10_000, 32_768)
    env = {"PYTEST_XDIST_WORKER_COUNT": "2"}
    first = freeports.worker_slice(pool, env | {"PYTEST_XDIST_WORKER": "gw0"})
    second = freeports.worker_slice(pool, env | {"PYTEST_XDIST_WORKER": "gw1"})
    assert first.start == pool.start and second.start == first.stop and len(first) == len(second) > 10_000
    assert not set(first) & set(second)
    for odd in (
        {},
        {"PYTEST_XDIST_WORKER": "gw7", "PYTEST_XDIST_WORKER_COUNT": "2"},
        env | {"PYTEST_XDIST_WORKER": "x"},
    ):
        assert freeports.worker_slice(pool, odd) == pool  # not a worker, or a setting it cannot read


def test_the_helpers_draw_from_this_workers_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = freeports.outside_ephemeral()
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert freeports.candidates() == range(pool.start + len(pool) // 2, pool.start + len(pool) // 2 * 2)
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert freeports.candidates() == pool  # outside a test worker: all of it
