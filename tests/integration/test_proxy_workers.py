"""Ingress that outlives the daemon (issue 17, item 6): a real 2-node cluster whose
published ports and shared entrance (decision 80) are served by proxy worker processes
(`proxy_workers = 2`).

Bounded load (a new connection per request, loopback only, at most `MAX_REQUESTS` per
port and `MAX_SECONDS`) goes to node 1's published http and tcp ports and to its
entrance (by host name) while node 1's daemon is killed with SIGKILL and started again:
not one request may fail, and the restarted daemon adopts the same worker processes.
Every worker is killed at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node.dev.devcluster import DevCluster
from tests.helpers import free_port_on_all, wait_until_sync

pytestmark = pytest.mark.integration

HOSTS = ["127.0.0.1", "127.0.0.2"]
RATE = 20.0  # new connections per second and port
MAX_REQUESTS = 1500
MAX_SECONDS = 120.0


def worker_pids(root: Path) -> set[int]:
    """The proxy workers whose socket lies under `root` (from /proc)."""
    out = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"node.proxy.worker" in cmd and any(str(root).encode() in part for part in cmd):
                out.add(int(proc.name))
    return out


@dataclass
class NewConnections:
    """GET / over a new connection per request, at `RATE`/s, until stopped or bounded."""

    port: int
    host: str = ""  # the Host header (the entrance routes by it); "": the address's
    results: list[tuple[float, bool, str]] = field(default_factory=list)  # (sent at, ok, what)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        end, n = time.monotonic() + MAX_SECONDS, 0
        while not self.stop.is_set() and time.monotonic() < end and n < MAX_REQUESTS:
            n += 1
            at = time.monotonic()
            conn = http.client.HTTPConnection(HOSTS[0], self.port, timeout=5.0)
            try:
                conn.request(
                    "GET", "/", headers={"Connection": "close", **({"Host": self.host} if self.host else {})}
                )
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace").strip()
                self.results.append((at, resp.status == 200, f"{resp.status} {body}"))
            except OSError as exc:
                self.results.append((at, False, repr(exc)))
            finally:
                conn.close()
            self.stop.wait(max(0.0, at + 1 / RATE - time.monotonic()))

    def after(self, t: float) -> list[tuple[float, bool, str]]:
        return [r for r in list(self.results) if r[0] >= t]


@contextlib.contextmanager
def loading(ports: list[int], hosts: dict[int, str] | None = None) -> Iterator[list[NewConnections]]:
    """Load on each port; `hosts`: the Host header to send to a port (the entrance's)."""
    loads = [NewConnections(p, (hosts or {}).get(p, "")) for p in ports]
    threads = [threading.Thread(target=load.run, daemon=True) for load in loads]
    for t in threads:
        t.start()
    try:
        yield loads
    finally:
        for load in loads:
            load.stop.set()
        for t in threads:
            t.join(15)


def spec(name: str, published: int, protocol: str, host: str = "") -> str:
    ingress = f"ingress: [{{host: {host}, port: 8080}}]\n" if host else ""
    return f"""
name: {name}
image: shoal-demo/web:1
replicas: 2
ports:
  - {{container: 8080, published: {published}, protocol: {protocol}}}
{ingress}"""


def answers(port: int, host: str = "") -> bool:
    conn = http.client.HTTPConnection(HOSTS[0], port, timeout=2.0)
    try:
        conn.request("GET", "/", headers={"Host": host} if host else {})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def logs_of(*paths: Path, lines: int = 60) -> str:
    """The last lines of each log, for a failure's message."""
    out = []
    for path in paths:
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(out)


def served_by_node(load: list[NewConnections], since: float, count: int) -> Callable[[], bool]:
    return lambda: all(len(x.after(since)) >= count for x in load)


def test_kill_9_and_restart_of_the_daemon_loses_no_new_request(
    make_cluster: Callable[..., DevCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOAL_LEAVE_ON_STOP", "true")  # the daemons' graceful stop stops them too
    entrance = free_port_on_all(HOSTS)
    cluster = make_cluster(nodes=2, proxy_workers="2", extra_args=["--ingress-http-port", str(entrance)])
    node = cluster.members[0]
    try:
        web = raw = entrance
        while len({web, raw, entrance}) < 3:
            web, raw = free_port_on_all(HOSTS), free_port_on_all(HOSTS)
        site = "front.example.test"
        with cluster.client() as c:
            c.apply(spec("front", web, "http", site), "front.yaml")
            c.apply(spec("raw", raw, "tcp"), "raw.yaml")
        wait_until_sync(lambda: answers(web) and answers(raw) and answers(entrance, site), 60.0,
                        message="both ports and the entrance answer on node 1")  # fmt: skip
        workers = wait_until_sync(
            lambda: len(worker_pids(node.data_dir)) == 2 and worker_pids(node.data_dir), 10.0
        )
        assert os.getpid() not in workers and node.proc is not None and node.proc.pid not in workers

        with loading([web, raw, entrance], {entrance: site}) as load:
            wait_until_sync(served_by_node(load, 0.0, 10), 20.0, message="load flows")
            killed = time.monotonic()
            node.kill(signal.SIGKILL)
            # the daemon is down: new connections keep coming, served by the workers
            wait_until_sync(
                served_by_node(load, killed, 20), 20.0, message="requests while the daemon is down"
            )
            node.start()
            restarted = time.monotonic()
            wait_until_sync(lambda: "adopted" in node.log_path.read_text(errors="replace"), 60.0,
                            message="the new daemon adopts the workers")  # fmt: skip
            cluster.wait_ready(60.0)
            ready = time.monotonic()
            wait_until_sync(served_by_node(load, ready, 20), 20.0, message="requests after the restart")
        roles = {web: "http port", raw: "tcp port", entrance: "entrance"}
        for x in load:
            failed = [(round(r[0] - killed, 2), r[2]) for r in x.results if not r[1]]
            assert not failed, (
                f"{roles[x.port]} {x.port}: {len(failed)} of {len(x.results)} failed, at s from the kill "
                f"(restarted +{restarted - killed:.2f}, ready +{ready - killed:.2f}): {failed[:5]}\n"
                + logs_of(node.log_path, *node.data_dir.glob("proxy/worker-*.log"))
            )
            down = [r for r in x.results if killed <= r[0] < restarted]
            assert len(down) >= 20, f"port {x.port}: only {len(down)} requests while the daemon was down"
        assert worker_pids(node.data_dir) == workers  # adopted, not replaced
        for member in cluster.members:  # graceful, with leave_on_stop: the daemons stop their workers
            member.stop()  # (not `cluster.stop()`, which stops what they leave)
        wait_until_sync(
            lambda: not worker_pids(cluster.data_dir), 20.0, message="workers stopped with the node"
        )
    finally:
        cluster.stop()
        for pid in worker_pids(cluster.data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
