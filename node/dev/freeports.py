"""Free TCP ports for local clusters, tests and benches, drawn outside the ephemeral range.

A port the OS hands out for `bind(0)` comes from `ip_local_port_range`, the range it
also takes the source ports of outgoing connections from. A server given such a port
and stopped for a while (an etcd restarted by an outage test) can find its port taken
by somebody's outgoing connection when it comes back ("address already in use").
So these helpers pick ports *below* that range (`LOW` up to its first port), at random
(concurrent test runs rarely pick the same one), check each by binding it, and never
hand the same port out twice in one process (a port given but not bound yet still
looks free). Test workers run side by side (pytest-xdist sets `PYTEST_XDIST_WORKER`
and `PYTEST_XDIST_WORKER_COUNT`, which their subprocesses inherit): each draws from a
slice of its own, so a port one worker has handed out but not bound yet is never
drawn by another.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from pathlib import Path

LOW = 10_000  # the lowest port drawn: above the usual fixed service ports (etcd 2379, ...)
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default, when the file cannot be read
MIN_SPAN = 1000  # fewer candidate ports than this below the ephemeral range: refuse
ATTEMPTS = 500

_given: set[int] = set()
_random = random.Random()  # seeded from the OS: another process draws other ports


class NoFreePort(Exception):
    """No port could be found; the message says where it looked."""


def ephemeral_range(path: Path = EPHEMERAL) -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (first, last)."""
    try:
        first, last = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return first, last


def outside_ephemeral(path: Path = EPHEMERAL) -> range:
    """The ports outside the ephemeral range: `LOW` up to it (or, when that range starts
    too low, the ports above it). The same in every process, test worker or not."""
    first, last = ephemeral_range(path)
    if first - LOW >= MIN_SPAN:
        pool = range(LOW, first)
    elif 65535 - last >= MIN_SPAN:
        pool = range(last + 1, 65536)
    else:
        raise NoFreePort(
            f"the ephemeral range {first}-{last} ({path}) leaves fewer than {MIN_SPAN} ports outside it; "
            "narrow it (sysctl net.ipv4.ip_local_port_range)"
        )
    return pool


def candidates() -> range:
    """Ports these helpers draw from: those outside the ephemeral range, or this test
    worker's slice of them."""
    return worker_slice(outside_ephemeral(), os.environ)


def worker_slice(pool: range, env: Mapping[str, str]) -> range:
    """The part of `pool` of pytest-xdist worker `gw<i>` of `PYTEST_XDIST_WORKER_COUNT`;
    all of it outside a worker (or with an unreadable setting)."""
    worker, count = env.get("PYTEST_XDIST_WORKER", ""), env.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return pool
    i, n = int(worker[2:]), int(count)
    if not 0 <= i < n:
        return pool
    size = len(pool) // n
    return range(pool.start + i * size, pool.start + (i + 1) * size)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(hosts: list[str], count: int = 1) -> int:
    """A port p such that p .. p+count-1 are free on every one of `hosts` now, outside the
    ephemeral range, and not handed out before by this process."""
    pool = candidates()
    for _ in range(ATTEMPTS):
        p = _random.randrange(pool.start, pool.stop - count + 1)
        block = range(p, p + count)
        if any(q in _given for q in block):
            continue
        if all(_bindable(host, q) for host in hosts for q in block):
            _given.update(block)
            return p
    raise NoFreePort(
        f"no {count} free port(s) on {', '.join(hosts)} in {pool.start}-{pool.stop - 1} "
        f"after {ATTEMPTS} tries"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, outside the ephemeral range."""
    return free_ports([host])


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port p such that p and p+1 are both free on `host` (etcd's client and peer ports)."""
    return free_ports([host], 2)


def free_port_on_all(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (node i of a local cluster binds 127.0.0.i)."""
    return free_ports(hosts)
