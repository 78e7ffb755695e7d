"""Suspicion timeouts that shrink with independent confirmations (Lifeguard, memberlist suspicion.go).

When a probe of member X fails, X becomes SUSPECT and a timer starts; if X has not
refuted (gossiped ALIVE with a higher incarnation) when it fires, X is DEAD.

The timer starts at `max` and moves towards `min` as other members report that their
own probes of X failed too (independent confirmations, told apart by the update's
`source`; a rumour relayed by many members still counts once):

    min        = suspicion_mult * max(1, log10(n)) * probe_interval
    max        = suspicion_max_mult * min
    k          = min(indirect_checks, n - 2)       # confirmations we can expect
    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))    (k >= 1)
    timeout(c) = min                                                       (k < 1)

with n the members believed live (ALIVE or SUSPECT, oneself included). n - 2 leaves
out oneself and X. The log scale makes the first confirmations count most. A real
crash is confirmed by every prober within about one probe round, so it is declared
after about `min`; a false suspicion (loss, a busy peer) rarely gets confirmations
and has up to `max` to be refuted.

Push gossip with a transmit limit misses a few members now and then, and a member
that missed a refutation would declare a healthy member dead. So every probe a
member sends also carries the suspicions it holds: a peer that knows a newer
incarnation corrects it in the ack (the "pull" half of push-pull gossip, see
piggyback.py). memberlist instead repairs such misses with a periodic full-state
push-pull.

`max(1, log10 n)` is memberlist's floor: below 10 members the timeout stays at
`suspicion_mult` probe intervals instead of falling towards zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def suspicion_min_timeout(mult: float, n: int, probe_interval: float) -> float:
    """Seconds: the suspicion timeout once `k` confirmations are in."""
    return mult * max(1.0, math.log10(max(1, n))) * probe_interval


def expected_confirmations(indirect_checks: int, n: int) -> int:
    """k: confirmations that drive the timeout to its minimum (never below 0)."""
    return max(0, min(indirect_checks, n - 2))


def suspicion_timeout(confirmations: int, k: int, min_timeout: float, max_timeout: float) -> float:
    """Seconds from the start of a suspicion until DEAD, after `confirmations` confirmations."""
    if k < 1:
        return min_timeout
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(min_timeout, max_timeout - (max_timeout - min_timeout) * frac)


@dataclass(slots=True)
class Suspicion:
    """The timer state of one suspected member; the shell turns `deadline` into a call_at."""

    start: float  # event-loop time the suspicion began in this view
    k: int
    min_timeout: float
    max_timeout: float
    origin: str = ""  # the source that raised it ("" if unknown)
    seen: set[str] = field(default_factory=set)  # the origin, then the confirmers
    confirmations: int = 0

    def __post_init__(self) -> None:
        if self.origin:
            self.seen.add(self.origin)

    def confirm(self, source: str) -> bool:
        """Count `source` once; True if it was new and the deadline moved."""
        if not source or self.confirmations >= self.k or source in self.seen:
            return False
        self.seen.add(source)
        self.confirmations += 1
        return True

    @property
    def timeout(self) -> float:
        return suspicion_timeout(self.confirmations, self.k, self.min_timeout, self.max_timeout)

    @property
    def deadline(self) -> float:
        return self.start + self.timeout
