"""How long a `shoal` command takes, next to starting Python and a minimal gRPC call.

    .venv/bin/python bench/cli.py [--runs 15]

One run starts a 1-node `DevCluster` (embedded etcd, a daemon on 127.0.0.1, free ports,
a unique cluster name) with a 1-replica service `web` (shoal-demo/web:1), then times,
alternating so that load on the machine falls on every row alike, `--runs` times each:

- `python -c pass`: the interpreter of the venv, the floor of any command;
- a minimal TLS gRPC call: a fresh `python` that imports grpc and the standard health
  stub and calls `grpc.health.v1.Health/Check` on the node over mutual TLS with the
  admin's certificate (what any gRPC client pays: interpreter, grpc, the handshake);
- `shoal --version`, `shoal service ls`, `shoal service ps web`: the console script,
  credentials from the dev cluster's context file.

It prints the median and p90 of each and the ratios the "house" issue set as goals:
`--version` <= 2.5x `python -c pass`; a listing <= 1.5x the minimal call. Exit status 1
when the cluster cannot be set up (the reason is printed); the ratios are reported, not
asserted. Needs dockerd, etcd and the demo images, as the integration tests do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from node.dev.devcluster import DevCluster, DevError, remove_containers
from node.security import context
from node.wire.client import ShoalClient

VENV_BIN = Path(sys.executable).parent
SPEC = "name: web\nimage: shoal-demo/web:1\nreplicas: 1\nports: [{container: 8080}]\n"
MINIMAL_CALL = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
ca, key, cert = (open(p, "rb").read() for p in sys.argv[2:5])
creds = grpc.ssl_channel_credentials(ca, key, cert)
with grpc.secure_channel(sys.argv[1], creds) as ch:
    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {done.stderr.decode()[-400:]}")
    return took


def wait_running(client: ShoalClient, deadline: float) -> None:
    while time.monotonic() < deadline:
        if any(t.state == "running" for t in client.list_tasks("web")):
            return
        time.sleep(0.2)
    raise DevError("web did not run within the deadline")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="times each command is run (15)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-cli-") as tmp:
        cluster = DevCluster.on_free_ports(Path(tmp) / "dev", nodes=1, name="bench-cli-")
        try:
            cluster.start()
            with ShoalClient(cluster.addr, timeout=10, tls=cluster.tls) as client:
                client.apply(SPEC, source="bench")
                wait_running(client, time.monotonic() + 60)
            creds = context.resolve(env={}, path=cluster.context_file)
            pem = Path(tmp) / "pem"
            pem.mkdir()
            for name in ("ca", "key", "cert"):
                (pem / name).write_text(getattr(creds, name))
                (pem / name).chmod(0o600)
            env = {
                **os.environ,
                "SHOAL_CONTEXT_FILE": str(cluster.context_file),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            env.pop("SHOAL_ADDR", None)
            shoal = str(VENV_BIN / "shoal")
            rows = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "minimal TLS gRPC call": [
                    sys.executable,
                    "-c",
                    MINIMAL_CALL,
                    cluster.addr,
                    *(str(pem / n) for n in ("ca", "key", "cert")),
                ],
                "shoal --version": [shoal, "--version"],
                "shoal service ls": [shoal, "service", "ls"],
                "shoal service ps web": [shoal, "service", "ps", "web"],
            }
            for cmd in rows.values():  # warm the page cache and the byte-code caches
                timed(cmd, env)
            times: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.runs):
                for name, cmd in rows.items():
                    times[name].append(timed(cmd, env))
        except (DevError, RuntimeError) as exc:
            print(f"bench/cli.py: {exc}", file=sys.stderr)
            return 1
        finally:
            cluster.stop()
            remove_containers(cluster.cluster)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each, seconds")
    print(f"{'command':<24} {'median':>8} {'p90':>8}")
    for name, t in times.items():
        p90 = statistics.quantiles(t, n=10)[-1] if len(t) > 1 else t[0]
        print(f"{name:<24} {med[name]:>8.3f} {p90:>8.3f}")
    base, call = med["python -c pass"], med["minimal TLS gRPC call"]
    print()
    for name, floor, floor_name, goal in (
        ("shoal --version", base, "python -c pass", 2.5),
        ("shoal service ls", call, "minimal gRPC call", 1.5),
        ("shoal service ps web", call, "minimal gRPC call", 1.5),
    ):
        print(f"{name:<20} / {floor_name:<18} {med[name] / floor:5.2f}x  (goal <= {goal}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
