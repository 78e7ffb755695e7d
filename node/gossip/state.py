"""The pure membership core of one member (memberlist state.go, without the I/O).

`MemberTable` holds this member's view of everyone (itself included), its own
incarnation, the suspicions in progress, the broadcast queue, the probe order and
the health score. It does no I/O and reads no clock: every input carries `now`
(event-loop time) and returns the `MemberEvent`s it caused; the async shell
(`memberlist.Memberlist`, `probe.Prober`) sends messages, runs timers and feeds
results back; what each message carries is chosen in `piggyback`.

Inputs and what they do:

- `apply(update)`: merge a fact heard from a peer by the precedence rule of
  `member.merge_outcome`; accepted facts are re-gossiped (queued for piggybacking).
  A SUSPECT fact about a member already suspected counts as a confirmation when its
  `source` is new. So does a DEAD fact at the incarnation of a suspicion in progress:
  a DEAD about a member held ALIVE only starts a suspicion (member.py), and a repeat
  of it, or its echo in a peer's corrections, must not end that suspicion before the
  member had its full timeout to refute; a real death is confirmed by every prober's
  own SUSPECT and our timer declares it. Facts about oneself are refuted rather than
  merged: a SUSPECT, DEAD or LEFT claim at our incarnation or above (or ALIVE above
  it) makes us take incarnation claim + 1 (capped at the wire's uint64) and gossip ALIVE.
- `suspect(node)`: our own probe of `node` failed: ALIVE → SUSPECT (source = us),
  or a confirmation if it is already suspected.
- `acked(node, incarnation)`: `node` answered a probe at that incarnation; a higher
  one than held is direct evidence of ALIVE (it refuted, or came back).
- `expire(now)`: suspicions whose timeout passed become DEAD.
- A member declared DEAD while its own health score says it may be the faulty one
  (cut off, stopped) retracts the suspicions and deaths it saw meanwhile when it
  refutes (`_retract_verdicts`): after a partition heals, the cut-off side does not
  spread its stale verdicts about the healthy side.
- `add(node, address)`: a member from the registry or seeds: ALIVE at incarnation 0
  if unknown; not gossiped (every member reads the registry itself).
- `known(node)`, a predicate given at construction (the daemon's: "is `node` in the
  etcd registry"; default: everyone): a fact about a member not in the table is
  learnt only when `known` accepts it; otherwise it is ignored, neither held nor
  relayed. Without it, any holder of a node certificate could fill every member's
  table with made-up members (bounded only by `forget`, a day after their death).
  Members already held are merged as usual (the registry entry of a dead node goes
  with its lease; its death must still be merged and gossiped).
- `leave()`: LEFT with incarnation + 1, gossiped; no refutation after that.
- `sign` and `verify`, callables given at construction (default: no proof, every
  claim accepted): ALIVE and LEFT are claims only their subject may make (a
  refutation, an address, a goodbye), so this member's own carry `sign(update)` as
  their `proof`, and one about another member is merged or learnt only if
  `verify(update)` accepts it; a refused one changes nothing, is not relayed and is
  counted in `rejected`. It is checked only when it would change the record, so a
  stale or repeated claim costs nothing. An accepted proof is kept (`_proofs`) and
  sent on with the record (relays, corrections, full state), so every member can
  check it. SUSPECT and DEAD are any member's to send (SWIM) and carry none; they
  never move a held member's address, which is the member's own claim too.

Dead and left members stay in the table (with their incarnation, so stale facts
about them stay recognisable); DEAD ones are probed now and then for
`gossip_to_the_dead` seconds (`reconnect_target`) so that they can refute.
`forget(now, after, keep)` drops those gone for `after` seconds (the daemon's
`reap_after`, a day by default) that the registry no longer lists.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Iterable, Mapping

from node.gossip.awareness import Awareness
from node.gossip.broadcast import BroadcastQueue
from node.gossip.config import GossipConfig
from node.gossip.member import GONE, LIVE, Member, MemberEvent, merge_outcome
from node.gossip.messages import MAX_INCARNATION, MemberState, Update
from node.gossip.order import ProbeOrder
from node.gossip.suspicion import Suspicion, expected_confirmations, suspicion_min_timeout

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
EPSILON = 1e-6  # s: timers fire up to a clock tick early
SIGNED = frozenset({ALIVE, LEFT})  # claims only their subject may make (module doc)


def anyone(node: str) -> bool:
    """The default `known`: every member is learnt (simulations, tests)."""
    return True


def no_proof(update: Update) -> bytes:
    """The default `sign`: claims carry no proof (simulations, tests)."""
    return b""


def any_claim(update: Update) -> bool:
    """The default `verify`: every claim is accepted (simulations, tests)."""
    return True


class MemberTable:
    """One member's view of the cluster; see the module docstring."""

    def __init__(
        self,
        node: str,
        address: str,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        known: Callable[[str], bool] = anyone,
        sign: Callable[[Update], bytes] = no_proof,
        verify: Callable[[Update], bool] = any_claim,
    ) -> None:
        self.node, self.address, self.config = node, address, config
        self.known = known  # may a member not held be learnt from gossip? (module doc)
        self.sign, self.verify = sign, verify  # proofs of ALIVE and LEFT claims (module doc)
        self.rejected = 0  # claims about others refused by `verify`
        self.incarnation = 0
        self.left = False
        self.queue = BroadcastQueue()
        self.order = ProbeOrder(rng)
        self.health = Awareness(config.awareness_max_multiplier)
        self._rng = rng
        self._members: dict[str, Member] = {node: Member(node, address, 0, ALIVE, now)}
        self._suspicions: dict[str, Suspicion] = {}
        self._dead: dict[str, None] = {}  # DEAD members, in a deterministic order
        self._proofs: dict[str, Update] = {}  # the last proven ALIVE/LEFT claim of each member
        self._own: Update | None = None  # our last signed claim (signing is not free)
        self.live = 1  # n: members ALIVE or SUSPECT, this one included

    # -- queries --------------------------------------------------------------------

    def get(self, node: str) -> Member | None:
        return self._members.get(node)

    def members(self) -> list[Member]:
        return list(self._members.values())

    @property
    def suspicions(self) -> Mapping[str, Suspicion]:
        """The suspicions in progress, by member (read-only)."""
        return self._suspicions

    def update_of(self, member: Member) -> Update:
        """`member`'s record as a fact to send, with its proof when it is a signed claim
        we hold one for (our own: signed now, or cached)."""
        if member.state not in SIGNED:
            return Update(member.node, member.address, member.incarnation, member.state)
        if member.node == self.node:
            return self.own(member.state)
        held = self._proofs.get(member.node)
        if held is not None and (held.incarnation, held.state, held.address) == (
            member.incarnation,
            member.state,
            member.address,
        ):
            return held
        return Update(member.node, member.address, member.incarnation, member.state)

    def own(self, state: MemberState = ALIVE) -> Update:
        """Our own claim at our incarnation, signed (`sign`; cached while it holds)."""
        mine = self._own
        if mine is not None and (mine.incarnation, mine.state, mine.address) == (
            self.incarnation,
            state,
            self.address,
        ):
            return mine
        bare = Update(self.node, self.address, self.incarnation, state)
        proof = self.sign(bare)
        if not proof:
            return bare  # not cached: a signer may be given its key later
        self._own = Update(self.node, self.address, self.incarnation, state, proof=proof)
        return self._own

    def next_deadline(self) -> float | None:
        """When the earliest suspicion times out, if any."""
        return min((s.deadline for s in self._suspicions.values()), default=None)

    # -- inputs ---------------------------------------------------------------------

    def set_incarnation(self, incarnation: int) -> None:
        self.incarnation = incarnation
        me = self._members[self.node]
        self._members[self.node] = Member(self.node, self.address, incarnation, me.state, me.since)

    def add(self, node: str, address: str, now: float) -> list[MemberEvent]:
        if node in self._members:
            return []
        self._members[node] = Member(node, address, 0, ALIVE, now)
        self.live += 1
        self.order.insert(node)
        return [MemberEvent(node, address, ALIVE, 0, None)]

    def apply_all(self, updates: Iterable[Update], now: float, gossip: bool = True) -> list[MemberEvent]:
        events: list[MemberEvent] = []
        for update in updates:
            events += self.apply(update, now, gossip)
        return events

    def apply(self, u: Update, now: float, gossip: bool = True) -> list[MemberEvent]:
        """Merge one fact; `gossip=False` for bulk state (it is old news to everyone else)."""
        if not 0 <= u.incarnation <= MAX_INCARNATION:
            return []  # not from any wire: nothing could carry it on
        if u.node == self.node:
            return self._about_self(u, now)
        held = self._members.get(u.node)
        if held is None:
            return self._learn(u, now, gossip)
        if u.state is SUSPECT and held.state is SUSPECT and u.incarnation == held.incarnation:
            if self._suspicions[u.node].confirm(u.source) and gossip:
                self.queue.push(u)
            return []
        if u.state is DEAD and held.state is SUSPECT and u.incarnation == held.incarnation:
            self._suspicions[u.node].confirm(u.source)  # our timer decides: see the module doc
            return []
        outcome = merge_outcome(held.state, held.incarnation, u.state, u.incarnation)
        if outcome is None:
            return []
        state, incarnation = outcome
        if u.state not in SIGNED:  # anyone's to send, but the address is the member's own claim
            source = u.source if u.state is SUSPECT else ""
            return self._set(held, state, incarnation, held.address, now, source, gossip)
        if not self._proven(u):
            return []
        return self._set(held, state, incarnation, u.address or held.address, now, "", gossip, u.proof)

    def suspect(self, node: str, now: float) -> list[MemberEvent]:
        """Our own probe of `node` failed (direct and indirect)."""
        held = self._members.get(node)
        if held is None or held.state not in LIVE or node == self.node:
            return []
        if held.state is SUSPECT:
            if self._suspicions[node].confirm(self.node):
                self.queue.push(Update(node, held.address, held.incarnation, SUSPECT, self.node))
            return []
        return self._set(held, SUSPECT, held.incarnation, held.address, now, self.node, True)

    def acked(self, node: str, incarnation: int, now: float) -> list[MemberEvent]:
        """`node` itself answered at `incarnation`. A higher one is an ALIVE claim and is
        checked like one (`verify`); its signed claim, piggybacked on the same ack and
        merged first, has normally brought it already."""
        held = self._members.get(node)
        if held is None or incarnation <= held.incarnation:
            return []
        return self.apply(Update(node, held.address, incarnation, ALIVE), now)

    def expire(self, now: float) -> list[MemberEvent]:
        """Suspicions that timed out: DEAD, gossiped."""
        due = [node for node, s in self._suspicions.items() if s.deadline <= now + EPSILON]
        events: list[MemberEvent] = []
        for node in due:
            held = self._members[node]
            events += self._set(held, DEAD, held.incarnation, held.address, now, "", True)
        return events

    def leave(self, now: float) -> list[MemberEvent]:
        if self.left:
            return []
        self.left = True
        self.incarnation = min(self.incarnation + 1, MAX_INCARNATION)
        self._members[self.node] = Member(self.node, self.address, self.incarnation, LEFT, now)
        self.queue.push(self.own(LEFT))
        return [MemberEvent(self.node, self.address, LEFT, self.incarnation, ALIVE)]

    def reannounce(self) -> list[MemberEvent]:
        """Take incarnation + 1 and gossip our ALIVE, signed anew: after our signing key
        changed (a certificate renewal), so that our current claim carries the new
        certificate before the old one expires."""
        if self.left:
            return []
        self.set_incarnation(min(self.incarnation + 1, MAX_INCARNATION))
        self.queue.push(self.own(ALIVE))
        return [MemberEvent(self.node, self.address, ALIVE, self.incarnation, ALIVE)]

    def forget(self, now: float, after: float, keep: Container[str] = ()) -> list[str]:
        """Drop members DEAD or LEFT for `after` seconds and not in `keep` (the registry):
        the table does not grow with every node that ever left. A forgotten node that
        comes back is learnt again like a new one (its stale facts are long gossiped out)."""
        gone = [
            n
            for n, m in self._members.items()
            if n != self.node and m.state in GONE and now - m.since >= after and n not in keep
        ]
        for node in gone:
            del self._members[node]
            self._dead.pop(node, None)
            self._proofs.pop(node, None)
            self._suspicions.pop(node, None)
            self.queue.drop(node)
        return sorted(gone)

    # -- outputs --------------------------------------------------------------------

    def next_target(self) -> Member | None:
        """The next member to probe (round-robin, see order.py)."""
        members, me = self._members, self.node
        name = self.order.next(
            lambda n: n != me and n in members and members[n].state in LIVE,
            lambda: [n for n, m in members.items() if n != me and m.state in LIVE],
        )
        return members[name] if name else None

    def relays(self, k: int, target: str) -> list[Member]:
        members = self._members
        names = self.order.sample(
            k, lambda n: n in members and members[n].state is ALIVE, (self.node, target)
        )
        return [members[n] for n in names]

    def reconnect_target(self, now: float) -> Member | None:
        """A random DEAD member still within `gossip_to_the_dead`, if any."""
        window = self.config.gossip_to_the_dead
        candidates = [n for n in self._dead if now - self._members[n].since <= window]
        return self._members[self._rng.choice(candidates)] if candidates else None

    # -- internals ------------------------------------------------------------------

    def _about_self(self, u: Update, now: float) -> list[MemberEvent]:
        if self.left:
            return []
        if u.incarnation < self.incarnation or (u.state is ALIVE and u.incarnation == self.incarnation):
            return []
        events: list[MemberEvent] = []
        if u.state is DEAD and self.health.score > 0:
            events += self._retract_verdicts(now)
        if u.state is not ALIVE:
            self.health.apply(1)
        # capped: past the uint64 no message of ours could be encoded (the transport also
        # drops absurd incarnations on receipt, so a claim never gets near this)
        self.set_incarnation(min(max(self.incarnation, u.incarnation) + 1, MAX_INCARNATION))
        self.queue.push(self.own(ALIVE))
        return [*events, MemberEvent(self.node, self.address, ALIVE, self.incarnation, ALIVE)]

    def _proven(self, u: Update) -> bool:
        """Whether a signed claim about another member is its own (`verify`); else counted."""
        if self.verify(u):
            if u.proof:
                self._proofs[u.node] = u
            return True
        self.rejected += 1
        return False

    def _retract_verdicts(self, now: float) -> list[MemberEvent]:
        """We were declared dead while doubting our own health: we were the one cut off
        (or stopped), so the suspicions and deaths we saw meanwhile are not to be trusted.
        Take them back to ALIVE at the same incarnation, quietly: no gossip, and their
        queued notices are dropped, so a healed partition does not spread stale deaths.
        A member that really died is found again by our probes (or told by peers)."""
        window = self.config.gossip_to_the_dead
        doubtful = [n for n in self._suspicions]
        doubtful += [n for n in self._dead if now - self._members[n].since <= window]
        events: list[MemberEvent] = []
        for node in doubtful:
            held = self._members[node]
            events += self._set(held, ALIVE, held.incarnation, held.address, now, "", gossip=False)
            self.queue.drop(node)
        return events

    def _learn(self, u: Update, now: float, gossip: bool) -> list[MemberEvent]:
        if not u.address or not self.known(u.node):
            return []  # not learnt, so never relayed either
        if u.state in SIGNED and not self._proven(u):
            return []
        self._members[u.node] = Member(u.node, u.address, u.incarnation, u.state, now)
        if u.state in LIVE:
            self.live += 1
            self.order.insert(u.node)
            if gossip:
                self.queue.push(u)
        if u.state is SUSPECT:
            self._suspicions[u.node] = self._new_suspicion(u.source, now)
        elif u.state is DEAD:
            self._dead[u.node] = None
        return [MemberEvent(u.node, u.address, u.state, u.incarnation, None)]

    def _set(
        self,
        held: Member,
        state: MemberState,
        inc: int,
        address: str,
        now: float,
        source: str,
        gossip: bool,
        proof: bytes = b"",
    ) -> list[MemberEvent]:
        node, changed = held.node, state is not held.state
        self._members[node] = Member(node, address, inc, state, now if changed else held.since)
        if held.state in LIVE and state in GONE:
            self.live -= 1
        elif held.state in GONE and state in LIVE:
            self.live += 1
            self.order.insert(node)
        if state is DEAD:
            self._dead[node] = None
        else:
            self._dead.pop(node, None)
        if state is SUSPECT:  # a suspicion of a newer incarnation is a new one: its timer restarts
            suspicion = self._suspicions.get(node)
            if suspicion is None or inc > held.incarnation:
                self._suspicions[node] = self._new_suspicion(source, now)
            else:
                suspicion.confirm(source)
        else:
            self._suspicions.pop(node, None)
        if gossip and (changed or state in LIVE):
            self.queue.push(Update(node, address, inc, state, source if state is SUSPECT else "", proof))
        return [MemberEvent(node, address, state, inc, held.state)] if changed else []

    def _new_suspicion(self, origin: str, now: float) -> Suspicion:
        c, n = self.config, self.live
        low = suspicion_min_timeout(c.suspicion_mult, n, c.probe_interval)
        k = expected_confirmations(c.indirect_checks, n)
        return Suspicion(now, k, low, c.suspicion_max_mult * low, origin)
