"""The daemon's `/metrics` (Prometheus text format): the proxy's counters per service port.

The engines count in plain `ProxyStats` on the event loop; this collector reads them
when Prometheus scrapes (from prometheus-client's HTTP thread). It copies each dict
and list before walking it, which is atomic under the GIL, so a scrape never blocks
or slows the request path.

Series (labels `service`, `port`, `protocol`):
- `shoal_proxy_requests_total`: HTTP requests (http ports) or connections (tcp ports);
- `shoal_proxy_errors_total`, `shoal_proxy_retries_total`, `shoal_proxy_no_backend_total`,
  `shoal_proxy_ejections_total`, `shoal_proxy_refused_total`, `shoal_proxy_rejected_total`,
  `shoal_proxy_timeouts_total` (node.proxy.limits), `shoal_proxy_upgrades_total` (101s
  passed, each a tunnel: node.proxy.http_tunnel);
- `shoal_proxy_tunnels`: upgraded connections (WebSocket and the like) open now;
- `shoal_proxy_active_connections`: client connections open now;
- `shoal_proxy_latency_seconds`: histogram; request to response headers (http), accept
  to backend connected (tcp);
- `shoal_proxy_backends`: replicas in the rotation now (ejected ones included; with proxy
  workers, the replicas the daemon sent them);
- `shoal_proxy_counters_age_seconds`: how old the counters of this scrape are: 0 when
  read at the scrape (the daemon's own, or every proxy worker answered within 0.5 s),
  else the age of the oldest worker state served instead (decision 76);
- `shoal_proxy_bind_errors`: 1 for a published port this node could not bind;
- `shoal_proxy_kernel_backends`: this node's replicas in the nftables rule of a
  `fast_path: kernel` port (decision 75); no series while the userland mesh serves it.
- `shoal_proxy_kernel_connections_total`: new connections those rules DNATed, read from
  the table's named counters (one `nft -j list counters` per 2 s at most, in the
  scrape's thread); reset only when the table is removed (no port left, a fallback).
- `shoal_vip_kernel_up`, `shoal_vip_kernel_rules`, `shoal_vip_kernel_failures_total`: the
  kernel path of service VIPs (decision 74, node.proxy.vipkernel).
The node's shared entrance (node.proxy.ingress) is counted as service `ingress`, its
port, protocol `http` or `https`.

The listener serves `GET /metrics` and the daemon's JSON pages (`/sd`) only (404
elsewhere). With `token`, a request needs `Authorization: Bearer <token>` (401 otherwise; compared in constant
time); with `identity` (the node's key and certificate, PEM), it speaks TLS with that
certificate, re-read when the file changes, so a renewed certificate is served
without a restart. The TLS handshake runs in the request's thread, never the accept loop.
"""

from __future__ import annotations

import hmac
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler
from prometheus_client.registry import Collector

from node.proxy.mesh import Mesh
from node.proxy.routes import Route
from node.proxy.stats import ProxyStats
from node.proxy.vipkernel import VipKernel

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
    ("upgrades", "requests a replica answered 101 Switching Protocols: each became a tunnel"),
)


class MeshCollector(Collector):
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    def collect(self) -> Iterator[Any]:
        age = GaugeMetricFamily(
            "shoal_proxy_counters_age_seconds",
            "age of the proxy counters in this scrape (0: read at the scrape; else a worker's last state)",
        )
        age.add_metric([], self.mesh.read_counters())
        stats: list[tuple[Route, ProxyStats]] = list(self.mesh.stats.items())
        rotations = self.mesh.backend_counts()
        stats += self.mesh.ingress_counters()  # issue 17: the entrance, as service "ingress"
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
        tunnels = GaugeMetricFamily(
            "shoal_proxy_tunnels", "upgraded connections (WebSocket...) open now", labels=_LABELS
        )
        backends = GaugeMetricFamily("shoal_proxy_backends", "replicas in the rotation now", labels=_LABELS)
        for route, s in stats:
            labels = [route.service, str(route.published), route.protocol]
            for name, _ in _COUNTERS:
                counters[name].add_metric(labels, getattr(s, name))
            active.add_metric(labels, s.active)
            tunnels.add_metric(labels, s.tunnels)
            buckets = [(_le(bound), float(n)) for bound, n in s.latency.cumulative()]
            latency.add_metric(labels, buckets, s.latency.total)
            if route in rotations:
                backends.add_metric(labels, rotations[route])
        bind_errors = GaugeMetricFamily(
            "shoal_proxy_bind_errors", "published ports this node could not bind", labels=_LABELS
        )
        for port, (route, _) in list(self.mesh.bind_errors.items()):
            bind_errors.add_metric([route.service, str(port), route.protocol], 1)
        kernel = GaugeMetricFamily(
            "shoal_proxy_kernel_backends",
            "replicas of this node in a fast_path: kernel port's nftables rule (no series: userland)",
            labels=_LABELS,
        )
        connections = CounterMetricFamily(
            "shoal_proxy_kernel_connections",
            "new connections a fast_path: kernel port's nftables rules DNATed to this node's replicas",
            labels=_LABELS,
        )
        served = list(getattr(self.mesh, "kernel_served", []))
        path = getattr(self.mesh, "kernel", None)
        counted = path.counts() if served and path is not None else {}
        for port in served:
            labels = [port.service, str(port.published), "tcp"]
            kernel.add_metric(labels, len(port.targets))
            if port.published in counted:  # unread (nft failed): no series rather than a false reset
                connections.add_metric(labels, counted[port.published])
        yield from counters.values()
        yield from (active, tunnels, latency, backends, bind_errors, kernel, connections, age)
        yield from _vip_kernel(getattr(self.mesh, "vip_kernel", None))


def _vip_kernel(kernel: VipKernel | None) -> Iterator[Any]:
    """Decision 74: is the kernel path on, how many VIP ports it holds, how often nft failed."""
    if kernel is None:
        return
    up = GaugeMetricFamily("shoal_vip_kernel_up", "1: VIPs of local replicas are DNATed by nftables")
    up.add_metric([], 1 if kernel.up else 0)
    rules = GaugeMetricFamily("shoal_vip_kernel_rules", "VIP ports DNATed in the kernel now")
    rules.add_metric([], len(kernel.rules))
    failures = CounterMetricFamily("shoal_vip_kernel_failures", "nft runs that failed after retries")
    failures.add_metric([], kernel.failures)
    yield from (up, rules, failures)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


PATH = "/metrics"


def guarded(
    app: Callable[..., Iterable[bytes]],
    token: str = "",
    pages: Mapping[str, Callable[[], bytes]] | None = None,
) -> Callable[..., Iterable[bytes]]:
    """The WSGI app answering `/metrics` (and the JSON `pages`: path -> body) only, and
    only with the bearer token when one is set."""
    expected = f"Bearer {token}".encode()
    pages = dict(pages or {})

    def serve_metrics(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != PATH and path not in pages:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: metrics are served at /metrics only\n"]
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if token and not hmac.compare_digest(given, expected):
            start_response(
                "401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")]
            )
            return [b"unauthorized: send Authorization: Bearer <metrics token>\n"]
        if path in pages:
            body = pages[path]()
            start_response(
                "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        return app(environ, start_response)

    return serve_metrics


class _Identity:
    """A server TLS context from the node's identity file, rebuilt when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._context: ssl.SSLContext | None = None
        self.context()  # fail at start (OSError, ssl.SSLError) when it cannot be read

    def context(self) -> ssl.SSLContext:
        with self._lock:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if self._context is None or stamp != self._stamp:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_cert_chain(self.path)
                self._context, self._stamp = context, stamp
            return self._context


class _Server(ThreadingWSGIServer):
    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the address's name (socket.getfqdn) only to
        # fill SERVER_NAME, which nothing here reads. Where no resolver answers (a host
        # whose DNS is down or unreachable) that took 10 s, on the event loop, at every
        # start: the node's first lease expired before its keepalive ran. Take the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: request from %s failed", client_address, exc_info=True)  # scanners, bad TLS


class _TlsServer(_Server):
    identity: _Identity

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        try:
            wrapped = self.identity.context().wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ssl.SSLError):
            sock.close()
            raise
        return wrapped, addr


class _Handler(_SilentHandler):
    timeout = 10.0  # s: a client that stalls (in the handshake or the request) is dropped

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()


def serve(
    mesh: Mesh,
    address: str,
    port: int,
    identity: Path | None = None,
    token: str = "",
    collectors: Iterable[Collector] = (),
    pages: Mapping[str, Callable[[], bytes]] | None = None,
) -> Any:
    """Serve `/metrics` on `address:port` from a daemon thread; returns the server
    (call `.shutdown()` to stop). Raises OSError when the port cannot be bound (or the
    identity file read). `identity`: TLS with the node's certificate; `token`: bearer token;
    `collectors`: the daemon's own series (`node.daemon.collectors`), in the same registry;
    `pages`: more JSON paths on the same listener (Prometheus service discovery)."""
    registry = CollectorRegistry()
    registry.register(MeshCollector(mesh))
    for collector in collectors:
        registry.register(collector)
    family, address = _get_best_family(address, port)
    attrs: dict[str, Any] = {"address_family": family}
    base: type[ThreadingWSGIServer] = _Server
    if identity is not None:
        attrs["identity"], base = _Identity(identity), _TlsServer
    server_class = type("MetricsServer", (base,), attrs)
    app = guarded(make_wsgi_app(registry), token, pages)
    server: Any = make_server(address, port, app, server_class, handler_class=_Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server
