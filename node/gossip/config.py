"""Gossip timings: one frozen, documented config, two presets, and the detection bound.

`lan` is memberlist's `DefaultLANConfig`. `local` is for tests and clusters on one
machine, where latency is sub-millisecond but the CPU is shared: its probes are five
times faster, and it is tuned so that a crashed member of a 3-5 member cluster is
DEAD in every other member's view within 5 s (`detection_bound`, below: 3.4 s for
n = 3 and 4.5 s for n = 5), with the longest suspicion timeouts that allow it. The
price: a member whose event loop stalls for longer than its suspicion timeout (0.6 s
once the other members' probes confirm the suspicion, 2.1 s without confirmations),
plus the time until it is probed, is declared dead, and refutes when it wakes up.

    detection_bound(n) = wait + probe + suspicion + spread

    wait      = probe_interval * min(2n - 3, 7)
        until some member starts a probe of the crashed one. Each member probes the
        others round-robin from a list reshuffled each round of n - 1 probes, so its
        probes of one member are at most 2n - 3 intervals apart; with many members
        the first of them comes sooner: the chance that none probes it for 7
        intervals is about e^-7 (0.1 %).
    probe     = probe_interval
        that probe fails at the end of its interval (direct, then indirect).
    suspicion = suspicion_max_mult * suspicion_mult * max(1, log10 n) * probe_interval
        the suspicion's longest timeout (no confirmations counted; in a real crash
        every prober confirms within a round and the timeout is nearer the min).
    spread    = probe_interval * (log2 n + ln n)
        the DEAD notice reaches every member: push gossip needs about log2 n + ln n
        rounds (Pittel); piggybacking sends about two messages per member per round.

It assumes no message loss, latency well below `probe_timeout`, and healthy
detectors (Lifeguard awareness score 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from node.gossip.suspicion import suspicion_min_timeout


@dataclass(frozen=True)
class GossipConfig:
    """SWIM + Lifeguard timings. Seconds unless said otherwise."""

    probe_interval: float
    #   s between two probes sent by a member (each probes one member per interval, so
    #   every member is probed about once per interval). Detection time scales with it;
    #   traffic per member is about 2 messages per interval whatever the cluster size.
    probe_timeout: float
    #   s to wait for a direct ack before asking relays. Must exceed the network's p99
    #   round trip (plus a busy peer's answering delay); shorter leaves more of the
    #   interval for indirect probes, longer makes fewer needless indirect probes.
    indirect_checks: int
    #   k relays asked to probe a member that missed a direct ack (concurrently, in the
    #   rest of the interval). More relays: fewer false suspicions from lossy paths,
    #   more traffic on each failure. Also caps the suspicion confirmations expected.
    suspicion_mult: float
    #   suspicion min timeout = suspicion_mult * max(1, log10 n) * probe_interval.
    #   Longer gives a wrongly suspected member more time to refute (fewer false DEAD
    #   under loss), shorter declares real crashes sooner.
    suspicion_max_mult: float
    #   suspicion max timeout = suspicion_max_mult * min timeout: where the timer starts
    #   before independent confirmations pull it down to the min (Lifeguard).
    retransmit_mult: int
    #   each update is piggybacked retransmit_mult * ceil(log10(n + 1)) times. Higher
    #   makes dissemination more certain under loss, at the cost of message size.
    max_piggyback: int
    #   updates per message at most (count, not bytes: gRPC has no datagram limit).
    #   Bounds message size; too low delays updates when many change at once.
    gossip_to_the_dead: float
    #   s after its death during which a DEAD member is still probed now and then (with
    #   its death notice piggybacked), so it learns it and refutes when a partition
    #   heals or it wakes up. After that it must re-join. LEFT members are never probed.
    reconnect_interval: float
    #   s between two such probes from one member (each picks one random DEAD member).
    #   Bounds how long a healed partition stays split; costs one message per interval.
    awareness_max_multiplier: int = 8
    #   Lifeguard local health: a member that doubts its own health stretches its probe
    #   interval and timeout up to this factor (see awareness.py). 1 disables it.

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout < self.probe_interval:
            raise ValueError("gossip: need 0 < probe_timeout < probe_interval")
        if self.indirect_checks < 0 or self.max_piggyback < 1 or self.retransmit_mult < 1:
            raise ValueError("gossip: indirect_checks >= 0, max_piggyback >= 1, retransmit_mult >= 1")
        if self.suspicion_mult <= 0 or self.suspicion_max_mult < 1:
            raise ValueError("gossip: need suspicion_mult > 0 and suspicion_max_mult >= 1")
        if self.reconnect_interval <= 0 or self.gossip_to_the_dead < 0 or self.awareness_max_multiplier < 1:
            raise ValueError("gossip: need reconnect_interval > 0, gossip_to_the_dead >= 0, awareness >= 1")


PRESETS: dict[str, GossipConfig] = {
    "local": GossipConfig(
        probe_interval=0.2,
        probe_timeout=0.1,
        indirect_checks=3,
        suspicion_mult=3.0,
        suspicion_max_mult=3.5,
        retransmit_mult=4,
        max_piggyback=16,
        gossip_to_the_dead=60.0,
        reconnect_interval=1.0,
    ),
    "lan": GossipConfig(
        probe_interval=1.0,
        probe_timeout=0.5,
        indirect_checks=3,
        suspicion_mult=4.0,
        suspicion_max_mult=6.0,
        retransmit_mult=4,
        max_piggyback=16,
        gossip_to_the_dead=3600.0,
        reconnect_interval=5.0,
    ),
}


def detection_bound(config: GossipConfig, n: int) -> float:
    """Worst-case seconds from a crash until DEAD in every other view, n members (module doc)."""
    n = max(2, n)
    t = config.probe_interval
    wait = t * min(2 * n - 3, 7)
    suspicion = config.suspicion_max_mult * suspicion_min_timeout(config.suspicion_mult, n, t)
    spread = t * (math.log2(n) + math.log(n))
    return wait + t + suspicion + spread
