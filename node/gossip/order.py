"""Whom to probe next: round-robin over a list reshuffled every round (SWIM §4.3, memberlist state.go).

Picking a uniformly random member for every probe gives an expected detection time
of one interval but an unbounded worst case. SWIM's round-robin variant probes every
live member once per round of (live members - 1) probes, in an order reshuffled at
the start of each round, so that any member is probed by a given prober at most
2(n - 1) - 1 intervals apart, and the probers' orders are independent.

A member learnt mid-round is put at a random position (memberlist: append, then swap
with a random slot), so that a new member is not probed by everyone at the same
time. Members that die stay in the list until the round ends and are skipped.
Each round's list is rebuilt from the member table, so it never drifts from it.

Relays for indirect probes are sampled at random among ALIVE members.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container


class ProbeOrder:
    """The probe schedule of one member over the names of the others."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._order: list[str] = []
        self._index = 0

    def __len__(self) -> int:
        return len(self._order)

    def insert(self, node: str) -> None:
        """Add a (newly live) member at a random position, unless it is still to be
        probed this round: a member flapping dead and alive (20,000 LEFT/ALIVE pairs in
        one message) was listed once per return, and the round probed it alone."""
        order = self._order
        if node in order[self._index :]:  # O(members), only when one comes back to life
            return
        order.append(node)
        offset = int(self._rng.random() * len(order))
        order[offset], order[-1] = order[-1], order[offset]

    def next(self, probeable: Callable[[str], bool], live: Callable[[], list[str]]) -> str | None:
        """The next member to probe, or None if there is none.

        `probeable(name)` filters out members that died since the round began; `live()`
        lists the members for a new round (called when the round wraps).
        """
        reshuffled = False
        while True:
            if self._index >= len(self._order):
                if reshuffled:
                    return None
                self._order = live()
                self._rng.shuffle(self._order)
                self._index = 0
                reshuffled = True
                if not self._order:
                    return None
            node = self._order[self._index]
            self._index += 1
            if probeable(node):
                return node

    def sample(self, k: int, eligible: Callable[[str], bool], exclude: Container[str]) -> list[str]:
        """Up to k distinct random members that are `eligible` and not in `exclude`."""
        chosen: list[str] = []
        size = len(self._order)
        for _ in range(3 * size if size else 0):
            if len(chosen) >= k:
                break
            node = self._order[self._rng.randrange(size)]
            if node not in exclude and node not in chosen and eligible(node):
                chosen.append(node)
        return chosen
