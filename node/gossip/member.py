"""Members, membership events, and the precedence rule that orders facts about a member.

Every fact about a member carries the member's *incarnation*, a counter only the
member itself raises (to refute a suspicion or to announce that it leaves). A fact
replaces the one held when it is newer:

- a higher incarnation wins, whatever the states;
- at the same incarnation the stronger state wins: ALIVE < SUSPECT < DEAD < LEFT
  (LEFT is final for that incarnation: only the member can come back, with a higher one);
- anything else is stale and ignored.

One deviation from plain precedence (`merge_outcome`): a DEAD notice about a member
held ALIVE is taken as SUSPECT at that incarnation. The member then gets a full
suspicion timeout to refute, as memberlist does when it merges a peer's full state.
A death is normally preceded everywhere by the suspicion it ends, so real deaths are
unaffected; what this stops is stale notices, e.g. from a node that was cut off, saw
everyone die, and gossips that when the cut heals: without it every member it
"saw die" would be DEAD (and its tasks moved) until it refuted. For the same reason
the state core takes a DEAD at the incarnation of a suspicion it runs as a
confirmation, not as the end of it (a repeat or an echo of the stale notice).

Facts about oneself are not merged here: a member refutes SUSPECT/DEAD/LEFT claims
about itself instead (see `state.MemberTable`).
"""

from __future__ import annotations

from typing import NamedTuple

from node.gossip.messages import MemberState

RANK = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2, MemberState.LEFT: 3}
LIVE = frozenset({MemberState.ALIVE, MemberState.SUSPECT})  # probed; counted in n; not acted on
GONE = frozenset({MemberState.DEAD, MemberState.LEFT})


class Member(NamedTuple):
    """One member as one member sees it (immutable; a NamedTuple because every member
    holds one per member: 25 million of them in a 5,000-member simulation)."""

    node: str
    address: str
    incarnation: int
    state: MemberState
    since: float  # monotonic (event-loop) time of the last state change in this view


class MemberEvent(NamedTuple):
    """A state change in this member's view; `previous` is None for a newly learnt member.

    A refutation of a suspicion about oneself is also an event (ALIVE → ALIVE with a
    higher incarnation).
    """

    node: str
    address: str
    state: MemberState
    incarnation: int
    previous: MemberState | None


def supersedes(state: MemberState, incarnation: int, held: MemberState, held_incarnation: int) -> bool:
    """Whether the fact (`state`, `incarnation`) replaces the held one (plain precedence)."""
    if incarnation != held_incarnation:
        return incarnation > held_incarnation
    return RANK[state] > RANK[held]


def merge_outcome(
    held: MemberState, held_incarnation: int, state: MemberState, incarnation: int
) -> tuple[MemberState, int] | None:
    """What a member's record becomes when the fact arrives, or None if it is ignored."""
    if not supersedes(state, incarnation, held, held_incarnation):
        return None
    if state is MemberState.DEAD and held is MemberState.ALIVE:
        return MemberState.SUSPECT, incarnation
    return state, incarnation
