"""Local health awareness (Lifeguard "LHA-Probe", memberlist awareness.go).

A member that is itself slow (overloaded CPU, a stalled event loop, a lossy NIC)
sees its probes fail and would suspect healthy peers. Lifeguard lets each member
score its own health from evidence that points at itself, and slow down when it is
doubtful: the probe interval and the probe timeout are multiplied by `score + 1`.

The score moves in [0, max_multiplier - 1]:

- -1 for every probe that was acked (directly or through a relay);
- +1 for each relay that did not answer an indirect probe at all: a relay that
  answers "could not reach the target" (a nack) vouches that the fault is not ours,
  a silent relay suggests our own network; +1 for a failed probe with no relay to ask;
- +1 each time we must refute a suspicion about ourselves (others cannot hear us).

A healthy member stays at 0, so this never slows detection by healthy members.
"""

from __future__ import annotations


class Awareness:
    """The health score of this member: 0 is healthy."""

    def __init__(self, max_multiplier: int) -> None:
        self._max = max(1, max_multiplier)
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self._max - 1, max(0, self.score + delta))

    def scale(self, seconds: float) -> float:
        """`seconds` stretched by the current health: seconds * (score + 1)."""
        return seconds * (self.score + 1)
