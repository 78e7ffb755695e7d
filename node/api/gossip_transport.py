"""The gossip transport over the peer API (`shoal.v1.Peer`), and the server side of it.

`GrpcTransport` turns `node.gossip` messages into protobuf calls on one cached
channel per peer address, with this node's certificate (mutual TLS); any failure
(timeout, refused, reset, an error status) is a `ProbeFailed`, which is all SWIM
needs to know. After a certificate renewal (`set_tls`) new channels are opened with
the new certificate and the old ones are closed a little later, so a probe in flight
is never cut. `PeerServicer` answers probes by handing them to the local
`Memberlist`, and joins through `node.api.join`.

A probe's `from_node` must be the node its caller's certificate names
(`node.security.auth.current_caller`): else any node could speak for another, e.g.
send a ping-req or an ack in its name. A node certificate whose id differs is refused
(PERMISSION_DENIED). An empty `from_node` claims no one and is let through (the
daemon's start-up twin check, `node.daemon.app`, pings so). Without an authenticated
caller (a server with no auth interceptor: dev mode, tests) nothing is checked.

An ALIVE or LEFT update carries its subject's `proof` both ways, unchanged: the
membership checks it (`node.security.gossip_proof`), the transport only carries it.

Incarnations start at the wall clock (`node.daemon.membership`) and grow by one per
refutation, so one far above the clock (`plausible`) is a bug or a forgery: it is
dropped when read. Merged, it would be spread and refuted past the uint64 the wire
carries, and no probe of anyone who took it could be encoded again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Container

import grpc
import grpc.aio

from node.api.peer_traffic import PeerTrafficHandlers
from node.api.server import handle
from node.api.taskio import PeerTaskHandlers
from node.api.usage import PeerUsageHandlers
from node.gossip.memberlist import Memberlist
from node.gossip.messages import Ack, MemberState, Ping, PingReq, Update
from node.gossip.transport import ProbeFailed
from node.model.errors import FailedPrecondition, PermissionDenied
from node.pb import peer_pb2, peer_pb2_grpc
from node.security.auth import current_caller
from node.security.ca import Kind
from node.wire import rpc
from node.wire.peerstubs import PeerStubs


def _updates_to_pb(updates: tuple[Update, ...]) -> list[peer_pb2.MemberUpdate]:
    return [
        peer_pb2.MemberUpdate(
            node=u.node,
            address=u.address,
            incarnation=u.incarnation,
            state=u.state.value,
            source=u.source,
            proof=u.proof,
        )
        for u in updates
    ]


AHEAD_OF_CLOCK = 10**9  # refutations an incarnation may be ahead of the wall clock: 30 years of one a second


def plausible(incarnation: int) -> bool:
    """Whether an incarnation can come from an honest member (see the module doc)."""
    return incarnation <= time.time() + AHEAD_OF_CLOCK


def _updates_from_pb(updates: object) -> tuple[Update, ...]:
    out = []
    for u in updates:  # type: ignore[attr-defined]
        try:
            state = MemberState(u.state)
        except ValueError:
            continue  # a state this version does not know: ignore it, do not fail the probe
        if plausible(u.incarnation):
            out.append(Update(u.node, u.address, u.incarnation, state, u.source, u.proof))
    return tuple(out)


def ack_from_pb(pb: peer_pb2.PingResponse) -> Ack:
    incarnation = pb.incarnation if plausible(pb.incarnation) else 0  # 0: no news of it
    return Ack(pb.node, pb.seq, incarnation, pb.ack, _updates_from_pb(pb.updates))


def ack_to_pb(ack: Ack) -> peer_pb2.PingResponse:
    return peer_pb2.PingResponse(
        node=ack.node,
        seq=ack.seq,
        incarnation=ack.incarnation,
        ack=ack.ack,
        updates=_updates_to_pb(ack.updates),
    )


RETIRE_AFTER = 30.0  # s an old channel is kept after a renewal, for the calls still on it


class GrpcTransport:
    def __init__(self, tls: rpc.ClientTls | None = None) -> None:
        self._peers = PeerStubs(tls, retire_after=RETIRE_AFTER)
        self._stub = self._peers.stub

    @property
    def tls(self) -> rpc.ClientTls | None:
        return self._peers.tls

    def set_tls(self, tls: rpc.ClientTls) -> None:
        """Dial with `tls` from now on (a renewed certificate); old channels close later."""
        self._peers.set_tls(tls)

    def prune(self, keep: Container[str]) -> None:
        """Close (a little later) the channels of addresses not in `keep`."""
        self._peers.prune(keep)

    async def ping(self, address: str, msg: Ping, timeout: float) -> Ack:
        try:  # a message that cannot be encoded is a failed probe too, not a crash
            request = peer_pb2.PingRequest(
                from_node=msg.from_node, seq=msg.seq, updates=_updates_to_pb(msg.updates)
            )
            return ack_from_pb(await self._stub(address).Ping(request, timeout=timeout))
        except grpc.RpcError as exc:
            raise ProbeFailed(f"ping {address}: {exc.code().name}") from exc
        except (ValueError, TypeError) as exc:
            raise ProbeFailed(f"ping {address}: {exc}") from exc

    async def ping_req(self, address: str, msg: PingReq, timeout: float) -> Ack:
        try:
            request = peer_pb2.PingReqRequest(
                from_node=msg.from_node,
                seq=msg.seq,
                target_node=msg.target_node,
                target_address=msg.target_address,
                updates=_updates_to_pb(msg.updates),
            )
            return ack_from_pb(await self._stub(address).PingReq(request, timeout=timeout))
        except grpc.RpcError as exc:
            raise ProbeFailed(f"ping-req via {address}: {exc.code().name}") from exc
        except (ValueError, TypeError) as exc:
            raise ProbeFailed(f"ping-req via {address}: {exc}") from exc

    async def close(self) -> None:
        await self._peers.close()


def check_sender(from_node: str) -> None:
    """Refuse a probe whose `from_node` is not the caller's certificate's node id."""
    caller = current_caller()
    if caller is None or caller.identity.kind is not Kind.NODE:
        return  # no authenticated caller (dev mode); other kinds never reach the peer API
    if from_node and from_node != caller.identity.name:  # "" speaks for no one (the twin check)
        raise PermissionDenied(
            f"from_node {from_node[:80]!r} is not this caller: its certificate is node "
            f"{caller.identity.name!r}, and a node speaks only for itself"
        )


JoinFn = Callable[[peer_pb2.JoinRequest, grpc.aio.ServicerContext], Awaitable[peer_pb2.JoinResponse]]


class PeerServicer(PeerTaskHandlers, PeerUsageHandlers, PeerTrafficHandlers, peer_pb2_grpc.PeerServicer):
    def __init__(self, members: Memberlist, join: JoinFn | None = None) -> None:
        self.members = members
        self._join = join

    @handle
    async def Join(
        self, request: peer_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.JoinResponse:
        if self._join is None:
            raise FailedPrecondition("this node does not admit new nodes")
        return await self._join(request, context)

    @handle
    async def Ping(
        self, request: peer_pb2.PingRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PingResponse:
        check_sender(request.from_node)
        ack = self.members.handle_ping(
            Ping(request.from_node, request.seq, _updates_from_pb(request.updates))
        )
        return ack_to_pb(ack)

    @handle
    async def PingReq(
        self, request: peer_pb2.PingReqRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PingResponse:
        check_sender(request.from_node)
        msg = PingReq(
            request.from_node,
            request.seq,
            request.target_node,
            request.target_address,
            _updates_from_pb(request.updates),
        )
        return ack_to_pb(await self.members.handle_ping_req(msg))
