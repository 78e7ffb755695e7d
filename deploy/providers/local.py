#!/usr/bin/env python3
"""The `local` node-pool provider (issue 15): each node is one more `shoald` on this machine.

For `shoal dev` and the tests. The leader runs it with one JSON request on stdin
(`leader.provider`) and reads one JSON answer on stdout:

    create: starts `python -m node.daemon` on the first free 127.0.0.x (from --first) on the
            leader's gRPC port, with the node id, cpu, memory and labels asked for, the
            cluster's VIP range and the leader's etcd client files (all from the request),
            and --leave-on-stop (stopped, it leaves for good: no restart mark),
            joining with the join token from the request (in its environment, never on a
            command line); answers {"id": "<pid>", "address": "127.0.0.x:port"} once the
            daemon listens. Idempotent: a node id already running answers the same.
    delete: stops that daemon (SIGTERM, then SIGKILL after --stop-timeout), removes its
            data dir; a node id it does not know is already gone: success.

Pool file for a `shoal dev` cluster:

    pools:
      burst:
        provider: {command: [python3, deploy/providers/local.py, --state, /tmp/shoal-pool]}
        max: 3
        node: {cpu: 2, memory: 4Gi}
        idle_timeout: 2m

Everything after `--` goes to every shoald it starts, after the flags above (so it may
override them: `-- --preset lan`). `local.py --state DIR --stop-all` stops every daemon
it started.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NODE_ID_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class Refused(Exception):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _listening(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
        return True
    return False


def _free(address: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _record(state: Path, node: str) -> dict[str, Any] | None:
    try:
        return json.loads((state / node / "node.json").read_text())
    except (OSError, ValueError):
        return None


def _records(state: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for d in sorted(state.iterdir()) if state.is_dir() else []:
        r = _record(state, d.name)
        if r is not None:
            out[d.name] = r
    return out


def _address(state: Path, first: int, port: int) -> str:
    taken = {r["address"] for r in _records(state).values() if _alive(int(r["pid"]))}
    for x in range(first, 255):
        address = f"127.0.0.{x}"
        if address not in taken and _free(address, port):
            return address
    raise Refused(f"no free address in 127.0.0.{first}-254 on port {port}")


def create(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    node, cluster = request["node"], request["cluster"]
    node_id = str(node["id"])
    if not node_id or set(node_id) - NODE_ID_OK:
        raise Refused(f"node id {node_id!r} is not a-z, 0-9 and '-'")
    known = _record(args.state, node_id)
    if known is not None and _alive(int(known["pid"])):
        return {"id": str(known["pid"]), "address": f"{known['address']}:{known['port']}"}
    port = args.grpc_port or int(cluster.get("grpc_port") or 7070)
    address = _address(args.state, args.first, port)
    home = args.state / node_id
    shutil.rmtree(home / "data", ignore_errors=True)  # a dead earlier attempt: start afresh
    home.mkdir(parents=True, exist_ok=True)
    record = {"address": address, "port": port, "node": node_id}
    return start_shoald(args, request, node_id, address, port, [], record)


def start_shoald(
    args: argparse.Namespace,
    request: dict[str, Any],
    node_id: str,
    address: str,
    port: int,
    prefix: list[str],
    record: dict[str, Any],
) -> dict[str, Any]:
    """Start the node's shoald (behind `prefix`, e.g. `ip netns exec NS`), record its pid in
    `record` (node.json), and answer once it listens (or `--start-timeout` passed)."""
    node, cluster = request["node"], request["cluster"]
    home = args.state / node_id
    cmd = [
        *prefix, sys.executable, "-m", "node.daemon", "--node-id", node_id, "--data-dir", str(home / "data"),
        "--address", address, "--grpc-port", str(port), "--metrics-port", "0",
        "--cluster", str(cluster["name"]), "--etcd", ",".join(cluster["etcd"]),
        "--etcd-prefix", str(cluster["etcd_prefix"]), "--preset", "local", "--leave-on-stop",
        "--cpu", f"{float(node['cpu']):g}", "--memory", str(int(node["memory"])),
    ]  # fmt: skip
    if cluster.get("vip_range"):
        cmd += ["--vip-range", str(cluster["vip_range"])]
    tls = dict(cluster.get("etcd_tls") or {})
    if tls.get("ca"):
        cmd += ["--etcd-ca", str(tls["ca"])]
    if tls.get("cert") and tls.get("key"):
        cmd += ["--etcd-cert", str(tls["cert"]), "--etcd-key", str(tls["key"])]
    for key, value in sorted(dict(node.get("labels", {})).items()):
        cmd += ["--label", f"{key}={value}"]
    cmd += args.shoald
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["SHOAL_JOIN_TOKEN"] = str(cluster["join_token"])
    log = (home / "shoald.log").open("ab")
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    record = {**record, "pid": proc.pid}
    (home / "node.json").write_text(json.dumps(record))
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (home / "shoald.log").read_text(errors="replace")[-600:]
            raise Refused(f"shoald {node_id} exited with status {proc.returncode}: {tail}")
        if _listening(address, port):
            return {"id": str(proc.pid), "address": f"{address}:{port}"}
        time.sleep(0.2)
    return {"id": str(proc.pid), "address": f"{address}:{port}"}  # started; joins later


def _stop(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def delete(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    node_id = str(request["node"]["id"])
    if not node_id or set(node_id) - NODE_ID_OK:
        raise Refused(f"node id {node_id!r} is not a-z, 0-9 and '-'")
    known = _record(args.state, node_id)
    if known is not None:
        _stop(int(known["pid"]), args.stop_timeout)
    shutil.rmtree(args.state / node_id, ignore_errors=True)
    return {}


def split_shoald(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the provider's own arguments, the extra shoald arguments after `--`)."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


Action = Callable[[argparse.Namespace, dict[str, Any]], dict[str, Any]]


def serve(
    args: argparse.Namespace,
    name: str,
    create: Action,
    delete: Action,
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """The provider protocol (leader.provider), for this provider and netns.py: one call at
    a time under the state directory's lock; `--stop-all`, or one JSON request on stdin
    answered with JSON on stdout; a failure is one line on stderr and exit status 1."""
    caught: tuple[type[Exception], ...] = (Refused, KeyError, ValueError, OSError, *errors)
    args.state.mkdir(parents=True, exist_ok=True)
    with (args.state / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one call at a time: addresses are never given twice
        try:
            if args.stop_all:
                for node_id in _records(args.state):
                    delete(args, {"node": {"id": node_id}})
                return 0
            request = json.loads(sys.stdin.read())
            action = request.get("action")
            if action == "create":
                answer = create(args, request)
            elif action == "delete":
                answer = delete(args, request)
            else:
                raise Refused(f"action {action!r} is not create or delete")
        except caught as exc:
            print(f"{name} provider: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(answer))
    return 0


def main(argv: list[str]) -> int:
    argv, shoald = split_shoald(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state", type=Path, required=True, help="where the nodes' data dirs and logs go")
    p.add_argument("--grpc-port", type=int, default=0, help="the nodes' gRPC port [the leader's]")
    p.add_argument("--first", type=int, default=50, help="first x of 127.0.0.x to try [50]")
    p.add_argument("--start-timeout", type=float, default=30.0, help="s to wait for shoald to listen")
    p.add_argument("--stop-timeout", type=float, default=15.0, help="s from SIGTERM to SIGKILL")
    p.add_argument("--stop-all", action="store_true", help="stop every daemon started here, and exit")
    args = p.parse_args(argv)
    args.shoald = shoald
    return serve(args, "local", create, delete)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
