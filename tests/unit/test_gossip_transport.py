"""The gossip shell against what a peer can send: absurd incarnations, encoding errors,
unknown relay targets (node.api.gossip_transport, node.gossip.probe, node.gossip.memberlist)."""

from __future__ import annotations

import asyncio
import time

import pytest

from node.api.gossip_transport import GrpcTransport, _updates_from_pb, ack_from_pb
from node.gossip import PRESETS, Ack, Memberlist, MemberState, Ping, PingReq, ProbeFailed, Update
from node.pb import peer_pb2
from tests.helpers import wait_until

ALIVE = MemberState.ALIVE
TOP = 2**64 - 1  # the largest uint64: what the wire can carry


def test_an_absurd_incarnation_from_a_peer_is_dropped_when_read() -> None:
    """Before, an update at incarnation 2^64-1 was merged and spread; refuting it took the
    incarnation to 2^64, which no message can carry: every probe failed to encode."""
    now = int(time.time())
    pb = peer_pb2.PingResponse(
        node="b",
        seq=1,
        incarnation=TOP,
        ack=True,
        updates=[
            peer_pb2.MemberUpdate(node="x", address="x:1", incarnation=TOP, state="alive"),
            peer_pb2.MemberUpdate(node="y", address="y:1", incarnation=now + 5, state="suspect"),
        ],
    )
    assert _updates_from_pb(pb.updates) == (Update("y", "y:1", now + 5, MemberState.SUSPECT),)
    ack = ack_from_pb(pb)
    assert ack.incarnation == 0, "an absurd incarnation in an ack is no evidence of anything"
    assert ack.updates == (Update("y", "y:1", now + 5, MemberState.SUSPECT),)


async def test_a_probe_that_cannot_be_encoded_fails_as_a_probe() -> None:
    """Before, the request was built outside the try: a ValueError escaped the probe loop
    and ended the daemon."""
    transport = GrpcTransport()
    bad = (Update("a", "127.0.0.1:1", 2**64, ALIVE),)
    try:
        with pytest.raises(ProbeFailed):
            await transport.ping("127.0.0.1:1", Ping("a", 1, bad), 0.5)
        with pytest.raises(ProbeFailed):
            await transport.ping_req("127.0.0.1:1", PingReq("a", 1, "b", "127.0.0.1:2", bad), 0.5)
    finally:
        await transport.close()


class FlakyTransport:
    """Raises an unexpected error on the first probe, acks the later ones."""

    def __init__(self) -> None:
        self.calls = 0

    async def ping(self, address: str, msg: Ping, timeout: float) -> Ack:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("a bug in one probe")
        return Ack("b", msg.seq, 0, True)

    async def ping_req(self, address: str, msg: PingReq, timeout: float) -> Ack:
        raise ProbeFailed("no relays here")

    def prune(self, keep: object) -> None: ...


async def test_an_unexpected_error_in_one_probe_does_not_end_the_probe_loop() -> None:
    """Before, any exception but ProbeFailed ended `Memberlist.run`, which the daemon
    treats as fatal: one bad probe shut the node down."""
    transport = FlakyTransport()
    members = Memberlist("a", "a:1", transport, PRESETS["local"])
    members.add("b", "b:1")
    run = asyncio.create_task(members.run())
    try:
        await wait_until(lambda: transport.calls >= 3 or run.done(), 10, message="probes go on")
        assert not run.done(), "the probe loop ended"
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


class RecordingTransport:
    """Acks every ping, and records where it was sent."""

    def __init__(self) -> None:
        self.dialled: list[str] = []
        self.kept: set[str] | None = None

    async def ping(self, address: str, msg: Ping, timeout: float) -> Ack:
        self.dialled.append(address)
        return Ack("b", msg.seq, 0, True)

    async def ping_req(self, address: str, msg: PingReq, timeout: float) -> Ack:
        raise ProbeFailed("not used")

    def prune(self, keep: set[str]) -> None:
        self.kept = set(keep)


async def test_a_ping_req_for_an_unknown_member_is_a_failed_probe_without_dialling() -> None:
    """Before, the relay dialled whatever address the caller named, and the transport
    cached a channel (~40 KiB) per address for good: a caller could grow it without end."""
    transport = RecordingTransport()
    members = Memberlist("a", "a:1", transport, PRESETS["local"])
    ack = await members.handle_ping_req(PingReq("c", 7, "t1", "127.0.9.9:1"))
    assert (ack.node, ack.seq, ack.ack, ack.incarnation) == ("t1", 7, False, 0)
    assert transport.dialled == []


async def test_a_ping_req_dials_the_address_we_hold_for_the_target() -> None:
    transport = RecordingTransport()
    members = Memberlist("a", "a:1", transport, PRESETS["local"])
    members.add("b", "b:1")
    ack = await members.handle_ping_req(PingReq("c", 7, "b", "127.0.9.9:1"))
    assert ack.ack and transport.dialled == ["b:1"]


async def test_forgetting_members_lets_the_transport_drop_connections_to_other_addresses() -> None:
    """Before, nothing ever closed a gossip channel: one stayed per address ever dialled."""
    transport = RecordingTransport()
    members = Memberlist("a", "a:1", transport, PRESETS["local"])
    members.add("b", "b:1")
    members.forget(after=3600.0)
    assert transport.kept == {"a:1", "b:1"}
