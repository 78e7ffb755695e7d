"""Prometheus HTTP service discovery (issue 14): `GET /sd` on any node's metrics listener.

The answer is the list of target groups Prometheus' `http_sd_configs` reads: one
group per registered node that serves `/metrics` (its `NodeInfo.metrics_port`), with
the labels `shoal_node`, `shoal_cluster` and, for a node whose /metrics speaks TLS,
`__scheme__="https"`. A node that is down drops out when its lease expires, which is
what Prometheus' `up` then shows as gone; the alert "node down" (deploy/prometheus/)
watches `up == 0` for the time a target is still listed but does not answer.

Read in the metrics listener's thread from the daemon's mirror of `nodes/` (a dict
the event loop replaces entries of; copied once, atomic under the GIL): no etcd call
per request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from node.model.domain import NodeInfo
from node.store.base import KV

PATH = "/sd"


def target_groups(nodes: Iterable[NodeInfo], cluster: str) -> list[dict[str, Any]]:
    groups = []
    for n in sorted(nodes, key=lambda n: n.id):
        if not n.metrics_port or n.simulated:
            continue
        host = f"[{n.address}]" if ":" in n.address else n.address
        labels = {"shoal_node": n.id, "shoal_cluster": cluster}
        if n.metrics_tls:
            labels["__scheme__"] = "https"
        groups.append({"targets": [f"{host}:{n.metrics_port}"], "labels": labels})
    return groups


def sd_page(items: Callable[[], Mapping[str, KV]], cluster: str) -> Callable[[], bytes]:
    """The `/sd` body from the live mirror's `items()` (key -> KV of `nodes/<id>`)."""

    def page() -> bytes:
        nodes = []
        for kv in list(items().values()):
            try:
                nodes.append(NodeInfo.from_json(kv.value))
            except (ValueError, TypeError, KeyError):
                continue  # an unreadable entry is no target
        return json.dumps(target_groups(nodes, cluster)).encode()

    return page
