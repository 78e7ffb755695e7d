"""The daemon's side: build the dashboard from its parts and keep the traffic samples.

`traffic_of` makes the node's `Traffic` sampler over the mesh's counters, which
`sample_forever` feeds every `SAMPLE_INTERVAL` seconds on every node (a node without a
dashboard still answers `Peer/NodeTraffic` for the others'). `start` binds the listener
(OSError when it cannot: the daemon then refuses to start with `start_problem`, which
names the port for a listener that cannot bind and the file for a TLS identity that
cannot load, `IdentityError`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

from node.api.servicer import ShoalServicer
from node.dashboard.cluster import ClusterTraffic
from node.dashboard.gate import Gate
from node.dashboard.server import Dashboard, Identity, IdentityError
from node.dashboard.traffic import Totals, Traffic
from node.dashboard.views import Views
from node.proxy.routes import Route
from node.proxy.stats import ProxyStats
from node.security.auth import CredentialStore

SAMPLE_INTERVAL = 2.0  # s between two points of a chart
SAMPLES = 60  # points kept per service: two minutes


def totals(stats: Mapping[Route, ProxyStats]) -> dict[str, Totals]:
    """This node's proxy counters summed per service (over its published ports)."""
    out: dict[str, Totals] = {}
    for route, s in list(stats.items()):
        here = Totals(s.requests, s.errors, s.latency.count, s.latency.total)
        out[route.service] = out.get(route.service, Totals()) + here
    return out


def traffic_of(stats: Mapping[Route, ProxyStats]) -> Traffic:
    return Traffic(lambda: totals(stats), time.time, SAMPLES, SAMPLE_INTERVAL)


async def start(
    servicer: ShoalServicer,
    credentials: CredentialStore,
    traffic: ClusterTraffic,
    node: str,
    identity: Path,
    host: str,
    port: int,
) -> asyncio.Server:
    dashboard = Dashboard(Views(servicer, node, traffic.series), Gate(credentials), Identity(identity))
    return await dashboard.serve(host, port)


def start_problem(exc: OSError, host: str, port: int) -> str:
    """Why the dashboard did not start, and what to do: another port for a listener that
    cannot bind; for the TLS identity (the message names the file), the node's files,
    since another port would fail the same way."""
    if isinstance(exc, IdentityError):
        return (
            f"cannot serve the dashboard: {exc}; another port would not help: restore that file "
            "(or remove the node's TLS files and join again), or start without the dashboard "
            "(--dashboard-port 0)"
        )
    return (
        f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}; "
        "choose --dashboard-port (0 turns it off)"
    )


async def sample_forever(traffic: Traffic, interval: float = SAMPLE_INTERVAL) -> None:
    while True:
        traffic.sample()
        await asyncio.sleep(interval)
