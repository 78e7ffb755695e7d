"""The peer API (`shoal.v1.Peer`) between daemons.

For now it answers direct probes with this node's identity, which is what peers
and operators use to check that a daemon is up and who it is. The SWIM membership
protocol (indirect probes, suspicion, piggybacked updates) is built on these two
calls in the gossip module; until then `PingReq` answers UNIMPLEMENTED.
"""

from __future__ import annotations

import grpc

from node.api.server import handle
from node.pb import peer_pb2, peer_pb2_grpc


class PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, node: str) -> None:
        self.node = node
        self.incarnation = 0

    @handle
    async def Ping(
        self, request: peer_pb2.PingRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PingResponse:
        return peer_pb2.PingResponse(node=self.node, seq=request.seq, incarnation=self.incarnation, ack=True)
