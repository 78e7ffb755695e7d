"""The daemon's `/metrics` (Prometheus text format): the proxy's counters per service port.

The engines count in plain `ProxyStats` on the event loop; this collector reads them
when Prometheus scrapes (from prometheus-client's HTTP thread). It copies each dict
and list before walking it, which is atomic under the GIL, so a scrape never blocks
or slows the request path.

Series (labels `service`, `port`, `protocol`):
- `shoal_proxy_requests_total`: HTTP requests (http ports) or connections (tcp ports);
- `shoal_proxy_errors_total`, `shoal_proxy_retries_total`, `shoal_proxy_no_backend_total`,
  `shoal_proxy_ejections_total`, `shoal_proxy_refused_total`, `shoal_proxy_rejected_total`,
  `shoal_proxy_timeouts_total` (node.proxy.limits);
- `shoal_proxy_active_connections`: client connections open now;
- `shoal_proxy_latency_seconds`: histogram; request to response headers (http), accept
  to backend connected (tcp);
- `shoal_proxy_backends`: replicas in the rotation now (ejected ones included);
- `shoal_proxy_bind_errors`: 1 for a published port this node could not bind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from node.proxy.mesh import Mesh

log = logging.getLogger(__name__)

_LABELS = ["service", "port", "protocol"]
_COUNTERS = (
    ("requests", "HTTP requests (http ports) or connections (tcp ports) received by the proxy"),
    ("errors", "requests answered with an error by the proxy, or connections it closed on failure"),
    ("retries", "attempts on another replica after a failed one"),
    ("no_backend", "requests or connections refused because no replica was left to try"),
    ("ejections", "replicas ejected from the rotation after consecutive failures"),
    ("refused", "client connections closed at once: the node's proxy connection cap was reached"),
    ("rejected", "requests refused for a head over a limit (414 URL too long, 431 head too large)"),
    ("timeouts", "client connections closed for being too slow (408) or idle too long (tcp)"),
)


class MeshCollector(Collector):
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    def collect(self) -> Iterator[Any]:
        stats = list(self.mesh.stats.items())
        listeners = dict(self.mesh.listeners)
        counters = {
            name: CounterMetricFamily(f"shoal_proxy_{name}", help_, labels=_LABELS)
            for name, help_ in _COUNTERS
        }
        active = GaugeMetricFamily(
            "shoal_proxy_active_connections", "client connections open now", labels=_LABELS
        )
        latency = HistogramMetricFamily(
            "shoal_proxy_latency_seconds",
            "request to response headers (http), accept to backend connected (tcp)",
            labels=_LABELS,
        )
        backends = GaugeMetricFamily("shoal_proxy_backends", "replicas in the rotation now", labels=_LABELS)
        for route, s in stats:
            labels = [route.service, str(route.published), route.protocol]
            for name, _ in _COUNTERS:
                counters[name].add_metric(labels, getattr(s, name))
            active.add_metric(labels, s.active)
            buckets = [(_le(bound), float(n)) for bound, n in s.latency.cumulative()]
            latency.add_metric(labels, buckets, s.latency.total)
            listener = listeners.get(route.published)
            if listener is not None and listener.route == route:
                backends.add_metric(labels, len(listener.balancer))
        bind_errors = GaugeMetricFamily(
            "shoal_proxy_bind_errors", "published ports this node could not bind", labels=_LABELS
        )
        for port, (route, _) in list(self.mesh.bind_errors.items()):
            bind_errors.add_metric([route.service, str(port), route.protocol], 1)
        yield from counters.values()
        yield from (active, latency, backends, bind_errors)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def serve(mesh: Mesh, address: str, port: int) -> Any:
    """Serve `/metrics` on `address:port` from a daemon thread; returns the server
    (call `.shutdown()` to stop). Raises OSError when the port cannot be bound."""
    registry = CollectorRegistry()
    registry.register(MeshCollector(mesh))
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
