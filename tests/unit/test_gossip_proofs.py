"""ALIVE and LEFT are claims only their subject may make: signed by it, checked by every
member (node.gossip.state with an injected verifier; node.security.gossip_proof with the
node certificates). Before, any member with a node certificate could refute a real
suspicion of a dead node (keeping it alive for ever) or move another node's address."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from node.api.gossip_transport import _updates_from_pb, _updates_to_pb
from node.daemon.membership import Membership
from node.gossip import PRESETS, MemberState, Ping, Update
from node.gossip.piggyback import corrections, full_state
from node.gossip.state import MemberTable
from node.model.domain import NodeInfo
from node.model.keys import Keys
from node.security.ca import ClusterCA, Identity, Kind
from node.security.gossip_proof import GossipProofs
from node.security.tls import ClientTls
from node.store.memory import MemoryStore

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
LAN = PRESETS["lan"]


# -- the pure core, with a fake signer ------------------------------------------------


def fake_sign(u: Update) -> bytes:
    return f"signed by {u.node}: {u.state} {u.incarnation} {u.address}".encode()


def fake_verify(u: Update) -> bool:
    return u.proof == fake_sign(u)


def signed(u: Update) -> Update:
    return Update(u.node, u.address, u.incarnation, u.state, u.source, fake_sign(u))


def _table() -> MemberTable:
    t = MemberTable("me", "mem://me", LAN, random.Random(1), 0.0, sign=fake_sign, verify=fake_verify)
    t.add("a", "mem://a", now=0.0)
    t.apply(signed(Update("a", "mem://a", 5, ALIVE)), now=0.0)
    t.apply(Update("a", "mem://a", 5, SUSPECT, source="b"), now=1.0)
    return t


def test_a_forged_refutation_of_another_node_is_not_applied() -> None:
    t = _table()
    forged = Update("a", "mem://a", 6, ALIVE, proof=b"made up by m")
    assert t.apply(forged, now=2.0) == []
    assert t.apply(Update("a", "mem://a", 7, ALIVE), now=2.0) == []  # unsigned
    member = t.get("a")
    assert member is not None and (member.state, member.incarnation) == (SUSPECT, 5)
    assert "a" in t.suspicions, "the suspicion runs on to its timeout"
    assert t.queue.pending("a") != forged and t.rejected == 2
    assert [e.state for e in t.expire(now=1e9)] == [DEAD]


def test_a_forged_address_or_goodbye_is_not_applied() -> None:
    t = _table()
    t.apply(signed(Update("a", "mem://a", 6, ALIVE)), now=2.0)
    moved = Update("a", "evil:1", 7, ALIVE, proof=fake_sign(Update("a", "mem://a", 7, ALIVE)))
    assert t.apply(moved, now=3.0) == []
    assert t.apply(Update("a", "mem://a", 7, LEFT), now=3.0) == []
    member = t.get("a")
    assert member is not None and (member.address, member.state, member.incarnation) == ("mem://a", ALIVE, 6)


def test_a_suspicion_or_death_notice_does_not_move_an_address() -> None:
    """SUSPECT and DEAD are anyone's to send: the address in them is not the sender's to set."""
    t = MemberTable("me", "mem://me", LAN, random.Random(1), now=0.0)
    t.add("a", "mem://a", now=0.0)
    t.apply(Update("a", "evil:1", 3, SUSPECT, source="m"), now=1.0)
    t.apply(Update("a", "evil:1", 4, DEAD, source="m"), now=1.0)
    member = t.get("a")
    assert member is not None and member.address == "mem://a"


def test_a_signed_refutation_is_applied_and_relayed_with_its_proof() -> None:
    t = _table()
    real = signed(Update("a", "mem://a", 6, ALIVE))
    assert [(e.state, e.incarnation) for e in t.apply(real, now=2.0)] == [(ALIVE, 6)]
    assert t.queue.pending("a") == real
    assert real in full_state(t)
    assert corrections(t, [Update("a", "mem://a", 5, SUSPECT)]) == [real]


def test_a_forged_claim_about_a_member_not_held_is_not_learnt() -> None:
    t = MemberTable("me", "mem://me", LAN, random.Random(1), 0.0, sign=fake_sign, verify=fake_verify)
    assert t.apply(Update("b", "evil:1", 9, ALIVE), now=0.0) == []
    assert t.get("b") is None and t.queue.pending("b") is None
    assert t.apply(signed(Update("b", "mem://b", 9, ALIVE)), now=0.0) != []


def test_own_refutation_and_goodbye_are_signed() -> None:
    t = _table()
    t.apply(Update("me", "mem://me", 0, SUSPECT, source="a"), now=1.0)
    assert t.queue.pending("me") == signed(Update("me", "mem://me", 1, ALIVE))
    assert signed(Update("me", "mem://me", 1, ALIVE)) in full_state(t)
    t.leave(now=2.0)
    assert t.queue.pending("me") == signed(Update("me", "mem://me", 2, LEFT))


def test_reannounce_takes_a_new_incarnation_signed_anew() -> None:
    t = _table()
    events = t.reannounce()
    assert [(e.node, e.incarnation) for e in events] == [("me", 1)]
    assert t.queue.pending("me") == signed(Update("me", "mem://me", 1, ALIVE))


# -- real keys and certificates ----------------------------------------------------


CLUSTER = ClusterCA.create("unit")


def _creds(name: str, authority: ClusterCA = CLUSTER) -> tuple[bytes, bytes, bytes]:
    key, cert = authority.issue_key_and_cert(Identity(authority.cluster, Kind.NODE, name), ["10.0.0.1"])
    return authority.cert_pem, key, cert


def _proofs(name: str, registered: frozenset[str] = frozenset({"a"})) -> GossipProofs:
    proofs = GossipProofs(registered.__contains__)
    proofs.use(*_creds(name))
    return proofs


def _claim(proofs: GossipProofs, u: Update, as_node: str | None = None) -> Update:
    """`u` with a proof made by `proofs` (as `as_node`, to forge: the signer is another node)."""
    proof = proofs.sign(as_node or u.node, u.incarnation, u.address, u.state.value)
    return Update(u.node, u.address, u.incarnation, u.state, u.source, proof)


def _check(proofs: GossipProofs, u: Update) -> bool:
    return proofs.check(u.node, u.incarnation, u.address, u.state.value, u.proof)


def test_real_keys_a_forged_alive_is_dropped_and_the_real_one_applied() -> None:
    a, m, me = _proofs("a"), _proofs("m"), _proofs("me")
    t = MemberTable(
        "me", "10.0.0.9:7170", LAN, random.Random(1), 0.0, sign=lambda u: b"", verify=lambda u: _check(me, u)
    )
    t.add("a", "10.0.0.1:7170", now=0.0)
    real = _claim(a, Update("a", "10.0.0.1:7170", 6, ALIVE))
    assert 100 < len(real.proof) < 1200, len(real.proof)  # the piggyback cost of one signed claim
    wire = _updates_from_pb(_updates_to_pb((real,)))  # the proof crosses the wire unchanged
    assert wire == (real,)
    t.apply(wire[0], now=1.0)
    assert t.get("a") == ("a", "10.0.0.1:7170", 6, ALIVE, 0.0)
    t.apply(Update("a", "10.0.0.1:7170", 6, SUSPECT, source="b"), now=2.0)

    other_ca = ClusterCA.create("unit")
    stranger = GossipProofs(lambda n: True)
    stranger.use(*_creds("a", other_ca))
    forgeries = [
        Update("a", "10.0.0.1:7170", 7, ALIVE),  # unsigned, about a node seen signing
        _claim(m, Update("a", "10.0.0.1:7170", 7, ALIVE), as_node="m"),  # m's key and certificate
        Update("a", "10.6.6.6:7170", 7, ALIVE, proof=real.proof),  # a's proof, replayed
        _claim(stranger, Update("a", "10.0.0.1:7170", 7, ALIVE)),  # another CA's "a"
        Update("a", "10.0.0.1:7170", 7, ALIVE, proof=b"\x05junk"),
    ]
    for forged in forgeries:
        assert t.apply(forged, now=3.0) == [], forged
    member = t.get("a")
    assert member is not None and (member.state, member.incarnation, member.address) == (
        SUSPECT,
        6,
        "10.0.0.1:7170",
    )
    assert t.rejected == len(forgeries) and sum(me.dropped.values()) == len(forgeries)

    refutation = _claim(a, Update("a", "10.0.0.1:7170", 7, ALIVE))
    assert [(e.state, e.incarnation) for e in t.apply(refutation, now=4.0)] == [(ALIVE, 7)]


def test_real_keys_an_older_node_unsigned_is_accepted_only_while_registered() -> None:
    """Mixed versions: a registered node never seen signing may send unsigned claims."""
    me = _proofs("me", registered=frozenset({"old"}))
    assert _check(me, Update("old", "10.0.0.3:7170", 8, ALIVE))
    assert not _check(me, Update("gone", "10.0.0.4:7170", 8, ALIVE))


def test_real_keys_a_proof_is_checked_once() -> None:
    a, me = _proofs("a"), _proofs("me")
    claim = _claim(a, Update("a", "10.0.0.1:7170", 6, ALIVE))
    verified = me._public_key
    calls: list[str] = []

    def counted(node: str, der: bytes) -> EllipticCurvePublicKey:
        calls.append(node)
        return verified(node, der)

    me._public_key = counted  # type: ignore[method-assign]
    assert _check(me, claim) and _check(me, claim)
    assert calls == ["a"], "a claim relayed many times is verified once"
    assert a.sign("a", 6, "10.0.0.1:7170", "alive") is claim.proof, "and signed once"


async def test_the_daemon_signs_its_claims_and_drops_forged_ones() -> None:
    keys, store = Keys("/t/"), MemoryStore()
    await store.put(keys.node("a"), NodeInfo("a", "10.0.0.1", 7170).to_json())
    membership = Membership("me", "10.0.0.9:7170", store, keys, PRESETS["local"])
    ca_pem, key, cert = _creds("me")
    try:
        await membership.registry.relist()
        membership.use_tls(ClientTls(ca_pem, key, cert))
        a = _proofs("a")
        membership.list.handle_ping(Ping("a", 1, (_claim(a, Update("a", "10.0.0.1:7170", 5, ALIVE)),)))
        ack = membership.list.handle_ping(
            Ping("m", 2, (Update("a", "10.6.6.6:7170", 9, ALIVE), Update("me", "10.0.0.9:7170", 0, SUSPECT)))
        )
        member = membership.list.member("a")
        assert member is not None and (member.incarnation, member.address) == (5, "10.0.0.1:7170")
        assert membership.list.rejected == 1
        mine = [u for u in ack.updates if u.node == "me" and u.state is ALIVE]
        assert mine and _check(_proofs("x"), mine[0]), "our refutation is signed and checks"
        from node.daemon.telemetry import Telemetry
        from tests.unit.test_daemon_metrics import scrape

        t = Telemetry("me")
        t.membership = membership
        assert (
            'shoal_gossip_claims_dropped_total{reason="unsigned, from a node that signs its claims"} 1.0'
            in scrape(t)
        )
    finally:
        await membership.transport.close()
