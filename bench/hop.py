"""The userland hop to a replica (issue 17, item 5): p99 at saturation, 32 connections.

    .venv/bin/python bench/hop.py [--duration 8] [--connections 32] [--rounds 1]

One replica of the demo image (`shoal-demo/web:1`, busybox httpd: a new connection per
request) started here with its port published on 127.0.0.1 (`docker run -p`), removed
at the end. Targets, one after the other in the same run, each loaded by
`wrk -t1 -c<connections> -d<duration>s --latency --timeout 2s`:

- `container`: the container's address on its Docker network, directly;
- `published`: its published port (Docker's userland `docker-proxy`, or kernel DNAT
  where dockerd runs with `--userland-proxy=false`);
- `shoal-l4-published`, `shoal-l7-published`: shoal's TcpProxy / HttpProxy to the
  published port (what the mesh did for every replica before `node.proxy.direct`);
- `shoal-l4-direct`, `shoal-l7-direct`: the same proxies to the container's address
  (what the mesh does now for a replica on its own node).

With `--kernel` (root), three more rows from a client in a network namespace made here
(a veth to the host, as a remote client): `ns:container`, `ns:docker-proxy` (the port
published on the host end of the veth) and `ns:kernel-dnat` (an iptables DNAT rule in
PREROUTING to the container: what dockerd does with `--userland-proxy=false`, which
cannot be switched on a shared dockerd); the namespace and the rule are removed at the end.

Printed per target: requests/s, p50, p99, wrk's socket errors (timeouts), and p99 as a
multiple of `container`'s (`ns:container`'s for the netns rows; the goal: at most 2x).
With `--rounds N` the medians of N runs (the order reversed every other round). Every
process and the container are removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.proxy import HOST, UNITS, Procs, free_port, running

IMAGE = "shoal-demo/web:1"
PORT = 8080


def wrk(
    host: str, port: int, duration: int, connections: int, netns: str = ""
) -> tuple[float, float, float, str]:
    """(requests/s, p50 ms, p99 ms, wrk's error line) of one bounded run (in `netns`)."""
    args = [
        *(["ip", "netns", "exec", netns] if netns else []),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "2s",
    ]
    out = subprocess.run(
        [*args, f"http://{host}:{port}/"], capture_output=True, text=True, timeout=duration + 20, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")

    errors = re.search(r"Socket errors: (.*)", out)
    return rps, pct("50"), pct("99"), errors.group(1).strip() if errors else ""


def serve(port: int, host: str, backend_port: int, l7: bool) -> None:
    """A shoal engine in its own process, under uvloop, until SIGTERM."""
    import asyncio
    import signal

    import uvloop

    from node.proxy.balancer import Backend, Balancer
    from node.proxy.http import HttpProxy
    from node.proxy.tcp import TcpProxy

    async def main() -> None:
        bal = Balancer()
        bal.set_endpoints([Backend("b0", host, backend_port)])
        proxy: TcpProxy | HttpProxy
        if l7:
            proxy = HttpProxy(HOST, port, bal, service="bench", connect_timeout=1.0, drain_timeout=1.0)
        else:
            proxy = TcpProxy(HOST, port, bal, connect_timeout=1.0, drain_timeout=1.0)
        await proxy.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await proxy.close()

    uvloop.run(main())


@contextlib.contextmanager
def replica(also: str = "") -> Iterator[tuple[str, int]]:
    """(container address, published port on 127.0.0.1) of a demo replica, removed on
    exit; published on `also` too (the same host port) when given."""
    name = f"shoal-bench-hop-{uuid.uuid4().hex[:8]}"
    more = ["-p", f"{also}:{{port}}:{PORT}"] if also else []
    port = free_port()
    publish = ["-p", f"{HOST}:{port}:{PORT}", *[m.format(port=port) for m in more]]
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, *publish, IMAGE],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        info = json.loads(subprocess.run(["docker", "inspect", name], check=True, capture_output=True,
                                         text=True, timeout=30).stdout)[0]  # fmt: skip
        net = info["NetworkSettings"]
        ip = net.get("IPAddress") or next(n["IPAddress"] for n in net["Networks"].values())
        yield ip, port
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def userland_proxy() -> str:
    """Whether published ports go through docker-proxy here (from dockerd's command line)."""
    try:
        pids = subprocess.run(["pgrep", "-x", "docker-proxy"], capture_output=True, text=True).stdout.split()
    except OSError:
        return "unknown"
    return f"docker-proxy running ({len(pids)} processes)" if pids else "no docker-proxy process"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--kernel", action="store_true", help="also the kernel DNAT path, from a netns (root)")
    ap.add_argument("--serve", nargs=4, metavar=("PORT", "HOST", "BPORT", "L7"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(int(a.serve[0]), a.serve[1], int(a.serve[2]), a.serve[3] == "1")
        return 0
    if shutil.which("wrk") is None or shutil.which("docker") is None:
        print("missing: wrk or docker; install with: apt-get install -y wrk", file=sys.stderr)
        return 2
    rows: dict[str, list[tuple[float, float, float, str]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="shoal-bench-hop-") as d,
        running() as procs,
        replica() as (ip, pub),
    ):
        tmp = Path(d)
        targets: dict[str, tuple[str, int]] = {"container": (ip, PORT), "published": (HOST, pub)}
        for l7 in (False, True):
            for via, (host, port) in (("published", (HOST, pub)), ("direct", (ip, PORT))):
                name = f"shoal-{'l7' if l7 else 'l4'}-{via}"
                sp = free_port()
                procs.start([sys.executable, __file__, "--serve", str(sp), host, str(port), str(int(l7))],
                            sp, tmp / f"{name}.log")  # fmt: skip
                targets[name] = (HOST, sp)
        _wait_container(procs, ip)
        print(f"{IMAGE} at {ip}:{PORT}, published {HOST}:{pub} ({userland_proxy()}); "
              f"wrk -t1 -c{a.connections} -d{a.duration}s; {a.rounds} round(s)")  # fmt: skip
        for n in range(a.rounds):
            order = list(targets.items())
            for name, (host, port) in order if n % 2 == 0 else order[::-1]:
                r = wrk(host, port, a.duration, a.connections)
                rows.setdefault(name, []).append(r)
                print(f"  {name:<20} {r[0]:>8.0f} req/s  p50 {r[1]:8.3f} ms  p99 {r[2]:8.3f} ms  {r[3]}")
    if a.kernel:
        rows |= kernel_rows(a.duration, a.connections, a.rounds)
    bases = {k: statistics.median(r[2] for r in rows[k]) for k in ("container", "ns:container") if k in rows}
    print(
        f"\n{'target':<20} {'req/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'p99/container':>14}  errors (last run)"
    )
    for name, got in rows.items():
        base = bases["ns:container" if name.startswith("ns:") else "container"]
        rps, p50, p99 = (statistics.median(r[i] for r in got) for i in range(3))  # type: ignore[misc]
        print(f"{name:<20} {rps:>8.0f} {p50:>9.3f} {p99:>9.3f} {p99 / base:>13.1f}x  {got[-1][3]}")
    return 0


def _wait_container(procs: Procs, ip: str) -> None:
    import socket
    import time

    end = time.monotonic() + 20
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection((ip, PORT), timeout=0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"the demo replica at {ip}:{PORT} does not answer")


# -- the kernel path: what dockerd --userland-proxy=false makes of a published port ----------


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def client_netns() -> Iterator[tuple[str, str]]:
    """(netns name, host-side address): a network namespace made here whose only route
    is a veth to the host (10.216.<k>.2 -> 10.216.<k>.1), removed on exit. A client in
    it reaches the host as a remote client would: through PREROUTING and FORWARD."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if, k = f"shbh-{tag}", f"shbh{tag}a", f"shbh{tag}b", int(tag[:2], 16)
    host, peer = f"10.216.{k}.1", f"10.216.{k}.2"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{peer}/30", "dev", ns_if)
        sh("ip", "-n", ns, "link", "set", ns_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", host)
        yield ns, host
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@contextlib.contextmanager
def dnat(host: str, port: int, ip: str) -> Iterator[None]:
    """`host:port` DNAT'ed to `ip:PORT` in PREROUTING, as dockerd does without its
    userland proxy (Docker's own FORWARD rule for the published container port lets it
    through); removed on exit."""
    rule = ["PREROUTING", "-d", host, "-p", "tcp", "--dport", str(port), "-j", "DNAT",
            "--to-destination", f"{ip}:{PORT}", "-m", "comment", "--comment", "shoal-bench-hop"]  # fmt: skip
    sh("iptables", "-t", "nat", "-I", *rule)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-t", "nat", "-D", *rule], capture_output=True, timeout=30)


def kernel_rows(
    duration: int, connections: int, rounds: int
) -> dict[str, list[tuple[float, float, float, str]]]:
    """From a client netns: the container directly, its port published by docker-proxy
    on the host side of the veth, and the same through kernel DNAT."""
    rows: dict[str, list[tuple[float, float, float, str]]] = {}
    with client_netns() as (ns, host), replica(also=host) as (ip, pub):
        nat_port = free_port()
        with dnat(host, nat_port, ip):
            targets = {
                "ns:container": (ip, PORT),
                "ns:docker-proxy": (host, pub),
                "ns:kernel-dnat": (host, nat_port),
            }
            _wait_container(Procs(), ip)
            print(
                f"from netns {ns}: {IMAGE} at {ip}:{PORT}, docker-proxy {host}:{pub}, DNAT {host}:{nat_port}"
            )
            for n in range(rounds):
                order = list(targets.items())
                for name, (h, p) in order if n % 2 == 0 else order[::-1]:
                    r = wrk(h, p, duration, connections, netns=ns)
                    rows.setdefault(name, []).append(r)
                    print(f"  {name:<20} {r[0]:>8.0f} req/s  p50 {r[1]:8.3f} ms  p99 {r[2]:8.3f} ms  {r[3]}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
