"""The async shell of one member: `Memberlist`, what the daemon holds and the gRPC servicer calls.

It composes the pure core (`state.MemberTable`) with the I/O:

- `run()` runs the probe and reconnect loops (probe.py) until cancelled, in a
  TaskGroup: if one dies, `run` raises instead of going quiet;
- the suspicion timer: one `loop.call_at` at the core's next deadline, re-armed after
  every input (`_after`); when it fires, due suspicions become DEAD;
- the server side, `handle_ping` and `handle_ping_req`: merge what the caller sent,
  answer with our incarnation and piggyback (piggyback.py); a caller we did not know,
  or held DEAD or LEFT, also gets our full table. A relay pings only a member it
  knows, at the address it holds (else a caller could make it dial anything, and the
  transport keep a connection per address);
- `forget` also lets the transport drop connections to addresses no member has;
- `add`, `join`, `leave`, the queries, and `subscribe` for membership events;
- `known`, the daemon's "is this node registered" predicate: gossip about a member
  not held is learnt only if it accepts it (state.py); `add` is not filtered.
- `sign` and `verify`: the proofs of ALIVE and LEFT claims (state.py), the daemon's
  made with the node certificates; `reannounce` gossips our ALIVE signed anew (at
  incarnation + 1) after the signing key changed; `rejected` counts refused claims.

Events are published to every subscriber queue in the order the core produced them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Container

from node.gossip.broadcast import retransmit_limit
from node.gossip.config import GossipConfig
from node.gossip.member import GONE, LIVE, Member, MemberEvent
from node.gossip.messages import Ack, MemberState, Ping, PingReq, Update
from node.gossip.piggyback import corrections, full_state, piggyback
from node.gossip.probe import Prober, loop_time
from node.gossip.state import MemberTable, any_claim, anyone, no_proof
from node.gossip.transport import ProbeFailed, Transport

__all__ = ["Member", "MemberEvent", "Memberlist"]


class Memberlist:
    """SWIM membership of one member; see the module docstring."""

    def __init__(
        self,
        node: str,
        address: str,
        transport: Transport,
        config: GossipConfig,
        rng: random.Random | None = None,
        known: Callable[[str], bool] = anyone,
        sign: Callable[[Update], bytes] = no_proof,
        verify: Callable[[Update], bool] = any_claim,
    ) -> None:
        self.node, self.address, self.transport, self.config = node, address, transport, config
        rng = rng or random.Random()
        self._table = MemberTable(node, address, config, rng, loop_time(), known, sign, verify)
        self._prober = Prober(self._table, transport, rng, self._after)
        self._subscribers: list[asyncio.Queue[MemberEvent]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    async def run(self) -> None:
        """Probe (and reconnect) until cancelled, or until this member has left.

        Suspicion timers run while `run` does (it can be restarted, e.g. after a pause).
        """
        self._after([])  # arm the timer of suspicions merged while not running
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._prober.probe_loop(), name=f"gossip-probe-{self.node}")
                tasks.create_task(self._prober.reconnect_loop(), name=f"gossip-reconnect-{self.node}")
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer, self._timer_at = None, None

    # -- the server side ------------------------------------------------------------

    def handle_ping(self, msg: Ping) -> Ack:
        """A direct probe from `msg.from_node`: merge, then ack (a full sync to a stranger)."""
        before = self._table.get(msg.from_node)
        fixes = corrections(self._table, msg.updates)
        self._prober.merge(msg.updates)
        updates = (*fixes, *piggyback(self._table, msg.from_node, reserve=len(fixes)))
        if (before is None or before.state in GONE) and self._table.get(msg.from_node):
            updates = (*updates, *full_state(self._table))
        return Ack(self.node, msg.seq, self._table.incarnation, True, updates)

    async def handle_ping_req(self, msg: PingReq) -> Ack:
        """An indirect probe: ping the target for the caller; ack=True if it answered in time.
        A target we do not know (or ourselves) is not pinged: answered as not reached."""
        fixes = corrections(self._table, msg.updates)
        self._prober.merge(msg.updates)
        target = self._table.get(msg.target_node)
        reached, incarnation = False, 0
        if target is not None and target.node != self.node:
            ping = Ping(self.node, self._prober.next_seq(), piggyback(self._table, target.node, probe=True))
            with contextlib.suppress(ProbeFailed):
                ack = await self.transport.ping(target.address, ping, self.config.probe_timeout)
                reached, incarnation = self._prober.acked(ack, target.node), ack.incarnation
        updates = (*fixes, *piggyback(self._table, msg.from_node, reserve=len(fixes)))
        return Ack(msg.target_node, msg.seq, incarnation if reached else 0, reached, updates)

    # -- membership -----------------------------------------------------------------

    def forget(self, after: float, keep: Container[str] = ()) -> list[str]:
        """Drop members gone (DEAD or LEFT) for `after` seconds, except those in `keep`,
        and connections to addresses no member has."""
        gone = self._table.forget(loop_time(), after, keep)
        self.transport.prune({m.address for m in self._table.members()})
        return gone

    def add(self, node: str, address: str) -> None:
        """Learn a member (registry, seeds) as ALIVE at incarnation 0 if unknown; not gossiped."""
        events = self._table.add(node, address, loop_time())
        for queue in self._subscribers:  # no timer to re-arm: nothing new is suspected
            for event in events:
                queue.put_nowait(event)

    async def join(self, addresses: list[str], timeout: float = 1.0) -> int:
        """Ping each seed with our ALIVE record; merge their full state. Returns how many answered."""
        me = self._table.own(MemberState.ALIVE)
        self._table.queue.push(me)

        async def one(address: str) -> bool:
            extra = tuple(u for u in piggyback(self._table, None) if u.node != self.node)
            ping = Ping(self.node, self._prober.next_seq(), (me, *extra))
            try:
                ack = await self.transport.ping(address, ping, timeout)
            except ProbeFailed:
                return False
            self._prober.acked(ack, ack.node)
            return True

        return sum(await asyncio.gather(*(one(a) for a in addresses)))

    async def leave(self, timeout: float = 1.0) -> None:
        """Become LEFT (incarnation + 1) and push it to retransmit-limit random members."""
        self._after(self._table.leave(loop_time()))
        count = retransmit_limit(self.config.retransmit_mult, self._table.live)

        async def one(target: Member) -> None:
            ping = Ping(self.node, self._prober.next_seq(), piggyback(self._table, target.node))
            with contextlib.suppress(ProbeFailed):
                self._prober.acked(await self.transport.ping(target.address, ping, timeout), target.node)

        await asyncio.gather(*(one(t) for t in self._table.relays(count, "")))

    def members(self) -> list[Member]:
        return self._table.members()

    def member(self, node: str) -> Member | None:
        return self._table.get(node)

    def alive(self) -> set[str]:
        """Members ALIVE or SUSPECT (a suspect is not acted on), this one included."""
        return {m.node for m in self._table.members() if m.state in LIVE}

    def dead(self) -> set[str]:
        return {m.node for m in self._table.members() if m.state in GONE}

    def subscribe(self) -> asyncio.Queue[MemberEvent]:
        """A queue of every later state change (unbounded: read it)."""
        queue: asyncio.Queue[MemberEvent] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    @property
    def incarnation(self) -> int:
        return self._table.incarnation

    @incarnation.setter
    def incarnation(self, value: int) -> None:
        """Start at a higher incarnation (e.g. persisted + 1 after a restart); before `run`."""
        self._table.set_incarnation(value)

    def reannounce(self) -> None:
        """Gossip our ALIVE at incarnation + 1, signed anew (after a key change)."""
        self._after(self._table.reannounce())

    @property
    def rejected(self) -> int:
        """Claims about other members refused by `verify` (forged, or unsigned from a signer)."""
        return self._table.rejected

    @property
    def health(self) -> int:
        """Lifeguard health score: 0 is healthy (see awareness.py)."""
        return self._table.health.score

    # -- events and the suspicion timer ---------------------------------------------

    def _after(self, events: list[MemberEvent]) -> None:
        """Publish events and (re)arm the suspicion timer."""
        for queue in self._subscribers:
            for event in events:
                queue.put_nowait(event)
        deadline = self._table.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            try:
                self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)
            except RuntimeError:  # called outside the loop: armed by the next call inside it
                self._timer_at = None

    def _expire(self) -> None:
        self._timer, self._timer_at = None, None
        self._after(self._table.expire(loop_time()))
