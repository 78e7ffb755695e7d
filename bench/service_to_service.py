"""Service to service: a client container reaching a service by name through shoal,
against the same client to the replica's container IP, and against Docker's embedded
DNS on a user-defined bridge network, in the same run.

    .venv/bin/python bench/service_to_service.py [--requests 3000] [--concurrency 16]
                                                 [--latency 1000] [--lookups 500] [--runs 3]

What it does (root, dockerd, etcd, the demo images; ~1 min):
- a 1-node `shoal dev` cluster; `stack deploy` of stack `s2s`: `db` (shoal-demo/web:1,
  1 replica, port 8080) and `client` (busybox, sleeping). Timed: from the deploy call
  to the first answer of `db.s2s.shoal` by the node's name server, and to the first
  HTTP 200 through the VIP;
- a second 1-node cluster started with `--no-vip-kernel`, the same stack: the VIP served
  by the userland listener, the path before decision 74, for the ratio of the two paths;
- Docker alone: a user-defined bridge network with the same web image (`--name`) and a
  client container on it (Docker's embedded DNS at 127.0.0.11);
- the load runs in the client containers' network namespaces (`nsenter --net`, with
  the host's tools: busybox has no load generator): `ab -n N -c C` (a new connection
  per request: busybox httpd closes each), and a sequential latency probe (N GETs, one
  connection each, timed with perf_counter) for p50/p99 at sub-millisecond resolution;
  targets: shoal's VIP (nftables DNAT, decision 74), shoal's VIP through the listener
  (its TCP proxy, the second cluster), the replica's container IP directly, and the
  Docker network's container by the address its DNS gave;
- name lookups: N sequential A queries from the client's namespace to shoal's name
  server and to Docker's 127.0.0.11, p50/p99.

Every target is run `--runs` times in turn; medians are printed with the 1-minute load
average (a shared 2-core machine moves absolute figures a lot; the ratios in one run
less). Everything it starts is removed at the end, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from node.dev.devcluster import DevCluster
from node.proxy import dnswire as w
from node.wire.client import ShoalClient

STACK = """\
name: s2s
services:
  db:
    image: shoal-demo/web:1
    ports: [{container: 8080}]
  client:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
"""

# run inside a namespace with the host's python: N sequential GETs, one connection each
PROBE = """
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out, errors = [], 0
deadline = time.monotonic() + 60
for _ in range(n):
    if time.monotonic() > deadline:
        break
    t = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            while s.recv(4096):
                pass
        out.append(time.perf_counter() - t)
    except OSError:
        errors += 1
print(json.dumps({"times": out, "errors": errors}))
"""

LOOKUP = """
import json, socket, sys, time
server, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
query = bytes.fromhex(sys.argv[4])
out, errors = [], 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for i in range(n):
    t = time.perf_counter()
    try:
        s.sendto(query, (server, 53))
        s.recv(4096)
        out.append(time.perf_counter() - t)
    except OSError:
        errors += 1
print(json.dumps({"times": out, "errors": errors}))
"""


def sh(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def netns(container: str) -> list[str]:
    pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", container).strip()
    return ["nsenter", f"--net=/proc/{pid}/ns/net"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def ab(ns: list[str], address: str, requests: int, concurrency: int) -> float:
    out = sh(*ns, "ab", "-r", "-q", "-s", "5", "-n", str(requests), "-c", str(concurrency),
             f"http://{address}:8080/", timeout=120)  # fmt: skip
    failed = re.search(r"Failed requests:\s+(\d+)\s*(\(.*?\))?", out)
    if failed and int(failed.group(1)):
        why = failed.group(2) or ""
        print(f"  ab to {address}: {failed.group(1)} failed requests {why}".rstrip(), file=sys.stderr)
    m = re.search(r"Requests per second:\s+([\d.]+)", out)
    return float(m.group(1)) if m else float("nan")


def probe(ns: list[str], script: str, *args: str) -> dict[str, object]:
    return dict(json.loads(sh(*ns, sys.executable, "-c", script, *args, timeout=120)))


def until(fn: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if fn():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.01)
    raise RuntimeError(f"{what}: not within {timeout}s")


def dns_a(server: str, name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        try:
            s.sendto(w.build_query(name, w.A), (server, 53))
            answer = w.parse_answer(s.recv(4096))
        except OSError:
            return None
    return answer.a[0] if answer.rcode == w.NOERROR and answer.a else None


def http_ok(address: str) -> bool:
    try:
        with socket.create_connection((address, 8080), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return b" 200 " in s.recv(64)
    except OSError:
        return False


@contextlib.contextmanager
def docker_network() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:8]
    net, db, client = f"s2s-{tag}", f"s2s-db-{tag}", f"s2s-client-{tag}"
    try:
        sh("docker", "network", "create", net)
        sh("docker", "run", "-d", "--network", net, "--name", db, "shoal-demo/web:1")
        sh("docker", "run", "-d", "--network", net, "--name", client, "shoal-demo/base:1", "sleep", "100000")
        yield db, client
    finally:
        sh("docker", "rm", "-f", db, client, check=False)
        sh("docker", "network", "rm", net, check=False)


def containers(cluster: str, service: str) -> list[str]:
    out = sh("docker", "ps", "-q", "--filter", f"label=io.shoal.cluster={cluster}",
             "--filter", f"label=io.shoal.service={service}")  # fmt: skip
    return out.split()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency", type=int, default=1000)
    p.add_argument("--lookups", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    missing = [t for t in ("ab", "nsenter", "docker", "etcd") if shutil.which(t) is None]
    if missing:
        print(
            f"missing: {', '.join(missing)}; apt-get install apache2-utils util-linux docker.io etcd-server"
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="s2s-") as tmp:
        cluster = DevCluster.on_free_ports(Path(tmp) / "k", nodes=1, name="s2s")
        userland = DevCluster.on_free_ports(
            Path(tmp) / "u", nodes=1, name="s2su", extra_args=["--no-vip-kernel"]
        )
        try:
            cluster.start()
            userland.start()
            with docker_network() as (docker_db, docker_client):
                return run(cluster, userland, a, docker_db, docker_client)
        finally:
            cluster.stop()
            userland.stop()


def deploy(cluster: DevCluster) -> tuple[str, str, list[str]]:
    """The stack deployed and answering: its VIP, its name server, the client's netns."""
    dns = cluster.vip_range.rsplit(".", 1)[0] + ".1"
    with ShoalClient(cluster.addr, timeout=10, tls=cluster.tls) as c:
        start = time.monotonic()
        c.deploy_stack("s2s", STACK, "s2s.yaml")
        named = until(lambda: dns_a(dns, "db.s2s.shoal"), 60, "db.s2s.shoal answering")
        vip = dns_a(dns, "db.s2s.shoal") or ""
        until(lambda: http_ok(vip), 60, "db answering through its VIP")
        reached = time.monotonic() - start
    print(
        f"{cluster.cluster}: stack deploy -> name answering: {named * 1000:.0f} ms; "
        f"first 200 through the VIP: {reached:.2f} s"
    )
    until(lambda: containers(cluster.cluster, "s2s_client"), 60, "the client container")
    return vip, dns, netns(containers(cluster.cluster, "s2s_client")[0])


def run(
    cluster: DevCluster, userland: DevCluster, a: argparse.Namespace, docker_db: str, docker_client: str
) -> int:
    vip, dns, ns = deploy(cluster)
    vip_u, _, ns_u = deploy(userland)
    db = containers(cluster.cluster, "s2s_db")
    dns_ns = netns(docker_client)
    direct = sh(
        "docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", db[0]
    ).strip()
    docker_addr = sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                     docker_db).strip()  # fmt: skip
    targets = {"shoal, by name (VIP)": (ns, vip), "shoal VIP, listener": (ns_u, vip_u),
               "direct container IP": (ns, direct),
               "docker network (by its DNS)": (dns_ns, docker_addr)}  # fmt: skip
    rps: dict[str, list[float]] = {k: [] for k in targets}
    lat: dict[str, list[float]] = {k: [] for k in targets}
    for r in range(a.runs):
        load = os.getloadavg()[0]
        for name, (space, address) in targets.items() if r % 2 == 0 else reversed(targets.items()):
            rps[name].append(ab(space, address, a.requests, a.concurrency))
            got = probe(space, PROBE, address, "8080", str(a.latency))
            lat[name] += got["times"]  # type: ignore[arg-type]
        print(
            f"run {r + 1}: load {load:.2f}; " + ", ".join(f"{k}: {v[-1]:.0f} req/s" for k, v in rps.items())
        )
        if r == 0:
            print("  (targets: " + ", ".join(f"{k} = {v[1]}" for k, v in targets.items()) + ")")
    print(f"\n{'target':30} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8}")
    for name in targets:
        print(
            f"{name:30} {statistics.median(rps[name]):>15.0f} "
            f"{pct(lat[name], 0.5):>8.3f} {pct(lat[name], 0.99):>8.3f}"
        )
    s, u, d = "shoal, by name (VIP)", "shoal VIP, listener", "direct container IP"
    print(
        f"\nthroughput shoal/direct: {statistics.median(rps[s]) / statistics.median(rps[d]):.2f} (goal 0.8); "
        f"listener/direct: {statistics.median(rps[u]) / statistics.median(rps[d]):.2f}"
    )
    print(f"p99 added by shoal: {pct(lat[s], 0.99) - pct(lat[d], 0.99):.3f} ms (goal <= 0.5 ms)")
    lookups: dict[str, list[float]] = {"shoal name server": [], "docker embedded DNS": []}
    errors = dict.fromkeys(lookups, 0)
    asks = {
        "shoal name server": (ns, dns, "db.s2s.shoal"),
        "docker embedded DNS": (dns_ns, "127.0.0.11", docker_db),
    }
    for r in range(a.runs):  # in turn, the order reversed every other run
        for label, (space, server, name) in asks.items() if r % 2 else reversed(asks.items()):
            got = probe(space, LOOKUP, server, name, str(a.lookups), w.build_query(name, w.A).hex())
            lookups[label] += got["times"]  # type: ignore[arg-type]
            errors[label] += int(got["errors"])  # type: ignore[call-overload]
    print(f"\n{'name lookup':30} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, times in lookups.items():
        print(f"{label:30} {pct(times, 0.5):>8.3f} {pct(times, 0.99):>8.3f} {errors[label]:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
