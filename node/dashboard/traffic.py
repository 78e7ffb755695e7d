"""Request rate, errors and latency per service, from the proxies' counters of every node.

The mesh counts in `node.proxy.stats.ProxyStats` (monotonic totals per published port).
Every `interval` seconds each node takes a `Totals` per service (its ports summed) and
keeps the last `keep` of them. Two neighbours make a `Delta`: what that node's proxy
counted between them (a counter that went back, the port unpublished and published
again, counts from zero: the difference is clamped at 0, never negative).

A chart is the cluster's: the deltas of every node (its own, and the peers' through
`Peer/NodeTraffic`) put in buckets of `interval` seconds by the time they end, and per
bucket

    rate    = sum over nodes of requests / span        requests/s
    errors  = sum over nodes of errors / span          errors/s
    latency = sum of latency sums / sum of counts      s, mean; 0 if none

(a node with two deltas in one bucket, its sampler late once, counts as their sums over
their summed spans). Nodes' clocks are taken as agreeing within a bucket (NTP). A delta
whose `at`, `span` or latency sum is not finite (a peer's answer) is skipped.

Pure: no asyncio; the clock and the counters are handed in.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
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

    def since(self, then: Totals) -> Totals:
        """What was counted from `then` to this one (each counter clamped at 0)."""
        return Totals(
            max(0, self.requests - then.requests),
            max(0, self.errors - then.errors),
            max(0, self.latency_count - then.latency_count),
            max(0.0, self.latency_sum - then.latency_sum),
        )


@dataclass(frozen=True)
class Delta:
    """One node's counts for one service between two of its samples."""

    at: float  # unix s of the later sample
    span: float  # s since the one before (> 0)
    counted: Totals


Series = dict[str, list[Delta]]  # service -> its deltas, oldest first


class Traffic:
    def __init__(
        self,
        read: Callable[[], dict[str, Totals]],
        clock: Callable[[], float],
        keep: int = 60,
        interval: float = 2.0,
    ):
        self.read = read
        self.clock = clock
        self.interval = interval
        self.samples: deque[tuple[float, dict[str, Totals]]] = deque(maxlen=keep)

    def sample(self) -> None:
        self.samples.append((self.clock(), self.read()))

    def deltas(self) -> Series:
        """This node's deltas per service, oldest first."""
        out: Series = {}
        samples = list(self.samples)
        for (t0, before), (t1, after) in itertools.pairwise(samples):
            if t1 - t0 <= 0:
                continue
            for service, now in after.items():
                out.setdefault(service, []).append(
                    Delta(t1, t1 - t0, now.since(before.get(service, Totals())))
                )
        return out

    def series(self) -> dict[str, list[dict[str, float]]]:
        """This node's chart points alone (see `chart`)."""
        return chart([self.deltas()], self.interval)


def chart(nodes: Iterable[Mapping[str, list[Delta]]], interval: float) -> dict[str, list[dict[str, float]]]:
    """Per service, oldest first: `{"at", "rate", "errors", "latency"}` over the nodes'
    deltas (see the module), one point per bucket of `interval` s that has any."""
    # service -> bucket -> node index -> (summed counts, summed span)
    buckets: dict[str, dict[int, dict[int, tuple[Totals, float]]]] = {}
    for index, deltas in enumerate(nodes):
        for service, points in deltas.items():
            for d in points:
                if not _chartable(d):
                    continue
                slot = buckets.setdefault(service, {}).setdefault(round(d.at / interval), {})
                counted, span = slot.get(index, (Totals(), 0.0))
                slot[index] = (counted + d.counted, span + d.span)
    out: dict[str, list[dict[str, float]]] = {}
    for service, by_bucket in buckets.items():
        points_out = out.setdefault(service, [])
        for bucket in sorted(by_bucket):
            parts = by_bucket[bucket].values()
            count = sum(c.latency_count for c, _ in parts)
            spent = sum(c.latency_sum for c, _ in parts)
            points_out.append(
                {
                    "at": round(bucket * interval, 3),
                    "rate": round(sum(c.requests / s for c, s in parts), 3),
                    "errors": round(sum(c.errors / s for c, s in parts), 3),
                    "latency": round(spent / count, 6) if count else 0.0,
                }
            )
    return out


def _chartable(d: Delta) -> bool:
    """A delta with time passed, and finite times and latency: a peer's NaN or infinite
    `at` failed the whole chart (`round` raises), and a NaN latency made its JSON one
    that no browser parses. Such a point is skipped; the others are charted."""
    finite = math.isfinite(d.at) and math.isfinite(d.span) and math.isfinite(d.counted.latency_sum)
    return finite and d.span > 0
