"""Request rate, errors and latency per service, from this node's proxy counters.

The mesh counts in `node.proxy.stats.ProxyStats` (monotonic totals per published port).
Every `interval` seconds the dashboard takes a `Totals` per service (its ports summed)
and keeps the last `keep` of them; a chart point is the difference of two neighbours:

    rate    = (requests[i] - requests[i-1]) / (at[i] - at[i-1])        requests/s
    errors  = (errors[i]   - errors[i-1])   / (at[i] - at[i-1])        errors/s
    latency = (sum[i] - sum[i-1]) / (count[i] - count[i-1])            s, mean; 0 if none

A counter that went back (the port was unpublished and published again) counts from
zero: the difference is clamped at 0, never a negative rate. Only this node's proxy is
counted: traffic that entered the mesh on another node is on that node's page.

Pure: no asyncio; the clock and the counters are handed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    errors: int = 0
    latency_count: int = 0
    latency_sum: float = 0.0  # s

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.requests + other.requests,
            self.errors + other.errors,
            self.latency_count + other.latency_count,
            self.latency_sum + other.latency_sum,
        )


class Traffic:
    def __init__(self, read: Callable[[], dict[str, Totals]], clock: Callable[[], float], keep: int = 60):
        self.read = read
        self.clock = clock
        self.samples: deque[tuple[float, dict[str, Totals]]] = deque(maxlen=keep)

    def sample(self) -> None:
        self.samples.append((self.clock(), self.read()))

    def series(self) -> dict[str, list[dict[str, float]]]:
        """Per service, oldest first: `{"at", "rate", "errors", "latency"}` (see the module)."""
        out: dict[str, list[dict[str, float]]] = {}
        pairs = zip(list(self.samples), list(self.samples)[1:], strict=False)
        for (t0, before), (t1, after) in pairs:
            span = t1 - t0
            if span <= 0:
                continue
            for service, now in after.items():
                then = before.get(service, Totals())
                count = max(0, now.latency_count - then.latency_count)
                spent = max(0.0, now.latency_sum - then.latency_sum)
                out.setdefault(service, []).append(
                    {
                        "at": round(t1, 3),
                        "rate": round(max(0, now.requests - then.requests) / span, 3),
                        "errors": round(max(0, now.errors - then.errors) / span, 3),
                        "latency": round(spent / count, 6) if count else 0.0,
                    }
                )
        return out
