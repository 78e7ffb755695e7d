"""SWIM at scale, simulated: detection, dissemination and traffic next to theory.

    .venv/bin/python bench/gossip_sim.py [--sizes 100,1000,5000] [--crashes 30,10,3] [--preset lan]

For each cluster size n, the real `node.gossip.Memberlist` code runs over the
in-memory network in virtual time (`tests/gossip_sim.py`): n members that all know
each other (as from the registry), no message loss by default, latency 0.5-2 ms.
After a warm-up, `--crashes` members crash one after the other, each at a random
instant (so the crash falls anywhere in the members' probe phases) once the previous
one is DEAD everywhere, and the simulation runs until 99.9 % of the survivors hold
every crashed member DEAD.

Measured, per crash, then averaged:

- detection: crash -> the first member to suspect it (its probe, direct and
  indirect, failed);
- dissemination: that first suspicion -> 99.9 % of the survivors know the member
  failed (SUSPECT or DEAD in their view);
- dead: crash -> 99.9 % of the survivors hold it DEAD (adds the suspicion timeout);
- traffic: messages (requests and replies) sent per member per second, in steady state
  between the warm-up and the first crash.

Theory, with T the probe interval:

- SWIM (Das, Gupta, Motivala 2002, §3.1): expected detection time
      E[T_detect] = T / (1 - e^(-q)),   q = (n - 1) / n  (the non-faulty fraction)
  ≈ T · e/(e - 1) ≈ 1.58 T. The paper's model is synchronous and lets the crash
  happen at the start of a protocol period; a crash at a random instant waits on
  average T/2 more for the next period in that model (≈ 2.08 T), which is what this
  bench does. Both are printed.
- Serf's convergence model (serf.io "convergence simulator"): the logistic epidemic
      fraction(x rounds) = 1 / (1 + (n + 1) · e^(-β n x)),  β n = fanout · (1 - loss) · (1 - f) / 2
  solved for the fraction 0.999:  x = ln((n + 1) · 999) / (β n), time = x · interval.
  Piggybacked SWIM gossips on probes and acks: per probe interval a member sends one
  probe and about one ack, so fanout = 2, interval = T, f = 1/n (the crashed member).

Goals (issue 3): detection <= 1.2x theory, dissemination <= 1.3x the model, traffic
per member flat (+-15 %) from 100 to 5,000.

Cost: the tables hold n² entries (5,000 members: 25 million, ~5 GB, ~60 s to build)
and a 5,000-member simulated second takes ~0.6 s, so by default n = 5,000 averages 3
crashes (about 110 simulated seconds), n = 1,000 averages 10 and n = 100 averages 30;
the whole default run takes about 3 minutes on 2 cores. `--sizes` and `--crashes`
change that.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.gossip import PRESETS, GossipConfig, MemberState
from node.gossip.suspicion import suspicion_min_timeout
from tests.gossip_sim import SimCluster, simulate

SUSPECT, DEAD = MemberState.SUSPECT, MemberState.DEAD
WARMUP = 20.0


def swim_detection(config: GossipConfig, n: int) -> float:
    """SWIM's expected detection time, crash at the start of a protocol period."""
    q = (n - 1) / n
    return config.probe_interval / (1 - math.exp(-q))


def serf_convergence(config: GossipConfig, n: int, fraction: float = 0.999, loss: float = 0.0) -> float:
    """Serf's epidemic model: seconds until `fraction` of n members have an update."""
    fanout, failed = 2, 1 / n
    beta_n = fanout * (1 - loss) * (1 - failed) / 2
    rounds = math.log((n + 1) * fraction / (1 - fraction)) / beta_n
    return rounds * config.probe_interval


def spacing(config: GossipConfig, n: int) -> float:
    """Seconds between two crashes: the first is DEAD everywhere before the next."""
    return math.ceil(
        suspicion_min_timeout(config.suspicion_mult, n, config.probe_interval) + 15 * config.probe_interval
    )


@dataclass
class Row:
    n: int
    crashes: int
    detection: float
    dissemination: float
    dead: float
    traffic: float
    sim_seconds: float
    real_seconds: float


def run(n: int, crashes: int, config: GossipConfig, seed: int, loss: float) -> Row:
    rng = random.Random(seed)
    gap = spacing(config, n)  # one crash at a time, at a random instant in its slot
    when = [WARMUP + i * gap + rng.uniform(0, gap / 2) for i in range(crashes)]
    victims = rng.sample(range(n), crashes)
    traffic: dict[str, float] = {}

    async def script(c: SimCluster) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(5.0)
        start = sum(c.net.sent.values())
        await asyncio.sleep(WARMUP - 5.0)
        traffic["steady"] = (sum(c.net.sent.values()) - start) / n / (WARMUP - 5.0)
        for index, at in zip(victims, when, strict=True):
            loop.call_at(at, c.crash, c.names[index])
        dead = [c.names[i] for i in victims]

        def converged() -> bool:
            survivors = [m for m in c.names if m not in c.faulted]
            need = math.ceil(0.999 * len(survivors))
            return len(c.faulted) == crashes and all(
                sum(1 for m in survivors if c.view(m, x) is DEAD) >= need for x in dead
            )

        await c.wait_for(converged, timeout=when[-1] + 600.0, step=1.0)

    started = time.monotonic()
    result = simulate(n, loss, 0.0, seed=seed, config=config, script=script)
    real = time.monotonic() - started
    detection, dissemination, dead = [], [], []
    for index, at in zip(victims, when, strict=True):
        x = result.names[index]
        first = result.first(x, [SUSPECT, DEAD], after=at)
        known = result.known_by(x, [SUSPECT, DEAD], after=at, fraction=0.999)
        dead_at = result.known_by(x, [DEAD], after=at, fraction=0.999)
        if first is None or known is None or dead_at is None:
            raise SystemExit(f"n={n}: crash of {x} at {at:.1f}s not seen by 99.9 % (seed {seed})")
        detection.append(first - at)
        dissemination.append(known - first)
        dead.append(dead_at - at)
    return Row(
        n,
        crashes,
        statistics.mean(detection),
        statistics.mean(dissemination),
        statistics.mean(dead),
        traffic["steady"],
        result.duration,
        real,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="comma-separated cluster sizes")
    parser.add_argument(
        "--crashes",
        default="30,10,3",
        help="crashes per size, averaged (comma-separated; the last one repeats)",
    )
    parser.add_argument("--preset", default="lan", choices=sorted(PRESETS))
    parser.add_argument("--loss", type=float, default=0.0, help="message loss probability")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    config = PRESETS[args.preset]
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.crashes.split(",")]
    counts += [counts[-1]] * (len(sizes) - len(counts))
    t = config.probe_interval
    print(
        f"preset {args.preset}: probe interval {t} s, timeout {config.probe_timeout} s, "
        f"k={config.indirect_checks}, loss {args.loss:.0%}, crashes {counts[: len(sizes)]}, seed {args.seed}"
    )
    print("theory: SWIM T/(1-e^-q), q=(n-1)/n;")
    print("        Serf ln((n+1)*999)/(fanout*(1-loss)*(1-1/n)/2) rounds, fanout 2\n")
    head = (
        f"{'n':>6} {'detect s':>9} {'SWIM s':>7} {'ratio':>6} {'(rand.)':>7} {'dissem s':>9} {'Serf s':>7} "
        f"{'ratio':>6} {'dead s':>7} {'msg/mbr/s':>10} {'vs 100':>7} {'real s':>7}"
    )
    print(head)
    print("-" * len(head))
    rows: list[Row] = []
    base: float | None = None
    for n, crashes in zip(sizes, counts, strict=False):
        row = run(n, max(1, min(crashes, n // 3)), config, args.seed, args.loss)
        rows.append(row)
        base = base or row.traffic
        swim = swim_detection(config, n)
        serf = serf_convergence(config, n, loss=args.loss)
        print(
            f"{n:>6} {row.detection:>9.2f} {swim:>7.2f} {row.detection / swim:>6.2f} "
            f"{row.detection / (swim + t / 2):>7.2f} {row.dissemination:>9.2f} {serf:>7.2f} "
            f"{row.dissemination / serf:>6.2f} {row.dead:>7.2f} {row.traffic:>10.3f} "
            f"{row.traffic / base:>7.2f} {row.real_seconds:>7.1f}",
            flush=True,
        )
    print(
        "\n(rand.) = detection / (SWIM + T/2): SWIM's model with the crash at a random instant.\n"
        "dead = crash -> 99.9 % hold it DEAD: detection + suspicion timeout "
        "(suspicion_mult * max(1, log10 n) * T once confirmed) + spread."
    )
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
    goals = [
        ("detection <= 1.2x SWIM", all(r.detection <= 1.2 * swim_detection(config, r.n) for r in rows)),
        (
            "dissemination <= 1.3x Serf model",
            all(r.dissemination <= 1.3 * serf_convergence(config, r.n, loss=args.loss) for r in rows),
        ),
        ("traffic flat (+-15 %)", all(abs(r.traffic / rows[0].traffic - 1) <= 0.15 for r in rows)),
    ]
    for name, ok in goals:
        print(f"goal {name}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
