"""The pure gossip rules: timing formulas, precedence, refutation, and the state core."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from node.gossip.awareness import Awareness
from node.gossip.broadcast import BroadcastQueue, retransmit_limit
from node.gossip.config import PRESETS, GossipConfig, detection_bound
from node.gossip.member import MemberEvent, merge_outcome
from node.gossip.messages import MemberState, Update
from node.gossip.order import ProbeOrder
from node.gossip.piggyback import corrections, is_sync, piggyback
from node.gossip.state import MemberTable
from node.gossip.suspicion import (
    Suspicion,
    expected_confirmations,
    suspicion_min_timeout,
    suspicion_timeout,
)

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
LAN, LOCAL = PRESETS["lan"], PRESETS["local"]

# -- timing formulas -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mult", "n", "interval", "expected"),
    [
        (4, 0, 1.0, 4.0),  # floor: max(1, log10 n)
        (4, 1, 1.0, 4.0),
        (4, 5, 1.0, 4.0),
        (4, 10, 1.0, 4.0),
        (4, 100, 1.0, 8.0),
        (4, 1000, 1.0, 12.0),
        (4, 5000, 1.0, 4 * math.log10(5000)),
        (2, 50, 0.2, 2 * math.log10(50) * 0.2),
    ],
)
def test_suspicion_min_timeout(mult: float, n: int, interval: float, expected: float) -> None:
    assert suspicion_min_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("indirect", "n", "k"), [(3, 1, 0), (3, 2, 0), (3, 3, 1), (3, 4, 2), (3, 5, 3), (3, 50, 3), (0, 50, 0)]
)
def test_expected_confirmations_capped_by_n_minus_2(indirect: int, n: int, k: int) -> None:
    assert expected_confirmations(indirect, n) == k


# timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1)), with min = 4, max = 24
@pytest.mark.parametrize(
    ("c", "k", "expected"),
    [
        (0, 3, 24.0),
        (1, 3, 24 - 20 * math.log(2) / math.log(4)),  # 14.0: the first confirmation counts most
        (2, 3, 24 - 20 * math.log(3) / math.log(4)),  # 8.15
        (3, 3, 4.0),
        (5, 3, 4.0),  # never below min
        (0, 1, 24.0),
        (1, 1, 4.0),
        (0, 0, 4.0),  # no confirmation can come (n <= 2): min from the start
        (4, 0, 4.0),
    ],
)
def test_suspicion_timeout_table(c: int, k: int, expected: float) -> None:
    assert suspicion_timeout(c, k, 4.0, 24.0) == pytest.approx(expected)


def test_suspicion_counts_each_independent_source_once() -> None:
    s = Suspicion(start=10.0, k=3, min_timeout=4.0, max_timeout=24.0, origin="a")
    assert s.deadline == 34.0
    assert not s.confirm("a")  # the origin's own rumour coming back
    assert not s.confirm("")  # unknown source: no confirmation
    assert s.confirm("b")
    assert not s.confirm("b")
    assert s.deadline == pytest.approx(24.0)
    assert s.confirm("c") and s.confirm("d")
    assert not s.confirm("e")  # k reached
    assert s.deadline == 14.0


@pytest.mark.parametrize(
    ("mult", "n", "limit"),
    [
        (4, 1, 4),
        (4, 9, 4),
        (4, 10, 8),
        (4, 50, 8),
        (4, 99, 8),
        (4, 100, 12),
        (4, 1000, 16),
        (4, 5000, 16),
        (3, 50, 6),
    ],
)
def test_retransmit_limit_table(mult: int, n: int, limit: int) -> None:
    assert retransmit_limit(mult, n) == limit == mult * math.ceil(math.log10(n + 1))


# -- config --------------------------------------------------------------------------


def test_lan_preset_is_memberlists() -> None:
    assert (LAN.probe_interval, LAN.probe_timeout, LAN.indirect_checks) == (1.0, 0.5, 3)
    assert (LAN.suspicion_mult, LAN.suspicion_max_mult, LAN.retransmit_mult) == (4.0, 6.0, 4)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_local_preset_declares_a_crash_dead_within_5s_for_3_to_5_members(n: int) -> None:
    assert detection_bound(LOCAL, n) <= 5.0


@pytest.mark.parametrize(
    ("config", "n", "expected"),
    [
        # wait + probe + suspicion max + spread, probe_interval T:
        # T*min(2n-3, 7) + T + max_mult*mult*max(1, log10 n)*T + T*(log2 n + ln n)
        (LOCAL, 3, 0.2 * 3 + 0.2 + 3.5 * 3 * 0.2 + 0.2 * (math.log2(3) + math.log(3))),  # 3.44 s
        (LOCAL, 5, 0.2 * 7 + 0.2 + 3.5 * 3 * 0.2 + 0.2 * (math.log2(5) + math.log(5))),  # 4.49 s
        (LAN, 5, 7 + 1 + 6 * 4 + math.log2(5) + math.log(5)),
        (LAN, 50, 7 + 1 + 6 * 4 * math.log10(50) + math.log2(50) + math.log(50)),
    ],
)
def test_detection_bound_formula(config: GossipConfig, n: int, expected: float) -> None:
    assert detection_bound(config, n) == pytest.approx(expected)


@pytest.mark.parametrize(
    "change",
    [
        {"probe_timeout": 1.0},  # not below the interval
        {"probe_timeout": 0.0},
        {"max_piggyback": 0},
        {"suspicion_max_mult": 0.5},
        {"reconnect_interval": 0.0},
    ],
)
def test_config_rejects_nonsense(change: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="gossip"):
        dataclasses.replace(LAN, **change)


# -- precedence ----------------------------------------------------------------------

# held state at incarnation 5; an update of each state at incarnation 4, 5 and 6 ->
# what the record becomes ("-": ignored)
PRECEDENCE = """
held     update   lower  equal    higher
alive    alive    -      -        alive
alive    suspect  -      suspect  suspect
alive    dead     -      suspect  suspect
alive    left     -      left     left
suspect  alive    -      -        alive
suspect  suspect  -      -        suspect
suspect  dead     -      dead     dead
suspect  left     -      left     left
dead     alive    -      -        alive
dead     suspect  -      -        suspect
dead     dead     -      -        dead
dead     left     -      left     left
left     alive    -      -        alive
left     suspect  -      -        suspect
left     dead     -      -        dead
left     left     -      -        left
"""


def _precedence_cases() -> list[tuple[MemberState, MemberState, int, MemberState | None]]:
    cases = []
    for line in PRECEDENCE.strip().splitlines()[1:]:
        held, update, *outcomes = line.split()
        for incarnation, outcome in zip((4, 5, 6), outcomes, strict=True):
            expected = None if outcome == "-" else MemberState(outcome)
            cases.append((MemberState(held), MemberState(update), incarnation, expected))
    return cases


@pytest.mark.parametrize(("held", "update", "incarnation", "expected"), _precedence_cases())
def test_precedence_every_pair_of_states(
    held: MemberState, update: MemberState, incarnation: int, expected: MemberState | None
) -> None:
    outcome = merge_outcome(held, 5, update, incarnation)
    assert outcome == (None if expected is None else (expected, incarnation))


@pytest.mark.parametrize(("held", "update", "incarnation", "expected"), _precedence_cases())
def test_the_state_core_applies_the_precedence_table(
    held: MemberState, update: MemberState, incarnation: int, expected: MemberState | None
) -> None:
    t = table()
    force(t, "a", held, 5)
    t.apply(Update("a", "mem://a", incarnation, update, source="b"), now=1.0)
    if (held, update, incarnation) == (SUSPECT, DEAD, 5):
        expected = SUSPECT  # the core's one deviation: a confirmation of the suspicion it runs
    member = t.get("a")
    assert member is not None
    if expected is None:
        assert (member.state, member.incarnation) == (held, 5)
    else:
        assert (member.state, member.incarnation) == (expected, incarnation)


# -- the state core ------------------------------------------------------------------


def table(config: GossipConfig = LAN, others: str = "abcd") -> MemberTable:
    t = MemberTable("me", "mem://me", config, random.Random(1), now=0.0)
    for name in others:
        t.add(name, f"mem://{name}", now=0.0)
    return t


def force(t: MemberTable, node: str, state: MemberState, incarnation: int) -> None:
    """Put `node` in `state` at `incarnation` through the core's own inputs."""
    t.apply(Update(node, f"mem://{node}", incarnation, ALIVE), now=0.0)
    if state is SUSPECT:
        t.apply(Update(node, f"mem://{node}", incarnation, SUSPECT, source="x"), now=0.0)
    elif state is DEAD:  # a DEAD notice only confirms a suspicion: our timer declares it
        t.apply(Update(node, f"mem://{node}", incarnation, SUSPECT, source="x"), now=0.0)
        t.expire(now=t.suspicions[node].deadline)
    elif state is LEFT:
        t.apply(Update(node, f"mem://{node}", incarnation, LEFT), now=0.0)
    member = t.get(node)
    assert member is not None and (member.state, member.incarnation) == (state, incarnation)


@pytest.mark.parametrize(
    ("claim", "incarnation", "refuted_with"),
    [
        (SUSPECT, 3, 4),
        (SUSPECT, 7, 8),
        (SUSPECT, 2, None),  # older than us: ignored
        (DEAD, 3, 4),
        (DEAD, 9, 10),
        (LEFT, 3, 4),  # a goodbye from an earlier life
        (ALIVE, 3, None),
        (ALIVE, 5, 6),  # others think we are further along (a restart): move past it
    ],
)
def test_refutation(claim: MemberState, incarnation: int, refuted_with: int | None) -> None:
    t = table()
    t.set_incarnation(3)
    events = t.apply(Update("me", "mem://me", incarnation, claim), now=1.0)
    me = t.get("me")
    assert me is not None and me.state is ALIVE
    if refuted_with is None:
        assert (t.incarnation, events) == (3, [])
    else:
        assert t.incarnation == me.incarnation == refuted_with
        assert events == [MemberEvent("me", "mem://me", ALIVE, refuted_with, ALIVE)]
        assert t.queue.pending("me") == Update("me", "mem://me", refuted_with, ALIVE)


def test_no_refutation_after_leaving() -> None:
    t = table()
    assert t.leave(now=1.0) == [MemberEvent("me", "mem://me", LEFT, 1, ALIVE)]
    assert t.apply(Update("me", "mem://me", 5, DEAD), now=2.0) == []
    assert t.queue.pending("me") == Update("me", "mem://me", 1, LEFT)


def test_failed_probe_suspects_then_the_timeout_declares_dead() -> None:
    t = table()  # n = 5, k = 3, min 4 s, max 24 s
    assert t.suspect("a", now=10.0) == [MemberEvent("a", "mem://a", SUSPECT, 0, ALIVE)]
    assert t.queue.pending("a") == Update("a", "mem://a", 0, SUSPECT, source="me")
    assert t.next_deadline() == 34.0
    assert t.expire(now=33.9) == []
    assert t.expire(now=34.0) == [MemberEvent("a", "mem://a", DEAD, 0, SUSPECT)]
    assert t.queue.pending("a") == Update("a", "mem://a", 0, DEAD)
    assert t.next_deadline() is None


def test_independent_confirmations_shrink_the_timeout_and_relays_do_not() -> None:
    t = table()
    t.suspect("a", now=10.0)
    t.apply(Update("a", "mem://a", 0, SUSPECT, source="me"), now=11.0)  # our own rumour, relayed
    t.apply(Update("a", "mem://a", 0, SUSPECT, source=""), now=11.0)  # an unknown source
    assert t.next_deadline() == 34.0
    t.apply(Update("a", "mem://a", 0, SUSPECT, source="b"), now=11.0)
    assert t.next_deadline() == pytest.approx(24.0)
    assert t.queue.pending("a") == Update("a", "mem://a", 0, SUSPECT, source="b")  # re-gossiped
    t.apply(Update("a", "mem://a", 0, SUSPECT, source="b"), now=12.0)
    assert t.next_deadline() == pytest.approx(24.0)
    t.apply(Update("a", "mem://a", 0, SUSPECT, source="c"), now=12.0)
    t.apply(Update("a", "mem://a", 0, SUSPECT, source="d"), now=12.0)
    assert t.next_deadline() == 14.0  # k = 3 confirmations: the min


def test_our_own_failed_probe_confirms_a_suspicion_heard_from_others() -> None:
    t = table()
    t.apply(Update("a", "mem://a", 0, SUSPECT, source="b"), now=10.0)
    assert t.suspect("a", now=11.0) == []
    assert t.next_deadline() == pytest.approx(24.0)
    assert t.queue.pending("a") == Update("a", "mem://a", 0, SUSPECT, source="me")


def test_a_suspicion_of_a_newer_incarnation_restarts_the_timer() -> None:
    t = table()
    t.suspect("a", now=10.0)
    t.apply(Update("a", "mem://a", 1, SUSPECT, source="b"), now=30.0)
    assert t.next_deadline() == 54.0
    assert t.expire(now=34.0) == []


def test_a_refutation_cancels_the_suspicion() -> None:
    t = table()
    t.suspect("a", now=10.0)
    events = t.apply(Update("a", "mem://a", 1, ALIVE), now=11.0)
    assert events == [MemberEvent("a", "mem://a", ALIVE, 1, SUSPECT)]
    assert t.next_deadline() is None
    assert t.expire(now=100.0) == []


def test_a_dead_member_back_with_a_higher_incarnation_is_alive_and_probed_again() -> None:
    t = table(others="a")
    force(t, "a", DEAD, 2)
    assert t.next_target() is None  # nobody to probe
    assert t.apply(Update("a", "mem://a", 3, ALIVE), now=5.0) == [MemberEvent("a", "mem://a", ALIVE, 3, DEAD)]
    target = t.next_target()
    assert target is not None and target.node == "a"


def test_an_ack_with_a_higher_incarnation_is_evidence_of_alive() -> None:
    t = table()
    force(t, "a", SUSPECT, 2)
    assert t.acked("a", 2, now=1.0) == []
    assert t.acked("a", 3, now=1.0) == [MemberEvent("a", "mem://a", ALIVE, 3, SUSPECT)]


def test_stale_facts_are_answered_with_our_newer_record() -> None:
    t = table()
    force(t, "a", ALIVE, 4)
    stale = [Update("a", "mem://a", 3, SUSPECT), Update("b", "mem://b", 0, ALIVE), Update("me", "", 0, ALIVE)]
    t.set_incarnation(2)
    assert corrections(t, stale) == [Update("a", "mem://a", 4, ALIVE), Update("me", "mem://me", 2, ALIVE)]


def test_piggyback_puts_the_targets_own_record_first_then_our_suspicions_on_probes() -> None:
    t = table()
    force(t, "a", SUSPECT, 1)
    force(t, "b", SUSPECT, 0)
    t.queue = BroadcastQueue()
    t.queue.push(Update("c", "mem://c", 2, ALIVE))
    to_a = piggyback(t, "a", probe=True)
    assert to_a[0] == Update("a", "mem://a", 1, SUSPECT)  # buddy: the suspect hears it first
    assert Update("b", "mem://b", 0, SUSPECT, "x") in to_a
    assert to_a[-1] == Update("c", "mem://c", 2, ALIVE)
    assert piggyback(t, "c") == (Update("c", "mem://c", 2, ALIVE),)  # an ack: the queue only


def test_piggyback_fits_the_room_with_corrections_so_only_a_sync_is_bigger() -> None:
    t = table(config=dataclasses.replace(LAN, max_piggyback=4))
    for i in range(10):
        t.apply(Update(f"n{i}", f"mem://n{i}", 1, ALIVE), now=0.0)
    stale = [Update(f"n{i}", f"mem://n{i}", 0, ALIVE) for i in range(10)]
    fixes = corrections(t, stale)
    assert len(fixes) == 2  # at most half the room
    message = (*fixes, *piggyback(t, "a", reserve=len(fixes)))
    assert len(message) == 4 and not is_sync(message, t.config)


def test_a_death_notice_about_an_alive_member_only_makes_it_suspect() -> None:
    """Before, the same notice a second time (a repeat in one message) made it DEAD at
    once, skipping the timeout the first one had granted."""
    t, dead = table(), Update("a", "mem://a", 0, DEAD)
    assert t.apply(dead, now=1.0) == [MemberEvent("a", "mem://a", SUSPECT, 0, ALIVE)]
    assert t.apply(dead, now=2.0) == []
    assert t.next_deadline() == 25.0  # the full timeout (n = 5: min 4 s, max 24 s)
    assert t.expire(now=25.0) == [MemberEvent("a", "mem://a", DEAD, 0, SUSPECT)]


def test_a_stale_death_notice_echoed_in_a_correction_does_not_cut_the_suspicion_short() -> None:
    """Before, our probe carried the suspicion the notice caused, the node that sent the
    stale notice answered it with its DEAD record in the corrections, and that DEAD
    (same incarnation, stronger state) ended the suspicion at once."""
    h, c = table(others="cx"), MemberTable("c", "mem://c", LAN, random.Random(2), now=0.0)
    for name in "hx":
        c.add(name, f"mem://{name}", now=0.0)
    c.suspect("x", now=0.0)
    c.expire(now=1000.0)  # c was cut off and saw x die; it heals with that verdict
    h.apply(Update("x", "mem://x", 0, DEAD), now=10.0)
    deadline = h.next_deadline()
    fixes = corrections(c, piggyback(h, "c", probe=True))
    assert [(u.node, u.state) for u in fixes] == [("x", DEAD)]
    assert h.apply_all(fixes, now=10.5) == []
    member = h.get("x")
    assert member is not None and member.state is SUSPECT
    assert h.next_deadline() == deadline


def test_a_death_at_the_suspected_incarnation_counts_as_a_confirmation_from_its_source() -> None:
    t = table()
    t.suspect("a", now=10.0)
    assert t.apply(Update("a", "mem://a", 0, DEAD), now=11.0) == []  # no source: no confirmation
    assert t.next_deadline() == 34.0
    assert t.apply(Update("a", "mem://a", 0, DEAD, source="b"), now=11.0) == []
    assert t.next_deadline() == pytest.approx(24.0)
    assert t.apply(Update("a", "mem://a", 1, DEAD, source="c"), now=12.0) == [
        MemberEvent("a", "mem://a", DEAD, 1, SUSPECT)
    ], "a newer incarnation is no longer the suspicion we run"


def test_declared_dead_while_unhealthy_retracts_own_verdicts_quietly() -> None:
    t = table()
    t.suspect("a", now=0.0)
    t.expire(now=24.0)  # a: DEAD in our view
    t.suspect("b", now=20.0)  # b: SUSPECT
    t.health.apply(3)  # our probes have been failing: we may be the one cut off
    events = t.apply(Update("me", "mem://me", 0, DEAD), now=30.0)
    assert {e.node: e.state for e in events} == {"a": ALIVE, "b": ALIVE, "me": ALIVE}
    assert t.queue.pending("a") is None and t.queue.pending("b") is None
    assert t.next_deadline() is None


def test_declared_dead_while_healthy_keeps_own_verdicts() -> None:
    t = table()
    t.suspect("a", now=0.0)
    t.expire(now=24.0)
    t.apply(Update("me", "mem://me", 0, DEAD), now=30.0)
    member = t.get("a")
    assert member is not None and member.state is DEAD


def test_registry_members_are_not_gossiped_but_learnt_ones_are() -> None:
    t = table()
    assert len(t.queue) == 0
    t.apply(Update("e", "mem://e", 0, ALIVE), now=1.0)
    assert t.queue.pending("e") == Update("e", "mem://e", 0, ALIVE)
    assert t.apply(Update("e", "mem://e", 0, ALIVE), now=1.0) == []  # old news


def test_bulk_state_is_merged_without_gossip() -> None:
    t = table()
    t.apply_all([Update("e", "mem://e", 0, ALIVE), Update("f", "mem://f", 2, DEAD)], now=1.0, gossip=False)
    assert len(t.queue) == 0
    assert {m.node: m.state for m in t.members()}.items() >= {"e": ALIVE, "f": DEAD}.items()


# -- broadcast queue, probe order, awareness -----------------------------------------


def test_broadcast_queue_sends_least_sent_then_newest_first_up_to_the_limit() -> None:
    q = BroadcastQueue()
    for i, node in enumerate("abc"):
        q.push(Update(node, "", i, ALIVE))
    assert [u.node for u in q.take(2, limit=2)] == ["c", "b"]
    assert [u.node for u in q.take(2, limit=2)] == ["a", "c"]
    q.push(Update("b", "", 9, SUSPECT))  # replaces b's pending update, unsent again
    assert q.take(1, limit=2) == [Update("b", "", 9, SUSPECT)]
    assert [u.node for u in q.take(5, limit=2)] == ["b", "a"]  # both sent once: newest first; c dropped
    assert len(q) == 0
    q.push(Update("d", "", 0, ALIVE))
    assert q.take(3, limit=2, skip={"d"}) == []


def test_probe_order_is_a_fresh_shuffle_of_live_members_each_round() -> None:
    names = [f"m{i}" for i in range(10)]
    live = set(names)
    order = ProbeOrder(random.Random(3))
    rounds = []
    for _ in range(3):
        rounds.append([order.next(live.__contains__, lambda: sorted(live)) for _ in range(10)])
    assert all(sorted(r) == names for r in rounds)  # type: ignore[type-var]
    assert rounds[0] != rounds[1]
    live.discard("m3")
    probed = [order.next(live.__contains__, lambda: sorted(live)) for _ in range(9)]
    assert "m3" not in probed and len(set(probed)) == 9


def test_probe_order_samples_distinct_eligible_relays() -> None:
    order = ProbeOrder(random.Random(1))
    for name in "abcdef":
        order.insert(name)
    relays = order.sample(3, lambda n: n != "f", exclude=("a", "b"))
    assert len(relays) == 3 and set(relays) <= {"c", "d", "e"}
    assert order.sample(3, lambda n: False, exclude=()) == []


def test_a_member_flapping_dead_and_alive_is_listed_once_in_the_round() -> None:
    """Each return to life appended it: 2,000 LEFT/ALIVE pairs in one message made the
    round 2,000 probes of that one member, and the others went unprobed for that long."""
    t = table()
    for i in range(1, 2001):
        t.apply(Update("x", "mem://x", 2 * i - 1, LEFT), now=1.0)
        t.apply(Update("x", "mem://x", 2 * i, ALIVE), now=1.0)
    assert len(t.order) <= 5, len(t.order)


def test_awareness_stretches_timeouts_within_bounds() -> None:
    a = Awareness(max_multiplier=8)
    assert a.scale(0.5) == 0.5
    a.apply(3)
    assert a.scale(0.5) == 2.0
    a.apply(100)
    assert a.score == 7
    a.apply(-100)
    assert a.score == 0


def test_refuting_a_claim_at_the_largest_incarnation_stays_in_the_wire_range() -> None:
    """Before, refuting a claim at 2^64-1 took our incarnation to 2^64: no message we
    built could be encoded any more (the proto field is a uint64)."""
    t = table()
    t.set_incarnation(1_700_000_000)
    t.apply(Update("me", "mem://me", 2**64 - 1, SUSPECT), now=1.0)
    assert t.incarnation == 2**64 - 1
    assert t.apply(Update("x", "mem://x", 2**64, ALIVE), now=1.0) == [], "beyond the wire: ignored"
