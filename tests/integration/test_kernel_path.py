"""The kernel fast path for `tcp` ports (issue 17 item 4, decision 75) on a real 2-node
cluster: real etcd, real Docker, real nftables, traffic on 127.0.0.x only.

Node 1 runs every replica (a constraint) and serves the port from its own table
(`shoal_ports_<cluster>_n1`); node 2 is started with `--proxy-nft` pointing at a missing
program, so it falls back to its userland listener, with one `proxy.kernel_fallback`
event. Then: connections spread evenly over 3 replicas by the kernel (its rule counter
counts them); a scale and a rolling update while a bounded loop of new connections
runs (every failed one is reported); a kill -9 of node 1's daemon, through which the
kernel keeps serving; and after the cluster's stop no table of it is left.
"""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import pytest

from node.dev.devcluster import DevCluster, kernel_tables, remove_kernel_tables
from node.proxy.kernel_rules import table_name
from tests.helpers import free_port_on_all, wait_until_sync
from tests.integration.test_proxy_workers import loading

pytestmark = pytest.mark.integration

HOSTS = ["127.0.0.1", "127.0.0.2"]
TARGET = re.compile(r"\d+ : (\d+\.\d+\.\d+\.\d+) \. (\d+)|dnat to (\d+\.\d+\.\d+\.\d+):(\d+)")


def spec(
    published: int, replicas: int, image: str = "shoal-demo/web:1", name: str = "raw", node: str = "n1"
) -> str:
    return f"""
name: {name}
image: {image}
replicas: {replicas}
placement: {{constraints: ["node.id == {node}"]}}
ports:
  - {{container: 8080, published: {published}, protocol: tcp, fast_path: kernel}}
health: {{tcp: {{port: 8080}}, interval: 0.5}}
update: {{parallelism: 2, monitor: 1}}
"""


def table(cluster: DevCluster, node: str) -> str:
    """`nft list table` of a node's table; "" when there is none."""
    done = subprocess.run(
        ["nft", "list", "table", "ip", table_name(cluster.cluster, node)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.stdout if done.returncode == 0 else ""


def targets(text: str, port: int) -> list[str]:
    """The DNAT targets of `port`'s rule in the output chain."""
    output = text.partition("chain output")[2].partition("}\n")[0]
    for line in output.splitlines():
        if f"tcp dport {port} " in line:
            return [f"{m[0] or m[2]}:{m[1] or m[3]}" for m in TARGET.findall(line)]
    return []


def packets(text: str, port: int) -> int:
    """What the named counter of `port`'s rules (prerouting and output share it) counted."""
    found = re.search(rf"counter conn_{port} {{\s*packets (\d+)", text)
    return int(found[1]) if found else 0


def get(host: str, port: int) -> str:
    """One GET over a new connection; the body (names the replica) or the error."""
    conn = http.client.HTTPConnection(host, port, timeout=5.0)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        return conn.getresponse().read().decode(errors="replace").strip()
    except OSError as exc:
        return f"error {exc!r}"
    finally:
        conn.close()


def test_kernel_fast_path(make_cluster: Callable[..., DevCluster]) -> None:
    cluster = make_cluster(nodes=2, node_args={2: ["--proxy-nft", "/nonexistent/nft"]})
    n1 = cluster.members[0]
    port, other = free_port_on_all(HOSTS), free_port_on_all(HOSTS)
    try:
        with cluster.client() as c:
            c.apply(spec(port, 3), "raw.yaml")
            c.apply(spec(other, 1, name="fb", node="n2"), "fb.yaml")
        wait_until_sync(
            lambda: len(targets(table(cluster, "n1"), port)) == 3, 60.0, message="3 replicas in n1's table"
        )
        wait_until_sync(lambda: get(HOSTS[0], port).startswith("web v1"), 20.0, message="the port answers")

        # the kernel spreads new connections round robin: 30 connections, 10 per replica
        before = packets(table(cluster, "n1"), port)
        bodies = [get(HOSTS[0], port) for _ in range(30)]
        assert sorted(Counter(bodies).values()) == [10, 10, 10], Counter(bodies)
        assert packets(table(cluster, "n1"), port) - before >= 30  # the kernel's rule took them

        # a node without replicas of a port has no rule for it: its userland listener
        # serves it over the other node's replicas (raw on n2, fb on n1)
        assert get(HOSTS[1], port).startswith("web v1")
        wait_until_sync(lambda: get(HOSTS[0], other).startswith("web v1"), 60.0, message="fb answers on n1")
        assert targets(table(cluster, "n1"), other) == []

        # node 2 has no nft: fb's port, with its replica on n2, is served by the userland
        # listener there, and the fallback is said once
        assert table(cluster, "n2") == ""
        assert get(HOSTS[1], other).startswith("web v1")
        with cluster.client() as c:
            fallbacks = list(c.events(kind="proxy.kernel_fallback"))
        assert [e.node for e in fallbacks] == ["n2"], fallbacks
        assert "/nonexistent/nft is not found" in fallbacks[0].message

        # ... and `shoal node ls` shows it (the node's registration): n2 fell back, n1 is on
        def kernels() -> dict[str, tuple[str, str]]:
            with cluster.client() as c:
                return {n.id: (n.kernel_path, n.kernel_reason) for n in c.list_nodes().nodes}

        wait_until_sync(
            lambda: kernels() == {"n1": ("on", ""), "n2": ("fallback", "/nonexistent/nft is not found")},
            20.0,
            message="n2's fallback in node ls",
        )

        # a scale and a rolling update under a bounded loop of new connections
        counted = packets(table(cluster, "n1"), port)
        with loading([port]) as (load,):
            wait_until_sync(lambda: len(load.results) >= 10, 20.0, message="load flows")
            with cluster.client() as c:
                c.scale("raw", 4)
            wait_until_sync(
                lambda: len(targets(table(cluster, "n1"), port)) == 4, 60.0, message="4 in the table"
            )
            old = set(targets(table(cluster, "n1"), port))
            with cluster.client() as c:
                c.apply(spec(port, 4, "shoal-demo/web:2"), "raw.yaml")
            wait_until_sync(
                lambda: len(now := set(targets(table(cluster, "n1"), port))) == 4 and not now & old,
                120.0,
                message="the update's replicas in the table",
            )
            updated = time.monotonic()
            wait_until_sync(lambda: len(load.after(updated)) >= 10, 20.0, message="load after the update")
        failed = [r for r in load.results if not r[1]]
        print(
            f"kernel path under scale and update: {len(failed)} of {len(load.results)} new connections failed"
        )
        assert not failed, f"{len(failed)} of {len(load.results)} failed: {failed[:5]}"
        assert all(r[2].startswith("200 web v2") for r in load.after(updated))
        # the port's counter outlived every swap of the table (scale, update): it moved by the
        # load's connections, as many as the rule took (none reached the userland listener)
        moved = packets(table(cluster, "n1"), port) - counted
        print(f"kernel path: the counter moved by {moved} over {len(load.results)} connections and the swaps")
        assert moved == len(load.results), (moved, len(load.results))

        # the data path outlives the daemon: kill -9, the kernel still serves
        n1.kill(signal.SIGKILL)
        assert len(targets(table(cluster, "n1"), port)) == 4
        answers = [get(HOSTS[0], port) for _ in range(8)]
        assert all(a.startswith("web v2") for a in answers), answers
        n1.start()
        cluster.wait_ready(60.0)
        wait_until_sync(
            lambda: len(targets(table(cluster, "n1"), port)) == 4, 60.0, message="the table after restart"
        )
        assert get(HOSTS[0], port).startswith("web v2")
    finally:
        cluster.stop()  # DevCluster.stop removes its nodes' tables with their containers
    left = kernel_tables(cluster.cluster)
    remove_kernel_tables(cluster.cluster)  # nothing to do unless the check below fails
    assert left == [], f"tables left after the cluster's stop: {left}"
