"""The kernel fast path (decision 75) for a client on another host: the nat prerouting hook.

The other host is a network namespace made here: a veth pair, the host end
`shkh-<id>` with the first address of a /30 of 10.217.0.0/16 that overlaps nothing on
this machine, the namespace's end `shkc-<id>` with the second. The one node of the
cluster takes the host end's address as its own (`DevCluster.addresses`), so its table
DNATs `<that address>:<port>`, and its replicas' ports are published there. A client in
the namespace opens new connections to it: its SYNs come in on the veth and meet the
prerouting chain (the other tests' clients are on this host: output chain), are DNATed
to a container and forwarded to docker0. Docker's FORWARD chain (policy drop) lets
them through because the container's port is published (its `DOCKER` chain accepts
`-d <container> --dport 8080`), and the replies go back through conntrack.

What needs no setting: `rp_filter` (the client's address is on-link through the veth,
so a strict reverse-path check passes: the test sets strict mode on its veth to show
it), `route_localnet` (no loopback address is involved), forwarding (Docker turns it
on for the host; checked on the test's veth). The veth is the only interface the test
sets anything on, and its settings go with it.

Checked: a bounded loop of new connections from the namespace, none failed, spread
round robin over the 2 replicas; the port's named counter and
`shoal_proxy_kernel_connections_total` moved by at least as many; the userland
listener counted none of them. Everything made is removed in the fixture's finally.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.dev.devcluster import DevCluster, kernel_tables, remove_kernel_tables
from node.dev.freeports import free_port_on_all
from tests.helpers import wait_until_sync
from tests.integration.netns import LOCK, free_subnet, run
from tests.integration.test_kernel_path import packets, spec, table, targets

pytestmark = pytest.mark.integration

SUPERNET = ipaddress.IPv4Network("10.217.0.0/16")  # apart from the default vip_range, 10.213/16
CONNECTIONS = 200  # new connections from the namespace, each with a 3 s timeout
LOOP_TIME = 60.0  # s the loop may take at most

# Runs in the namespace: CONNECTIONS sequential GETs, each on a new connection, until the
# count or the deadline; prints one JSON list of [ok, body or error].
_CLIENT = """
import http.client, json, sys, time
host, port, count, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline, out = time.monotonic() + limit, []
while len(out) < count and time.monotonic() < deadline:
    conn = http.client.HTTPConnection(host, port, timeout=3.0)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        answer = conn.getresponse()
        out.append([answer.status == 200, answer.read().decode(errors="replace").strip()])
    except OSError as exc:
        out.append([False, repr(exc)])
    finally:
        conn.close()
print(json.dumps(out))
"""


@dataclass
class OtherHost:
    """A namespace joined to the host by one veth pair on a /30."""

    id: str
    net: ipaddress.IPv4Network

    @property
    def netns(self) -> str:
        return f"shk-{self.id}"

    @property
    def host_end(self) -> str:
        return f"shkh-{self.id}"

    @property
    def client_end(self) -> str:
        return f"shkc-{self.id}"

    @property
    def host_ip(self) -> str:
        return str(self.net.network_address + 1)

    @property
    def client_ip(self) -> str:
        return str(self.net.network_address + 2)

    def inside(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.netns}", *argv]


def leftovers(host: OtherHost) -> list[str]:
    """What of `host` still exists (should be nothing after the fixture)."""
    left = [host.netns] if host.netns in run("ip", "netns", "list").stdout.split() else []
    for link in (host.host_end, host.client_end):
        if run("ip", "link", "show", link, check=False).returncode == 0:
            left.append(link)
    return left


@pytest.fixture
def other_host() -> Iterator[OtherHost]:
    host: OtherHost | None = None
    try:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with LOCK.open("a") as lock:  # two runs choosing a subnet at once would choose the same
            fcntl.flock(lock, fcntl.LOCK_EX)
            host = OtherHost(uuid.uuid4().hex[:6], free_subnet(supernet=SUPERNET, prefix=30))
            run("ip", "netns", "add", host.netns)
            run("ip", "link", "add", host.host_end, "type", "veth", "peer", "name", host.client_end,
                "netns", host.netns)  # fmt: skip
            run("ip", "addr", "add", f"{host.host_ip}/30", "dev", host.host_end)
        run("ip", "link", "set", host.host_end, "up")
        run("ip", "-n", host.netns, "link", "set", "lo", "up")
        run("ip", "-n", host.netns, "addr", "add", f"{host.client_ip}/30", "dev", host.client_end)
        run("ip", "-n", host.netns, "link", "set", host.client_end, "up")
        conf = Path("/proc/sys/net/ipv4/conf") / host.host_end  # the test's veth's own: gone with it
        if (conf / "forwarding").read_text().strip() != "1":
            (conf / "forwarding").write_text("1\n")
        (conf / "rp_filter").write_text("1\n")  # strict, as on many hosts: the path must pass it
        yield host
    finally:
        if host is not None:
            run("ip", "netns", "del", host.netns, check=False)  # takes its end, and so the pair
            run("ip", "link", "del", host.host_end, check=False)
            left = leftovers(host)
            assert left == [], f"left after the test: {left}"


def userland_requests(text: str, port: int) -> int:
    found = re.search(
        rf'shoal_proxy_requests_total{{port="{port}",protocol="tcp",service="raw"}} (\S+)', text
    )
    return int(float(found[1])) if found else 0


def kernel_connections(text: str, port: int) -> int | None:
    pattern = rf'shoal_proxy_kernel_connections_total{{port="{port}",protocol="tcp",service="raw"}} (\S+)'
    found = re.search(pattern, text)
    return int(float(found[1])) if found else None


def scrape(address: str, port: int) -> str:
    import http.client

    conn = http.client.HTTPConnection(address, port, timeout=5.0)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_a_client_on_another_host_is_dnated_at_prerouting(
    other_host: OtherHost, make_cluster: Callable[..., DevCluster]
) -> None:
    host = other_host
    cluster = make_cluster(nodes=1, addresses={1: host.host_ip})
    port = free_port_on_all([host.host_ip, "127.0.0.1"])
    try:
        with cluster.client() as c:
            c.apply(spec(port, 2), "raw.yaml")
        wait_until_sync(
            lambda: len(targets(table(cluster, "n1"), port)) == 2, 60.0, message="2 replicas in n1's table"
        )
        assert f"ip daddr {host.host_ip} tcp dport {port}" in table(cluster, "n1")

        def client(count: int, limit: float) -> list[tuple[bool, str]]:
            argv = host.inside(sys.executable, "-c", _CLIENT, host.host_ip, str(port), str(count), str(limit))
            done = subprocess.run(argv, capture_output=True, text=True, timeout=limit + 30)
            assert done.returncode == 0, done.stderr
            return [(bool(ok), str(body)) for ok, body in json.loads(done.stdout)]

        # the replicas answer from the namespace (their health checks passed: both in the rule)
        wait_until_sync(lambda: client(1, 5.0)[0][0], 30.0, message="the port answers the namespace")

        metrics = cluster.metrics_port
        before_rule = packets(table(cluster, "n1"), port)
        before_userland = userland_requests(scrape(host.host_ip, metrics), port)
        started = time.monotonic()
        results = client(CONNECTIONS, LOOP_TIME)
        took = time.monotonic() - started
        failed = [body for ok, body in results if not ok]
        spread = Counter(body for ok, body in results if ok)
        print(f"prerouting: {len(results)} new connections from {host.client_ip} in {took:.1f}s, "
              f"{len(failed)} failed, spread {sorted(spread.values())}")  # fmt: skip
        assert len(results) == CONNECTIONS, f"only {len(results)} in {LOOP_TIME}s"
        assert not failed, f"{len(failed)} of {len(results)} failed: {failed[:5]}"
        assert sorted(spread.values()) == [CONNECTIONS // 2] * 2, spread  # round robin, both replicas
        assert all(body.startswith("web v1") for body in spread)

        # the kernel took them, not the userland listener: its counter moved, the listener's did not
        moved = packets(table(cluster, "n1"), port) - before_rule
        assert moved >= CONNECTIONS, moved

        def exported() -> int | None:
            value = kernel_connections(scrape(host.host_ip, metrics), port)
            return value if value is not None and value >= before_rule + CONNECTIONS else None

        value = wait_until_sync(exported, 10.0, message="shoal_proxy_kernel_connections_total moved")
        print(f"prerouting: the rule's counter moved by {moved}; /metrics says {value}")
        assert userland_requests(scrape(host.host_ip, metrics), port) == before_userland
    finally:
        cluster.stop()
    left = kernel_tables(cluster.cluster)
    remove_kernel_tables(cluster.cluster)
    assert left == [], f"tables left after the cluster's stop: {left}"
