#!/usr/bin/env python3
"""The `netns` node-pool provider (issue 15): each node is a network-namespace host on a bridge.

Like `local.py` (whose pieces it reuses), but each node has a network stack of its own,
as a real host does: a namespace `sp-<node id>` linked to an existing bridge (the one
`deploy/netns/hosts.sh up` or the tests' `HostNet` made: `--bridge shb-<id>`) by a veth
pair, an address of the bridge's /24 from `.<--first>` (100) up, a default route via the
bridge's address, and `shoald` started inside it (`nsenter --net`) on the leader's gRPC
port with the node id, cpu, memory and labels asked for, the cluster's VIP range and the
leader's etcd client files, `--leave-on-stop`, and `--publish-address <the bridge's
address>` (the machine's one Docker engine publishes there, as hosts.sh's nodes do). Runs
as root (it makes namespaces and links).

    create: records the node (namespace, link, address) in `--state` BEFORE making anything,
            then makes what is missing and starts shoald; answers {"id": "<pid>",
            "address": "<ip>:<port>"} once it listens. Idempotent: a node id running
            answers the same; a node id half made (a provider killed midway) is torn
            down and made again.
    delete: stops that shoald (SIGTERM, then SIGKILL after --stop-timeout), deletes its
            namespace and link and its data; a node id it does not know is gone: success.

A leader that runs in a network namespace of its own runs the provider in the machine's
(where the bridge is): `nsenter --net=/proc/<pid>/ns/net python3 netns.py ...`, plus
`--mount=/proc/<pid>/ns/mnt` if the leader has a mount namespace of its own too (`ip
netns exec`), or a namespace it makes is named only there (docs/pools.md).

Everything after `--` goes to every shoald it starts. `netns.py --state DIR --bridge B
--stop-all` removes every node it made.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import local  # deploy/providers/local.py, next to this file (a script's directory is on sys.path)

Refused = local.Refused


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise Refused(f"ip {' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def _bridge(name: str) -> ipaddress.IPv4Interface:
    out = _ip("-4", "-o", "addr", "show", "dev", name, check=False)
    for word in out.stdout.split():
        if "/" in word and word[:1].isdigit():
            return ipaddress.IPv4Interface(word)
    raise Refused(f"bridge {name!r} has no IPv4 address (is it up? deploy/netns/hosts.sh up)")


def _names(node_id: str) -> tuple[str, str, str]:
    """Namespace, host end and inner end of the link: link names are at most 15 characters."""
    h = hashlib.sha256(node_id.encode()).hexdigest()[:10]
    return f"sp-{node_id}", f"spv{h}", f"spp{h}"


def _address(args: argparse.Namespace, bridge: ipaddress.IPv4Interface) -> str:
    taken = {r.get("address") for r in local._records(args.state).values()}
    for host in range(args.first, bridge.network.num_addresses - 1):
        address = str(bridge.network.network_address + host)
        if address not in taken and address != str(bridge.ip):
            return address
    raise Refused(f"no free address in {bridge.network} from .{args.first}")


def _teardown(record: dict[str, Any], stop_timeout: float) -> None:
    if int(record.get("pid", 0)) > 0:
        local._stop(int(record["pid"]), stop_timeout)
    netns, veth = str(record["netns"]), str(record["veth"])
    for pid in _ip("netns", "pids", netns, check=False).stdout.split():  # anything left inside
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    if _ip("netns", "list", check=False).stdout.split().count(netns):
        _ip("netns", "del", netns)
    if _ip("link", "show", veth, check=False).returncode == 0:
        _ip("link", "del", veth)


def create(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    node, cluster = request["node"], request["cluster"]
    node_id = str(node["id"])
    if not node_id or set(node_id) - local.NODE_ID_OK or len(node_id) > 60:
        raise Refused(f"node id {node_id!r} is not 1-60 of a-z, 0-9 and '-'")
    port = args.grpc_port or int(cluster.get("grpc_port") or 7070)
    known = local._record(args.state, node_id)
    if known is not None and int(known.get("pid", 0)) > 0 and local._alive(int(known["pid"])):
        return {"id": str(known["pid"]), "address": f"{known['address']}:{known['port']}"}
    if known is not None:
        _teardown(known, args.stop_timeout)  # half made by a call that died: afresh
    bridge = _bridge(args.bridge)
    netns, veth, inner = _names(node_id)
    home = args.state / node_id
    shutil.rmtree(home / "data", ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    address = _address(args, bridge) if known is None else str(known["address"])
    record = {"pid": 0, "address": address, "port": port, "node": node_id, "netns": netns, "veth": veth}
    (home / "node.json").write_text(json.dumps(record))  # before anything is made: delete finds it
    _ip("netns", "add", netns)
    _ip("link", "add", veth, "type", "veth", "peer", "name", inner, "netns", netns)
    _ip("link", "set", veth, "master", args.bridge, "up")
    _ip("-n", netns, "link", "set", "lo", "up")
    _ip("-n", netns, "addr", "add", f"{address}/{bridge.network.prefixlen}", "dev", inner)
    _ip("-n", netns, "link", "set", inner, "up")
    _ip("-n", netns, "route", "add", "default", "via", str(bridge.ip))
    args.shoald = ["--publish-address", str(bridge.ip), *args.shoald_extra]
    # nsenter --net, not `ip netns exec`: its copy of the mount namespace, kept by a long-lived
    # daemon, would pin every mount of the moment (as tests/integration/netns.py says)
    inside = ["nsenter", f"--net=/var/run/netns/{netns}"]
    return local.start_shoald(args, request, node_id, address, port, inside, record)


def delete(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    node_id = str(request["node"]["id"])
    if not node_id or set(node_id) - local.NODE_ID_OK:
        raise Refused(f"node id {node_id!r} is not a-z, 0-9 and '-'")
    known = local._record(args.state, node_id)
    if known is not None:
        _teardown(known, args.stop_timeout)
    shutil.rmtree(args.state / node_id, ignore_errors=True)
    return {}


def main(argv: list[str]) -> int:
    argv, shoald = local.split_shoald(argv)
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--state", type=Path, required=True, help="where the nodes' records, data dirs and logs go"
    )
    p.add_argument("--bridge", required=True, help="the bridge the namespaces are linked to (shb-<id>)")
    p.add_argument("--grpc-port", type=int, default=0, help="the nodes' gRPC port [the leader's]")
    p.add_argument("--first", type=int, default=100, help="first host number of the bridge's /24 [100]")
    p.add_argument("--start-timeout", type=float, default=30.0, help="s to wait for shoald to listen")
    p.add_argument("--stop-timeout", type=float, default=15.0, help="s from SIGTERM to SIGKILL")
    p.add_argument("--stop-all", action="store_true", help="remove every node made here, and exit")
    args = p.parse_args(argv)
    args.shoald_extra = shoald
    return local.serve(args, "netns", create, delete, (subprocess.TimeoutExpired,))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
