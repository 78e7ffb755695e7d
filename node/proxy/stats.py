"""Counters of one proxy listener, cheap enough for the hot path.

Plain attributes and a fixed-bucket histogram (a `bisect` and two increments per
observation, no lock: every engine runs on one event loop thread). `node.proxy.metrics`
reads them at scrape time and exports them in the Prometheus text format, so the
request path never touches prometheus-client.

What the fields count depends on the engine:
- `requests`: HTTP requests received (L7), HTTP/2 streams opened (h2c: `grpc`, `http2`
  ports) or connections accepted (L4);
- `active`: client connections open now;
- `errors`: requests answered with an error by the proxy itself (502, 503, 504) or
  connections closed for want of a backend or by a socket error;
- `retries`: attempts on another backend after a failed one;
- `no_backend`: requests or connections refused because no replica was left to try;
- `ejections`: replicas ejected by the outlier detection;
- `refused`: client connections closed at once because the node's connection cap
  (`node.proxy.limits.ConnectionCap`) was reached;
- `rejected`: requests refused for a limit of their head (414, 431);
- `timeouts`: client connections closed for being too slow (408 for a head or a body,
  L7) or idle too long (L4);
- `upgrades`: requests answered 101 by a replica, their connections made tunnels (L7);
- `tunnels`: tunnels open now (L7; `node.proxy.http_tunnel`);
- `latency`: seconds from a request's arrival to the backend's response headers (L7),
  or from accept to the backend connection being made (L4).

Pure: no sockets, no asyncio.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the latency buckets; +Inf is implied."""


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative; the exporter adds them up) and the sum."""

    bounds: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, count of observations <= it) for every bucket, +Inf last."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(slots=True)
class ProxyStats:
    requests: int = 0
    active: int = 0
    errors: int = 0
    retries: int = 0
    no_backend: int = 0
    ejections: int = 0
    refused: int = 0
    rejected: int = 0
    timeouts: int = 0
    upgrades: int = 0
    tunnels: int = 0
    latency: Histogram = field(default_factory=Histogram)

    @property
    def connections(self) -> int:
        """L4 name for `requests`: connections accepted."""
        return self.requests
