"""What each message carries: SWIM's piggyback, plus the pull half of push-pull gossip.

Every message has room for `max_piggyback` updates (a full-state sync aside), filled in
this order:

1. Our record of the recipient when it is not ALIVE (Lifeguard's "buddy system",
   memberlist probeNode): a suspected member hears it from whoever probes it and
   refutes at once, without waiting for the rumour to reach it.
2. In replies: our newer records of the stale facts the sender just sent us
   (`corrections`), at most half the room. A member that sends a fact older than
   ours has missed an update; push gossip with a transmit limit reaches almost
   every member, not every one, and telling the sender directly is what informs
   the last few (the "pull" half of push-pull gossip).
3. In probes we send (`probe=True`): the suspicions we hold, at most half the room,
   so that a peer that knows a newer incarnation corrects us in its ack. Without it,
   a member that missed a refutation would declare a healthy member DEAD when its
   timer runs out (seen in simulation: a few per 10 minutes at 10 % loss).
   memberlist repairs such misses with a periodic full-state push-pull instead.
4. The broadcast queue: least-sent, then newest first, each update up to the
   retransmit limit (broadcast.py).

A full-state sync (`full_state`) answers a member we did not know or held DEAD or
LEFT: it is joining, restarting or healing, and needs the whole table. A message
with more than `max_piggyback + 1` updates can only be such a sync (`is_sync`); it
is merged without being re-gossiped, as it is old news to everyone else.

Records are sent as `MemberTable.update_of` makes them: an ALIVE or LEFT record with
the proof its subject signed it with, so the recipient can check it (state.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from node.gossip.broadcast import retransmit_limit
from node.gossip.config import GossipConfig
from node.gossip.member import supersedes
from node.gossip.messages import MemberState, Update
from node.gossip.state import MemberTable


def piggyback(
    table: MemberTable, to: str | None, probe: bool = False, reserve: int = 0
) -> tuple[Update, ...]:
    """The updates for one message to `to` (items 1, 3, 4 above); `reserve` leaves room
    for corrections."""
    config = table.config
    first: list[Update] = []
    held = table.get(to) if to else None
    if held is not None and held.state is not MemberState.ALIVE and to != table.node:
        first.append(table.update_of(held))
    if probe:
        for node, suspicion in itertools.islice(table.suspicions.items(), config.max_piggyback // 2):
            member = table.get(node)
            if member is not None and node != to:
                first.append(
                    Update(node, member.address, member.incarnation, MemberState.SUSPECT, suspicion.origin)
                )
    limit = retransmit_limit(config.retransmit_mult, table.live)
    room = config.max_piggyback - len(first) - reserve
    return (*first, *table.queue.take(room, limit, skip={u.node for u in first}))


def corrections(table: MemberTable, updates: Iterable[Update]) -> list[Update]:
    """Our newer records for the stale facts among `updates`, at most half the room."""
    out: list[Update] = []
    for u in updates:
        held = table.get(u.node)
        if held is not None and supersedes(held.state, held.incarnation, u.state, u.incarnation):
            out.append(table.update_of(held))
            if len(out) >= table.config.max_piggyback // 2:
                break
    return out


def full_state(table: MemberTable) -> tuple[Update, ...]:
    return tuple(table.update_of(m) for m in table.members())


def is_sync(updates: tuple[Update, ...], config: GossipConfig) -> bool:
    return len(updates) > config.max_piggyback + 1
