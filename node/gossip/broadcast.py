"""Piggybacked dissemination: a transmit-limited queue of updates (memberlist broadcast.go, queue.go).

SWIM sends no gossip messages of its own: membership updates ride on the probes and
acks that failure detection sends anyway. Each member keeps a queue holding at most
one pending update per member (a newer fact about X replaces the queued one, so a
refutation overtakes the suspicion it refutes). Every outgoing ping, ping-req and ack
takes up to `max_piggyback` updates, least-sent first and, among equally sent ones,
newest first; each update is sent

    retransmit_limit = retransmit_mult * ceil(log10(n + 1))

times and then dropped. With about two messages per member per probe interval
(its probe and the ack to whoever probes it), an update infects the cluster
epidemically: each infected member passes it on to about two more each interval, so
O(log n) intervals reach everyone, and `log10(n + 1)` transmissions per member keep
the chance that someone is missed negligible at any size. The per-message cost stays
bounded by `max_piggyback`, so traffic per member is flat in n.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Collection
from dataclasses import dataclass

from node.gossip.messages import Update


def retransmit_limit(mult: int, n: int) -> int:
    """How many times one update is piggybacked before it is dropped, for n members."""
    return mult * math.ceil(math.log10(n + 1))


@dataclass(slots=True)
class _Queued:
    update: Update
    order: int  # insertion counter: higher is newer
    sent: int = 0


class BroadcastQueue:
    """Pending updates, one per member, each sent up to a transmit limit."""

    def __init__(self) -> None:
        self._items: dict[str, _Queued] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, update: Update) -> None:
        """Queue `update`, replacing any pending update about the same member."""
        self._items[update.node] = _Queued(update, next(self._counter))

    def pending(self, node: str) -> Update | None:
        item = self._items.get(node)
        return item.update if item else None

    def drop(self, node: str) -> None:
        """Forget the pending update about `node`, if any."""
        self._items.pop(node, None)

    def take(self, count: int, limit: int, skip: Collection[str] = ()) -> list[Update]:
        """Up to `count` updates for one message (none about members in `skip`), counting
        the send. Updates that reach `limit` sends are dropped."""
        if count <= 0 or not self._items:
            return []
        chosen = heapq.nsmallest(count + len(skip), self._items.values(), key=lambda q: (q.sent, -q.order))
        out: list[Update] = []
        for item in chosen:
            if item.update.node in skip:
                continue
            if len(out) == count:
                break
            out.append(item.update)
            item.sent += 1
            if item.sent >= limit:
                del self._items[item.update.node]
        return out
