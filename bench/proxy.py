"""Proxy throughput and latency: direct, HAProxy (TCP and HTTP mode), shoal's L4 and L7 proxies,
and shoal's kernel fast path for tcp ports.

    .venv/bin/python bench/proxy.py [--duration 5] [--connections 32] [--modes keepalive,close]
                                    [--rounds 1] [--h2]

All on this machine, on 127.0.0.1, one after the other:

- backends: 3 HTTP servers, Debian's nginx-light (one worker, `return 200`) when
  installed, otherwise a tiny asyncio HTTP server per backend (said in the output);
- load: `wrk -t1 -c<connections> -d<duration>s --latency`, once with keep-alive and once
  with `Connection: close` (a new connection per request);
- targets: one backend directly; HAProxy (`nbthread 1`, `balance roundrobin` over the
  3) in `mode tcp`, and in `mode http` (`option http-keep-alive`, `http-reuse always`,
  `option forwardfor` and X-Forwarded-Proto set, as shoal does); shoal's `TcpProxy` (L4)
  and `HttpProxy` (L7) over the same 3, each in its own process under uvloop; shoal's
  kernel fast path (`shoal-kernel`, decision 75: the nftables table a node writes for a
  `fast_path: kernel` port, DNAT round robin per connection; bench/proxy_kernel.py) over
  the same 3, when run as root with `nft` installed.

Printed: requests/s, p50 and p99 latency per target and mode, the CPU time the proxy
process used per request (from /proc; NaN for direct), and the ratios in requests/s
shoal L7/HAProxy http, shoal L4/HAProxy tcp, kernel path/HAProxy tcp and shoal/direct, and of CPU per request
HAProxy/shoal (less sensitive than requests/s to other load on the machine); then the
p99 latency each proxy adds to direct at a steady 1,000 requests/s (`paced`: 5 s over
4 keep-alive connections; the goal is at most 0.5 ms). With
`--rounds N` every target is run N times, in turn (the order reversed every other
round), and the medians are printed: on a shared machine one run of each is noisy. In `close`
mode the client opens a connection per request; the L7 proxies still reuse their
backend connections (`Connection` is hop-by-hop). Every process the bench starts is
stopped at the end (also on error or Ctrl-C); every wrk run is bounded by its duration
plus a timeout. `--h2` adds gRPC over h2c, shoal's h2c engine against a direct
connection to a grpcio server, with a Python load client (bench/proxy_h2.py). Missing
tools: their names, the install command, exit status 2. `--syscalls` then counts the
system calls per request of each proxy process under `strace -c -f`
(bench/proxy_syscalls.py): where shoal's and HAProxy's counts match, the gap is in
userland, which the `user` column of the CPU per request shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from node.dev import freeports

HOST = "127.0.0.1"
INSTALL = "apt-get install -y nginx-light wrk haproxy strace"


def free_port() -> int:
    return freeports.free_port(HOST)  # outside the ephemeral range


def wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {HOST}:{port} after {deadline} s ({proc.args!r})")


class Procs:
    """Every process the bench starts; all stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], port: int, log: Path) -> int:
        """Start `args`, wait for `port` to listen; the process id."""
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        try:
            wait_listening(port, proc)
        except SystemExit as e:
            raise SystemExit(f"{e}\n{log.read_text(errors='replace')[-2000:]}") from None
        return proc.pid

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def nginx_conf(tmp: Path, ports: list[int]) -> Path:
    servers = "\n".join(
        f'  server {{ listen {HOST}:{p}; location / {{ return 200 "backend {i}\\n"; }} }}'
        for i, p in enumerate(ports)
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 60s;\n"
        f"  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;\n{servers}\n}}\n"
    )
    return conf


def haproxy_conf(tmp: Path, tcp_port: int, http_port: int, backends: list[int], threads: int = 1) -> Path:
    """One HAProxy (`nbthread <threads>`): a `mode tcp` frontend and a `mode http` one."""
    servers = "\n".join(f"  server s{i} {HOST}:{p}" for i, p in enumerate(backends))
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        f"global\n  nbthread {threads}\n  maxconn 4096\n"
        "defaults\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n"
        "  timeout http-keep-alive 30s\n"
        f"frontend ft\n  mode tcp\n  bind {HOST}:{tcp_port}\n  default_backend bt\n"
        f"backend bt\n  mode tcp\n  balance roundrobin\n{servers}\n"
        f"frontend fh\n  mode http\n  bind {HOST}:{http_port}\n  option http-keep-alive\n"
        "  option forwardfor\n  http-request set-header X-Forwarded-Proto http\n  default_backend bh\n"
        f"backend bh\n  mode http\n  balance roundrobin\n  http-reuse always\n{servers}\n"
    )
    return conf


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def cpu_seconds(pid: int | None, user_only: bool = False) -> float:
    """User + system (or user only) CPU seconds used so far by process `pid` (Linux
    /proc), NaN if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + (0 if user_only else int(fields[12]))
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def user_seconds(pid: int | None) -> float:
    return cpu_seconds(pid, user_only=True)


def run_wrk(port: int, duration: int, connections: int, close: bool) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, requests) of one bounded wrk run."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "2s"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run(
        [*args, f"http://{HOST}:{port}/"], capture_output=True, text=True, timeout=duration + 20, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        print(f"    wrk reported: {errors.group(0)}")
    total = re.search(r"(\d+) requests in", out)
    return rps, pct("50"), pct("99"), int(total.group(1)) if total else 0


def paced(port: int, rate: int = 1000, seconds: float = 5.0, conns: int = 4) -> tuple[float, float]:
    """p50 and p99 latency (ms) of GETs sent at a steady `rate` per second for `seconds`,
    over `conns` keep-alive connections (a request starts when due, or when its
    connection is free). Measured from this process, so the client's own time is in
    every figure alike: compare targets, not absolutes."""

    async def go() -> list[float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.2
        total = int(rate * seconds)
        out: list[float] = []

        async def one(k: int) -> None:
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                for i in range(k, total, conns):
                    due = t0 + i / rate
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    start = loop.time()
                    writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                    await reader.readexactly(int(length[1]) if length else 0)
                    out.append(loop.time() - start)
            finally:
                writer.close()

        await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(conns))), seconds + 10)
        return out

    got = sorted(asyncio.run(go()))
    return got[len(got) // 2] * 1e3, got[int(len(got) * 0.99)] * 1e3


def serve_shoal(port: int, backends: list[int], l7: bool = False) -> None:
    """The shoal side, in its own process: a TcpProxy (or HttpProxy) under uvloop until SIGTERM,
    listening with SO_REUSEPORT (as proxy workers do: `--workers N` starts N of these)."""
    import signal

    import uvloop

    from node.proxy.balancer import Backend, Balancer
    from node.proxy.http import HttpProxy
    from node.proxy.tcp import TcpProxy

    async def main() -> None:
        bal = Balancer()
        bal.set_endpoints(Backend(f"b{i}", HOST, p) for i, p in enumerate(backends))
        proxy: TcpProxy | HttpProxy
        if l7:
            proxy = HttpProxy(HOST, port, bal, service="bench", connect_timeout=1.0, drain_timeout=1.0)
        else:
            proxy = TcpProxy(HOST, port, bal, connect_timeout=1.0, drain_timeout=1.0)
        proxy.reuse_port = True
        await proxy.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await proxy.close()
        print(f"stats: {proxy.stats}", flush=True)

    uvloop.run(main())


def serve_http(port: int) -> None:
    """Fallback backend without nginx: a minimal keep-alive HTTP/1.1 responder."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                close = b"connection: close" in head.lower()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                if close:
                    break
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, HOST, port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


@contextlib.contextmanager
def running() -> Iterator[Procs]:
    procs = Procs()
    try:
        yield procs
    finally:
        procs.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--modes", default="keepalive,close", help="keepalive, close or both")
    ap.add_argument("--rounds", type=int, default=1, help="runs per target and mode (medians printed)")
    ap.add_argument("--workers", type=int, default=1, help="shoal processes per port (SO_REUSEPORT) and "
                    "HAProxy threads (issue 17: proxy_workers)")  # fmt: skip
    ap.add_argument("--h2", action="store_true", help="then gRPC over h2c, shoal vs direct (proxy_h2.py)")
    ap.add_argument("--syscalls", action="store_true", help="then system calls per request of each proxy, "
                    "under strace (proxy_syscalls.py)")  # fmt: skip
    ap.add_argument("--serve-shoal", nargs=2, metavar=("PORT", "BACKENDS"), help=argparse.SUPPRESS)
    ap.add_argument("--serve-shoal-http", nargs=2, metavar=("PORT", "BACKENDS"), help=argparse.SUPPRESS)
    ap.add_argument("--serve-http", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_shoal:
        serve_shoal(int(a.serve_shoal[0]), [int(p) for p in a.serve_shoal[1].split(",")])
        return 0
    if a.serve_shoal_http:
        port, backends = a.serve_shoal_http
        serve_shoal(int(port), [int(p) for p in backends.split(",")], l7=True)
        return 0
    if a.serve_http:
        serve_http(a.serve_http)
        return 0
    needed = ("wrk", "haproxy", "strace") if a.syscalls else ("wrk", "haproxy")
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        print(f"missing: {', '.join(missing)}; install with: {INSTALL}", file=sys.stderr)
        return 2
    nginx = shutil.which("nginx")
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    results: dict[tuple[str, str], tuple[float, float, float, float, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="shoal-bench-proxy-") as d,
        running() as procs,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(d)
        ports = [free_port() for _ in range(3)]
        if nginx:
            procs.start([nginx, "-e", str(tmp / "nginx-error.log"), "-c", str(nginx_conf(tmp, ports))],
                        ports[-1], tmp / "nginx.log")  # fmt: skip
            for p in ports:
                wait_listening(p, procs.procs[-1])
            kind = "nginx-light, 1 worker"
        else:
            for p in ports:
                procs.start([sys.executable, __file__, "--serve-http", str(p)], p, tmp / f"http-{p}.log")
            kind = "asyncio HTTP server (nginx not installed)"
        hp, hhp, sp, shp = free_port(), free_port(), free_port(), free_port()
        haproxy = procs.start(
            ["haproxy", "-db", "-f", str(haproxy_conf(tmp, hp, hhp, ports, a.workers))],
            hp,
            tmp / "haproxy.log",
        )
        wait_listening(hhp, procs.procs[-1])
        upstreams = ",".join(map(str, ports))
        l4: list[int] = []
        l7: list[int] = []
        for w in range(a.workers):  # each its own process on the same port (SO_REUSEPORT)
            l4.append(procs.start([sys.executable, __file__, "--serve-shoal", str(sp), upstreams],
                                  sp, tmp / f"shoal-{w}.log"))  # fmt: skip
            l7.append(procs.start([sys.executable, __file__, "--serve-shoal-http", str(shp), upstreams],
                                  shp, tmp / f"shoal-http-{w}.log"))  # fmt: skip
        targets: dict[str, tuple[int, list[int]]] = {  # name: (port, pids of the proxy)
            "direct": (ports[0], []),
            "haproxy-tcp": (hp, [haproxy]),
            "shoal-l4": (sp, l4),
            "haproxy-http": (hhp, [haproxy]),
            "shoal-l7": (shp, l7),
        }
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from bench.proxy_kernel import kernel_port

        kernel = stack.enter_context(kernel_port(ports))
        if kernel is not None:
            targets["shoal-kernel"] = (kernel, [])  # no process: the kernel's nat chain
        added: dict[str, float] = {}
        print(f"backends: 3 x {kind}; wrk -t1 -c{a.connections} -d{a.duration}s; {a.rounds} round(s); "
              f"{a.workers} shoal process(es) per port, HAProxy nbthread {a.workers}")  # fmt: skip
        runs: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
        for mode in modes:
            for n in range(a.rounds):
                order = list(targets.items())
                for name, (port, pids) in order if n % 2 == 0 else order[::-1]:
                    cpu0 = sum(map(cpu_seconds, pids)) if pids else float("nan")
                    user0 = sum(map(user_seconds, pids)) if pids else float("nan")
                    rps, p50, p99, total = run_wrk(port, a.duration, a.connections, close=mode == "close")
                    per = 1e6 / max(total, 1)
                    cpu = ((sum(map(cpu_seconds, pids)) if pids else float("nan")) - cpu0) * per
                    user = ((sum(map(user_seconds, pids)) if pids else float("nan")) - user0) * per
                    runs.setdefault((mode, name), []).append((rps, p50, p99, cpu, user))
                    print(f"  {mode:<9} {name:<12} {rps:>10.0f} req/s  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms"
                          f"  proxy CPU {cpu:6.1f} us/req ({user:5.1f} user)")  # fmt: skip
            for name in targets:
                got = runs[(mode, name)]
                results[(mode, name)] = (
                    statistics.median(r[0] for r in got),
                    statistics.median(r[1] for r in got),
                    statistics.median(r[2] for r in got),
                    statistics.median(r[3] for r in got),
                    statistics.median(r[4] for r in got),
                )
        print("paced at 1,000 req/s for 5 s (4 keep-alive connections), latency added to direct:")
        base = paced(targets["direct"][0])
        print(f"  {'direct':<12} p50 {base[0]:6.3f} ms  p99 {base[1]:6.3f} ms")
        for name in [t for t in targets if t != "direct"]:
            p50, p99 = paced(targets[name][0])
            added[name] = p99 - base[1]
            print(f"  {name:<12} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  p99 added {p99 - base[1]:+6.3f} ms")
        calls: list[str] = []
        if a.syscalls:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from bench import proxy_syscalls

            for mode in modes:
                calls.append(f"{mode}: system calls per request (strace -c -f, {a.duration} s of wrk each)")
                for name, (port, pids) in targets.items():
                    if not pids:
                        continue
                    close = mode == "close"
                    total, each = proxy_syscalls.per_request(
                        pids, lambda p=port, c=close: run_wrk(p, a.duration, a.connections, close=c)[3]
                    )
                    calls.append(proxy_syscalls.line(name, total, each))
                    print(calls[-1])
        if a.h2:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from bench import proxy_h2

            h2 = proxy_h2.rows(procs, tmp, a.duration, a.connections, a.rounds)
    print()
    if a.rounds > 1:
        print(f"medians of {a.rounds} rounds:")
    head = f"{'mode':<9} {'target':<12} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}"
    print(f"{head} {'user':>6}")
    for (mode, name), (rps, p50, p99, cpu, user) in results.items():
        print(f"{mode:<9} {name:<12} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f} {cpu:>11.1f} {user:>6.1f}")
    for mode in modes:
        r = {t: results[(mode, t)] for t in ("shoal-l4", "haproxy-tcp", "shoal-l7", "haproxy-http", "direct")}
        s4, h4, s7, h7, d0 = (v[0] for v in r.values())
        cpu7, cpu4 = r["haproxy-http"][3] / r["shoal-l7"][3], r["haproxy-tcp"][3] / r["shoal-l4"][3]
        sys7, sys4 = (
            (r["haproxy-http"][3] - r["haproxy-http"][4]) / (r["shoal-l7"][3] - r["shoal-l7"][4]),
            (r["haproxy-tcp"][3] - r["haproxy-tcp"][4]) / (r["shoal-l4"][3] - r["shoal-l4"][4]),
        )
        print(
            f"{mode}: req/s shoal L7/HAProxy http = {s7 / h7:.2f}x   shoal L4/HAProxy tcp = {s4 / h4:.2f}x   "
            f"shoal L7/direct = {s7 / d0:.2f}x   shoal L4/direct = {s4 / d0:.2f}x\n"
            f"{'':<{len(mode)}}  CPU per request HAProxy/shoal: http {cpu7:.2f}x   tcp {cpu4:.2f}x"
            f"   (system time alone: http {sys7:.2f}x   tcp {sys4:.2f}x)"
        )
        if (mode, "shoal-kernel") in results:
            k = results[(mode, "shoal-kernel")][0]
            print(
                f"{'':<{len(mode)}}  req/s kernel path/HAProxy tcp = {k / h4:.2f}x   "
                f"kernel path/direct = {k / d0:.2f}x"
            )
    for text in calls:
        print(text)
    if a.h2:
        proxy_h2.report(h2)
    for name in ("shoal-l4", "shoal-l7"):
        verdict = "within" if added[name] <= 0.5 else "OVER"
        print(f"p99 added at 1,000 req/s: {name} {added[name]:+.3f} ms ({verdict} the 0.5 ms goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
