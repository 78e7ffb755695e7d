"""Gossip forgets members gone (DEAD or LEFT) longer than the reap time, unless the
registry still lists them: a member table does not grow with every node that left."""

from __future__ import annotations

import random

from node.gossip.config import PRESETS
from node.gossip.messages import MemberState, Update
from node.gossip.state import MemberTable

DAY = 86400.0


def test_members_gone_longer_than_the_reap_time_are_forgotten() -> None:
    t = MemberTable("me", "mem://me", PRESETS["lan"], random.Random(1), now=0.0)
    for name in "abcd":
        t.add(name, f"mem://{name}", now=0.0)
    for node, at in (("a", 10.0), ("c", DAY)):  # c died later
        t.apply(Update(node, f"mem://{node}", 0, MemberState.SUSPECT, "d"), now=at)
        # a newer incarnation: a DEAD at the suspected one only confirms the suspicion
        t.apply(Update(node, f"mem://{node}", 1, MemberState.DEAD), now=at)
    t.apply(Update("b", "mem://b", 1, MemberState.LEFT), now=10.0)
    assert {m.node for m in t.members() if m.state.value in ("dead", "left")} == {"a", "b", "c"}
    assert t.forget(now=DAY, after=DAY) == [], "not gone a day yet"
    assert t.forget(now=DAY + 10.0, after=DAY, keep={"b"}) == ["a"], "b is still registered"
    assert {m.node for m in t.members()} == {"me", "b", "c", "d"}
    assert t.live == 2  # me and d
    for _ in range(10):  # probing never trips on a forgotten member
        target = t.next_target()
        assert target is not None and target.node == "d"
    assert t.relays(3, "d") == []
    t.apply(Update("a", "mem://a", 5, MemberState.ALIVE), now=DAY + 20.0)  # it came back: learnt anew
    assert (m := t.get("a")) is not None and m.state is MemberState.ALIVE
