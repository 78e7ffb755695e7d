"""`Peer/NodeTraffic` (issue 14): this node's proxy traffic per service, for the
dashboard of another node, which charts the whole cluster's (`node.dashboard.cluster`).

The node's daemon sets `traffic_source` (a function answering from its samples, made in
`node.daemon.wiring`); until then, or on a node that keeps none, the call fails with
FAILED_PRECONDITION and the asking dashboard shows a notice for this node.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc.aio

from node.api.server import handle
from node.model.errors import FailedPrecondition
from node.pb import peer_pb2


class PeerTrafficHandlers:
    """`Peer/NodeTraffic`, mixed into `PeerServicer` (set `traffic_source`)."""

    traffic_source: Callable[[], peer_pb2.TrafficResponse] | None = None

    @handle
    async def NodeTraffic(
        self, request: peer_pb2.TrafficRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.TrafficResponse:
        if self.traffic_source is None:
            raise FailedPrecondition("this node keeps no traffic figures")
        return self.traffic_source()
