"""gRPC (h2c) through shoal's h2c engine against a direct connection, on 127.0.0.1.

    .venv/bin/python bench/proxy_h2.py [--duration 5] [--concurrency 32] [--rounds 1]

(`bench/proxy.py --h2` runs the same rows after its own, in the same run.)

- backends: 3 grpcio asyncio servers, each in its own process, one unary method
  answering 2 bytes (raw bytes, no protobuf);
- targets: one backend directly; shoal's `H2Proxy` (`node.proxy.h2_proxy`, per-stream
  round robin over the 3) in its own process under uvloop; HAProxy (when installed) with
  one thread, `mode http`, h2c on both sides (`proto h2` on the bind and the servers),
  round robin per request (stream) over the same 3: the peer the issue compares with;
- load: a Python client in its own process (grpcio's asyncio API): `concurrency` calls
  in flight at all times on one channel (one HTTP/2 connection, as a gRPC client
  has), for `duration` seconds. ghz is not packaged by Debian, so the client is
  grpcio's own; on 2 cores the client costs about as much CPU as the proxy, so req/s
  is a floor and the CPU the proxy process spends per call (from /proc) is the figure
  to compare.

Printed per target: calls/s, p50 and p99 latency, proxy CPU per call; then shoal/direct
and shoal/HAProxy in calls/s, the CPU per call HAProxy/shoal and the p99 added. Every
process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.proxy import HOST, Procs, cpu_seconds, free_port

METHOD = "/bench.B/Ping"


def serve_backend(port: int) -> None:
    import grpc

    async def ping(req: bytes, ctx: object) -> bytes:
        return b"ok"

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.B", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
        )
        server.add_generic_rpc_handlers([handler])
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def serve_proxy(port: int, backends: list[int]) -> None:
    import signal

    import uvloop

    from node.proxy.balancer import Backend, Balancer
    from node.proxy.h2_proxy import H2Proxy

    async def main() -> None:
        bal = Balancer()
        bal.set_endpoints(Backend(f"b{i}", HOST, p) for i, p in enumerate(backends))
        proxy = H2Proxy(HOST, port, bal, service="bench", drain_timeout=1.0)
        await proxy.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await proxy.close()
        print(f"stats: {proxy.stats}", flush=True)

    uvloop.run(main())


def load(port: int, seconds: float, concurrency: int) -> None:
    """Prints {"calls", "errors", "p50", "p99", "seconds"} as JSON."""
    import grpc

    async def main() -> None:
        latencies: list[float] = []
        errors = 0
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as ch:
            ping = ch.unary_unary(METHOD)
            await ping(b"", timeout=5)  # connected before the clock starts
            start = time.perf_counter()
            end = start + seconds

            async def worker() -> None:
                nonlocal errors
                while (t0 := time.perf_counter()) < end:
                    try:
                        await ping(b"", timeout=5)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            took = time.perf_counter() - start
        latencies.sort()
        n = len(latencies)
        print(json.dumps({
            "calls": n, "errors": errors, "seconds": took,
            "p50": latencies[n // 2] * 1e3 if n else float("nan"),
            "p99": latencies[int(n * 0.99)] * 1e3 if n else float("nan"),
        }))  # fmt: skip

    asyncio.run(main())


def run_load(port: int, seconds: float, concurrency: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--load", str(port), str(seconds), str(concurrency)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def rows(
    procs: Procs, tmp: Path, duration: float, concurrency: int, rounds: int
) -> dict[str, tuple[float, ...]]:
    """Start the backends and the proxy under `procs`; name -> (calls/s, p50, p99, CPU us/call)."""
    ports = [free_port() for _ in range(3)]
    for p in ports:
        procs.start([sys.executable, __file__, "--serve-backend", str(p)], p, tmp / f"grpc-{p}.log")
    sp = free_port()
    shoal = procs.start(
        [sys.executable, __file__, "--serve-proxy", str(sp), ",".join(map(str, ports))],
        sp,
        tmp / "shoal-h2.log",
    )
    targets: dict[str, tuple[int, int | None]] = {"grpc-direct": (ports[0], None), "shoal-h2": (sp, shoal)}
    if shutil.which("haproxy"):
        hp = free_port()
        conf = haproxy_h2_conf(tmp, hp, ports)
        targets["haproxy-h2"] = (
            hp,
            procs.start(["haproxy", "-db", "-f", str(conf)], hp, tmp / "haproxy-h2.log"),
        )
    runs: dict[str, list[tuple[float, ...]]] = {}
    print(f"gRPC unary, 1 channel, {concurrency} calls in flight, {duration:g} s, {rounds} round(s):")
    for n in range(rounds):
        order = list(targets.items())
        for name, (port, pid) in order if n % 2 == 0 else order[::-1]:
            cpu0 = cpu_seconds(pid)
            got = run_load(port, duration, concurrency)
            calls = max(got["calls"], 1)
            cpu = (cpu_seconds(pid) - cpu0) / calls * 1e6
            row = (got["calls"] / got["seconds"], got["p50"], got["p99"], cpu)
            runs.setdefault(name, []).append(row)
            print(f"  {name:<12} {row[0]:>10.0f} calls/s  p50 {row[1]:7.3f} ms  p99 {row[2]:7.3f} ms"
                  f"  proxy CPU {cpu:6.1f} us/call  errors {got['errors']:.0f}")  # fmt: skip
    return {name: tuple(statistics.median(r[i] for r in got) for i in range(4)) for name, got in runs.items()}


def haproxy_h2_conf(tmp: Path, port: int, backends: list[int], threads: int = 1) -> Path:
    """HAProxy as a gRPC (h2c) balancer: HTTP mode, HTTP/2 without TLS on both sides."""
    servers = "\n".join(f"  server s{i} {HOST}:{p} proto h2" for i, p in enumerate(backends))
    conf = tmp / "haproxy-h2.cfg"
    conf.write_text(
        f"global\n  nbthread {threads}\n  maxconn 4096\n"
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n"
        f"frontend fg\n  bind {HOST}:{port} proto h2\n  default_backend bg\n"
        f"backend bg\n  balance roundrobin\n{servers}\n"
    )
    return conf


def report(results: dict[str, tuple[float, ...]]) -> None:
    d, s = results["grpc-direct"], results["shoal-h2"]
    print(
        f"h2c/gRPC: calls/s shoal/direct = {s[0] / d[0]:.2f}x   p99 added {s[2] - d[2]:+.3f} ms   "
        f"shoal CPU {s[3]:.1f} us/call"
    )
    h = results.get("haproxy-h2")
    if h is not None:
        print(
            f"          calls/s shoal/HAProxy = {s[0] / h[0]:.2f}x   CPU per call HAProxy/shoal = "
            f"{h[3] / s[3]:.2f}x   HAProxy p99 added {h[2] - d[2]:+.3f} ms"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-proxy", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--load", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_backend:
        serve_backend(a.serve_backend)
        return 0
    if a.serve_proxy:
        serve_proxy(int(a.serve_proxy[0]), [int(p) for p in a.serve_proxy[1].split(",")])
        return 0
    if a.load:
        load(int(a.load[0]), float(a.load[1]), int(a.load[2]))
        return 0
    procs = Procs()
    try:
        with tempfile.TemporaryDirectory(prefix="shoal-bench-h2-") as d:
            report(rows(procs, Path(d), a.duration, a.concurrency, a.rounds))
    finally:
        procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
