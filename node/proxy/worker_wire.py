"""What the daemon and its proxy worker processes say to each other (issue 17, item 6).

One JSON object per line over the worker's Unix socket (`node.proxy.workers` dials it,
`node.proxy.worker` listens). The daemon asks, the worker answers, one at a time:

- on connect the worker says hello: `{"op": "state", ...}` (below);
- `{"op": "table", "settings": {...}, "listeners": [...], "ingress": {...}}`: the whole
  route table, every time (a few hundred bytes per published port): the worker binds
  what is new, retires what is gone, gives every balancer its backends; answers `state`.
  `ingress` (when the node has the shared entrance: decision 80) carries its ports, its
  host and path routes, their replicas, and its TLS certificates with their keys (the
  socket is 0600 in the data directory, which only root reads);
- `{"op": "state"}`: answers `state` (the daemon polls it: liveness and metrics);
- `{"op": "stop"}`: the worker stops listening, drains, exits; answers `state` first.

`state` is `{"op": "state", "pid", "version", "build", "errors": {port: text}, "stats": {port:
{...}}, "routes": n, "held": {service: n}}`: bind errors, the counters of each listener
since the worker started, and the requests it holds now for services scaled to zero
(the table's `cold`: the daemon wakes its load reporter for them, as the in-daemon mesh
does on a hold). Unknown keys are ignored both ways, so a worker of one release serves the
daemon of the next one (the daemon replaces it anyway: `node.proxy.workers`).

No sockets, no asyncio (`BUILD` reads this package's files once, at import).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import node
from node.proxy.balancer import Backend
from node.proxy.ingress_routes import Table, Target
from node.proxy.limits import HttpLimits
from node.proxy.routes import Route
from node.proxy.stats import Histogram, ProxyStats

VERSION = 1
"""Of this protocol; said in every `state`."""


def _build() -> str:
    """A digest of the proxy's code (every `node/proxy/*.py`): a worker of another build
    runs other engines, and a daemon replaces it (`node.proxy.workers`)."""
    digest = hashlib.sha256(node.__version__.encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


BUILD = _build()
MAX_LINE = 64 * 1024 * 1024
"""Bytes of one message at most (a table of thousands of ports and replicas)."""


@dataclass(frozen=True)
class Entry:
    """One listener of the table: `route` on `address`, to `backends`."""

    route: Route
    address: str
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class IngressEntry:
    """The node's shared entrance (decision 80): its ports on `address`, the route
    table, the replicas of each (service, container port) it routes to, and the TLS
    certificates by host (chain and key PEM; `default_pem` for names without a route)."""

    address: str
    http_port: int
    https_port: int
    table: Table
    backends: dict[tuple[str, int], tuple[Backend, ...]]
    pems: dict[str, bytes]
    default_pem: bytes

    @property
    def listening(self) -> tuple[str, int, int]:
        return self.address, self.http_port, self.https_port


def _ingress_json(e: IngressEntry) -> dict[str, Any]:
    return {
        "address": e.address,
        "http_port": e.http_port,
        "https_port": e.https_port,
        "hosts": {
            host: [[path, t.service, t.port, t.redirect, t.sticky] for path, t in paths]
            for host, paths in e.table.hosts.items()
        },
        "backends": [
            [service, port, [list(asdict(b).values()) for b in backends]]
            for (service, port), backends in e.backends.items()
        ],
        "certs": {host: pem.decode("latin-1") for host, pem in e.pems.items()},
        "default_cert": e.default_pem.decode("latin-1"),
    }


def read_ingress(message: dict[str, Any]) -> IngressEntry | None:
    """The table's entrance; None without one (not configured, or an older daemon)."""
    item = message.get("ingress")
    if not isinstance(item, dict):
        return None
    hosts = {
        str(host): tuple(
            (str(path), Target(str(service), int(port), bool(redirect), bool(sticky)))
            for path, service, port, redirect, sticky in paths
        )
        for host, paths in (item.get("hosts") or {}).items()
    }
    backends = {
        (str(service), int(port)): tuple(Backend(str(k), str(a), int(p), str(n)) for k, a, p, n in found)
        for service, port, found in item.get("backends") or []
    }
    return IngressEntry(
        str(item["address"]),
        int(item.get("http_port") or 0),
        int(item.get("https_port") or 0),
        Table(hosts),
        backends,
        {str(h): str(pem).encode("latin-1") for h, pem in (item.get("certs") or {}).items()},
        str(item.get("default_cert") or "").encode("latin-1"),
    )


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError(f"not a message of the worker protocol: {line[:200]!r}")
    return message


def table(
    settings: Any,
    entries: list[Entry],
    cold: dict[str, float] | None = None,
    ingress: IngressEntry | None = None,
) -> dict[str, Any]:
    """The `table` message; `settings` is a `MeshSettings` (a dataclass of plain values);
    `cold`: the services whose requests are held while they have no replica, and for how
    long (`node.proxy.coldstart`: `autoscale.min: 0`); `ingress`: the node's entrance."""
    return {
        "op": "table",
        **({"ingress": _ingress_json(ingress)} if ingress is not None else {}),
        "settings": asdict(settings),
        "cold": dict(cold or {}),
        "listeners": [
            {
                **asdict(e.route),
                "address": e.address,
                "backends": [list(asdict(b).values()) for b in e.backends],
            }
            for e in entries
        ],
    }


def read_entries(message: dict[str, Any]) -> list[Entry]:
    names = {f.name for f in fields(Route)}
    out = []
    for item in message.get("listeners") or []:
        route = Route(**{k: v for k, v in item.items() if k in names})
        backends = tuple(Backend(str(k), str(a), int(p), str(n)) for k, a, p, n in item.get("backends") or [])
        out.append(Entry(route, str(item["address"]), backends))
    return out


def read_cold(message: dict[str, Any]) -> dict[str, float]:
    """The table's `cold` (service -> seconds a request is held); none from an older daemon."""
    cold = message.get("cold")
    if not isinstance(cold, dict):
        return {}
    return {str(k): float(v) for k, v in cold.items() if isinstance(v, int | float) and v > 0}


def held(state: dict[str, Any]) -> list[str]:
    """The services a worker's `state` holds requests for now (none from an older worker)."""
    found = state.get("held")
    return (
        sorted(str(k) for k, v in found.items() if isinstance(v, int) and v > 0)
        if isinstance(found, dict)
        else []
    )


def read_settings(message: dict[str, Any], cls: type[Any]) -> Any:
    """`cls` (a `MeshSettings`) from the table's settings; unknown keys ignored."""
    data = dict(message.get("settings") or {})
    names = {f.name for f in fields(cls)}
    limit_names = {f.name for f in fields(HttpLimits)}
    if isinstance(data.get("limits"), dict):
        data["limits"] = HttpLimits(**{k: v for k, v in data["limits"].items() if k in limit_names})
    return cls(**{k: v for k, v in data.items() if k in names})


def stats_to_json(s: ProxyStats) -> dict[str, Any]:
    out = {f.name: getattr(s, f.name) for f in fields(ProxyStats) if f.name != "latency"}
    out["latency"] = {"counts": list(s.latency.counts), "total": s.latency.total}
    return out


def add_stats(into: ProxyStats, data: dict[str, Any]) -> None:
    """Add one worker's counters (`stats_to_json`) to `into`."""
    for f in fields(ProxyStats):
        if f.name != "latency" and isinstance(data.get(f.name), int):
            setattr(into, f.name, getattr(into, f.name) + data[f.name])
    latency = data.get("latency") or {}
    counts = latency.get("counts") or []
    if len(counts) == len(into.latency.counts):
        into.latency.counts = [a + int(b) for a, b in zip(into.latency.counts, counts, strict=True)]
        into.latency.total += float(latency.get("total") or 0.0)


def merged(states: list[dict[str, Any]], routes: dict[int, Route]) -> dict[Route, ProxyStats]:
    """The counters of every worker added up, per route of `routes` (published -> route)."""
    out: dict[Route, ProxyStats] = {}
    for state in states:
        for port, data in (state.get("stats") or {}).items():
            route = routes.get(int(port))
            if route is not None and isinstance(data, dict):
                add_stats(out.setdefault(route, ProxyStats(latency=Histogram())), data)
    return out


UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its NUL


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A name to bind or connect the unix socket `path` by, however deep its directory.

    A socket's path must fit 108 bytes; a data dir deep enough (a test's temporary
    directory) makes `<data_dir>/proxy/worker-0.sock` longer, and the worker could not
    listen ("AF_UNIX path too long": a CI run's daemon died on it). Past the limit the
    directory is opened and the socket named through `/proc/self/fd/<fd>/`, which the
    kernel resolves like the full path (same file, same permissions); the descriptor is
    closed when the block ends (after the bind or the connect)."""
    full = str(path)
    if len(full.encode()) <= UNIX_PATH_MAX:
        yield full
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
