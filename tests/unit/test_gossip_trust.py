"""What gossip takes from a peer that holds a node certificate: members only the cluster
knows (`known`, node.gossip.state), and probes only in its own name (`check_sender`,
node.api.gossip_transport)."""

from __future__ import annotations

import random

import grpc
import pytest

from node.api.gossip_transport import PeerServicer
from node.daemon.membership import Membership
from node.gossip import PRESETS, Ack, Memberlist, MemberState, Ping, PingReq, Update
from node.gossip.state import MemberTable
from node.model.domain import NodeInfo
from node.model.keys import Keys
from node.pb import peer_pb2
from node.security import auth
from node.security.ca import Identity, Kind
from node.store.memory import MemoryStore
from tests.unit.test_errors import _Aborted, _Context

ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD
LAN = PRESETS["lan"]
REGISTERED = {"a", "b", "c"}


# -- only known members are learnt -----------------------------------------------------


def _table() -> MemberTable:
    t = MemberTable("me", "mem://me", LAN, random.Random(1), now=0.0, known=REGISTERED.__contains__)
    t.add("a", "mem://a", now=0.0)
    return t


@pytest.mark.parametrize("state", [ALIVE, SUSPECT, DEAD, MemberState.LEFT])
def test_a_member_the_cluster_does_not_know_is_neither_learnt_nor_relayed(state: MemberState) -> None:
    """Before, any node could make every member hold (and spread) made-up members."""
    t = _table()
    assert t.apply(Update("ghost", "10.9.9.9:1", 7, state, source="a"), now=1.0) == []
    assert t.get("ghost") is None
    assert t.queue.pending("ghost") is None
    assert t.live == 2


def test_a_known_member_is_still_learnt_from_gossip_and_relayed() -> None:
    t = _table()
    events = t.apply(Update("b", "mem://b", 3, ALIVE), now=1.0)
    assert [(e.node, e.state) for e in events] == [("b", ALIVE)]
    assert t.queue.pending("b") == Update("b", "mem://b", 3, ALIVE)


def test_a_member_held_is_merged_even_when_no_longer_known() -> None:
    """A dead node's registry entry goes with its lease: its death must still be merged."""
    t = MemberTable("me", "mem://me", LAN, random.Random(1), now=0.0, known=lambda n: False)
    t.add("a", "mem://a", now=0.0)
    t.apply(Update("a", "mem://a", 0, SUSPECT, source="x"), now=1.0)
    member = t.get("a")
    assert member is not None and member.state is SUSPECT


async def test_the_server_side_ignores_unknown_members_and_answers_no_full_sync() -> None:
    members = Memberlist("me", "me:1", _NoTransport(), PRESETS["local"], known=REGISTERED.__contains__)
    ghosts = tuple(Update(f"ghost{i}", f"10.9.9.{i}:1", 1, ALIVE) for i in range(5))
    ack = members.handle_ping(Ping("ghost9", 1, (Update("ghost9", "10.9.9.9:1", 1, ALIVE), *ghosts)))
    assert {m.node for m in members.members()} == {"me"}
    assert all(u.node == "me" for u in ack.updates), "a stranger unknown to the cluster gets no table"
    relayed = members.handle_ping(Ping("a", 2, (Update("a", "a:1", 1, ALIVE),)))
    assert {m.node for m in members.members()} == {"me", "a"}
    assert not any(u.node.startswith("ghost") for u in relayed.updates)


async def test_the_daemon_learns_only_registered_nodes_from_gossip() -> None:
    keys = Keys("/t/")
    store = MemoryStore()
    await store.put(keys.node("n2"), NodeInfo("n2", "10.0.0.2", 7170).to_json())
    membership = Membership("n1", "10.0.0.1:7170", store, keys, PRESETS["local"])
    try:
        await membership.registry.relist()
        membership.list.handle_ping(
            Ping("n2", 1, (Update("n2", "10.0.0.2:7170", 5, ALIVE), Update("n9", "10.0.0.9:1", 5, ALIVE)))
        )
        assert {m.node for m in membership.list.members()} == {"n1", "n2"}
    finally:
        await membership.transport.close()


class _NoTransport:
    async def ping(self, address: str, msg: Ping, timeout: float) -> Ack:
        raise AssertionError("not dialled in these tests")

    async def ping_req(self, address: str, msg: PingReq, timeout: float) -> Ack:
        raise AssertionError("not dialled in these tests")

    def prune(self, keep: object) -> None: ...


# -- from_node is the caller's certificate's node ----------------------------------------


def _as(kind: Kind, name: str) -> None:
    """Act as the interceptor's authenticated caller (each test runs in its own task)."""
    auth._caller.set(auth.Caller(Identity("unit", kind, name)))


def _servicer() -> PeerServicer:
    members = Memberlist("n1", "n1:1", _NoTransport(), PRESETS["local"])
    members.add("n3", "n3:1")
    return PeerServicer(members)


async def test_a_ping_in_another_nodes_name_is_refused() -> None:
    """Before, any node could ping (and be answered) as any other."""
    _as(Kind.NODE, "n2")
    servicer, context = _servicer(), _Context()
    with pytest.raises(_Aborted):
        await servicer.Ping(peer_pb2.PingRequest(from_node="n3", seq=1), context)
    assert context.code is grpc.StatusCode.PERMISSION_DENIED
    assert "'n3'" in context.details and "'n2'" in context.details


async def test_a_ping_req_in_another_nodes_name_is_refused() -> None:
    _as(Kind.NODE, "n2")
    servicer, context = _servicer(), _Context()
    request = peer_pb2.PingReqRequest(from_node="n3", seq=1, target_node="n3", target_address="n3:1")
    with pytest.raises(_Aborted):
        await servicer.PingReq(request, context)
    assert context.code is grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("from_node", ["n2", ""])
async def test_a_ping_in_the_callers_own_name_or_none_is_answered(from_node: str) -> None:
    """An empty from_node is the daemon's start-up twin check (node.daemon.app): it names no one."""
    _as(Kind.NODE, "n2")
    servicer, context = _servicer(), _Context()
    pong = await servicer.Ping(peer_pb2.PingRequest(from_node=from_node, seq=4), context)
    assert (pong.node, pong.seq, pong.ack, context.code) == ("n1", 4, True, None)


async def test_without_an_authenticated_caller_nothing_is_checked() -> None:
    """Dev mode (no TLS, no interceptor) keeps working."""
    servicer, context = _servicer(), _Context()
    pong = await servicer.Ping(peer_pb2.PingRequest(from_node="n3", seq=5), context)
    assert (pong.node, pong.seq, context.code) == ("n1", 5, None)
