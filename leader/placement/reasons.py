"""Why replicas stay pending, in words a person can act on.

Every alive node is put in the first bucket that rules it out, in this order: its
availability (drained, paused), the first constraint it fails, `max_per_node`, then
memory and cpu (with what is needed and the most any of those nodes has free):

    0/3 nodes available: 2 lack memory (need 2.0 GiB, most free 1.5 GiB),
    1 excluded by node.labels.zone == a
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from leader.placement.cluster import Cluster
from leader.placement.requirements import Requirements
from node.model.domain import Availability


def human_memory(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    return f"{n} B"


def _cores(millicores: int) -> str:
    return f"{max(0, millicores) / 1000:g}"


def _explain(
    cluster: Cluster, req: Requirements, mine: dict[int, int], nodes: Iterable[int]
) -> tuple[int, str]:
    buckets: Counter[str] = Counter()
    most_mem = most_cpu = -1
    short_mem = short_cpu = 0
    available = 0
    for i in nodes:
        availability = cluster.availability[i]
        if availability != Availability.ACTIVE.value:
            buckets["drained" if availability == Availability.DRAIN.value else "paused"] += 1
            continue
        failed = next((c for c in req.constraints if not c.matches(cluster.ids[i], cluster.labels[i])), None)
        if failed is not None:
            buckets[f"excluded by {failed}"] += 1
        elif mine.get(i, 0) >= req.max_per_node:
            buckets[f"already run max_per_node={req.max_per_node} of it"] += 1
        elif cluster.free_mem(i) < req.memory:
            short_mem += 1
            most_mem = max(most_mem, cluster.free_mem(i))
        elif cluster.free_cpu(i) < req.cpu:
            short_cpu += 1
            most_cpu = max(most_cpu, cluster.free_cpu(i))
        else:
            available += 1
    parts = []
    if short_mem:
        need, free = human_memory(req.memory), human_memory(max(0, most_mem))
        parts.append(f"{short_mem} lack memory (need {need}, most free {free})")
    if short_cpu:
        parts.append(f"{short_cpu} lack cpu (need {_cores(req.cpu)}, most free {_cores(most_cpu)})")
    parts += [f"{n} {what}" for what, n in sorted(buckets.items(), key=lambda kv: (-kv[1], kv[0]))]
    return available, ", ".join(parts)


def pending(cluster: Cluster, req: Requirements, mine: dict[int, int]) -> str:
    """Why the remaining replicas of a replicated service fit on no node."""
    if req.invalid:
        return req.invalid
    if not len(cluster):
        return "no node is alive"
    available, why = _explain(cluster, req, mine, range(len(cluster)))
    return f"{available}/{len(cluster)} nodes available" + (f": {why}" if why else "")


def pending_global(cluster: Cluster, req: Requirements, short: list[int]) -> str:
    """Why some eligible nodes of a global service have no replica."""
    _, why = _explain(cluster, req, {}, short)
    return f"{len(short)} eligible node(s) without room: {why}"
