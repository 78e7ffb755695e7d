"""The gossip transport over the peer API (`shoal.v1.Peer`), and the server side of it.

`GrpcTransport` turns `node.gossip` messages into protobuf calls on one cached
channel per peer address; any failure (timeout, refused, reset, an error status)
is a `ProbeFailed`, which is all SWIM needs to know. `PeerServicer` answers probes
by handing them to the local `Memberlist`.
"""

from __future__ import annotations

import grpc
import grpc.aio

from node import rpc
from node.api.server import handle
from node.gossip.memberlist import Memberlist
from node.gossip.messages import Ack, MemberState, Ping, PingReq, Update
from node.gossip.transport import ProbeFailed
from node.pb import peer_pb2, peer_pb2_grpc


def _updates_to_pb(updates: tuple[Update, ...]) -> list[peer_pb2.MemberUpdate]:
    return [
        peer_pb2.MemberUpdate(
            node=u.node, address=u.address, incarnation=u.incarnation, state=u.state.value, source=u.source
        )
        for u in updates
    ]


def _updates_from_pb(updates: object) -> tuple[Update, ...]:
    out = []
    for u in updates:  # type: ignore[attr-defined]
        try:
            state = MemberState(u.state)
        except ValueError:
            continue  # a state this version does not know: ignore it, do not fail the probe
        out.append(Update(u.node, u.address, u.incarnation, state, u.source))
    return tuple(out)


def ack_from_pb(pb: peer_pb2.PingResponse) -> Ack:
    return Ack(pb.node, pb.seq, pb.incarnation, pb.ack, _updates_from_pb(pb.updates))


def ack_to_pb(ack: Ack) -> peer_pb2.PingResponse:
    return peer_pb2.PingResponse(
        node=ack.node,
        seq=ack.seq,
        incarnation=ack.incarnation,
        ack=ack.ack,
        updates=_updates_to_pb(ack.updates),
    )


class GrpcTransport:
    def __init__(self) -> None:
        self._stubs: dict[str, peer_pb2_grpc.PeerStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    def _stub(self, address: str) -> peer_pb2_grpc.PeerStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = rpc.aio_channel(address)
            self._channels.append(channel)
            stub = self._stubs[address] = peer_pb2_grpc.PeerStub(channel)
        return stub

    async def ping(self, address: str, msg: Ping, timeout: float) -> Ack:
        request = peer_pb2.PingRequest(
            from_node=msg.from_node, seq=msg.seq, updates=_updates_to_pb(msg.updates)
        )
        try:
            return ack_from_pb(await self._stub(address).Ping(request, timeout=timeout))
        except grpc.RpcError as exc:
            raise ProbeFailed(f"ping {address}: {exc.code().name}") from exc

    async def ping_req(self, address: str, msg: PingReq, timeout: float) -> Ack:
        request = peer_pb2.PingReqRequest(
            from_node=msg.from_node,
            seq=msg.seq,
            target_node=msg.target_node,
            target_address=msg.target_address,
            updates=_updates_to_pb(msg.updates),
        )
        try:
            return ack_from_pb(await self._stub(address).PingReq(request, timeout=timeout))
        except grpc.RpcError as exc:
            raise ProbeFailed(f"ping-req via {address}: {exc.code().name}") from exc

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()


class PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, members: Memberlist) -> None:
        self.members = members

    @handle
    async def Ping(
        self, request: peer_pb2.PingRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PingResponse:
        ack = self.members.handle_ping(
            Ping(request.from_node, request.seq, _updates_from_pb(request.updates))
        )
        return ack_to_pb(ack)

    @handle
    async def PingReq(
        self, request: peer_pb2.PingReqRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PingResponse:
        msg = PingReq(
            request.from_node,
            request.seq,
            request.target_node,
            request.target_address,
            _updates_from_pb(request.updates),
        )
        return ack_to_pb(await self.members.handle_ping_req(msg))
