"""The chaos suite: `python -m tests.chaos.run --seed N --minutes M` (or `make chaos`).

Brings up a test bed (deploy/testbed/, `--hosts`, default 4), runs `web` (2 replicas,
published on 18080) and `app`, starts the collectors (tests/chaos/collect.py) and a
bounded load from the last host through its own mesh, then until `--minutes` are up:
one service operation on `app` (apply with other replicas, an image update, a remove
and a re-apply, seeded), then one seeded fault (tests/chaos/faults.py) on hosts 1..N-1,
held 4-10 s, healed, and the desired counts awaited (up to the recovery bound). At the
end the checker (tests/chaos/checker.py) judges everything recorded, prints its table
per fault kind and the violations; the exit status is 1 on any violation. The bed is
always removed. The same seed gives the same schedule of faults, targets and operations
(their timing follows the cluster).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tenacity import retry, stop_after_delay, wait_fixed

from deploy.testbed.bed import Bed
from tests.chaos.checker import Ack, Fault, Limits, Write, check, served
from tests.chaos.collect import EngineSampler, EtcdHistory, Load
from tests.chaos.faults import KINDS, inject

WEB = """
name: web
image: shoal-demo/web:1
replicas: 2
ports:
  - {container: 8080, published: 18080, protocol: http}
"""
APP = "name: app\nimage: shoal-demo/web:%d\nreplicas: %d\n"


class Ops:
    """The service operations, each retried until the API acknowledges it (30 s)."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.acks: list[Ack] = []
        self.desired = {"web": 2, "app": 0}

    @retry(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True)
    def apply(self, spec: str, name: str, replicas: int) -> None:
        with self.bed.client(1) as c:
            resp = c.apply(spec, "chaos.yaml")
        self.acks.append(Ack(time.time(), resp.name, int(resp.version)))
        self.desired[name] = replicas

    @retry(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True)
    def remove(self, name: str) -> None:
        with self.bed.client(1) as c:
            c.delete_service(name)
        self.desired[name] = 0

    def step(self, rng: random.Random) -> str:
        if self.desired["app"] and rng.random() < 0.25:
            self.remove("app")
            return "remove app"
        replicas, image = rng.randint(1, 4), rng.choice((1, 2))
        self.apply(APP % (image, replicas), "app", replicas)
        return f"apply app web:{image} x{replicas}"


def restored(sampler: EngineSampler, desired: dict[str, int], bound: float) -> float | None:
    """Poll the sampler's sweeps (those begun from now on) until every service runs its
    desired count; that sweep's time (to the sampling interval), None past `bound`."""
    after = time.time()
    deadline = after + bound
    while time.time() < deadline:
        sweep = sampler.latest()
        answered = sweep and sweep[0].t >= after and all(s.ok for s in sweep)
        if answered and served(sweep) == {k: n for k, n in desired.items() if n}:
            return sweep[0].t
        time.sleep(1.0)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--hosts", type=int, default=4, help="at least 4: the last one runs the load")
    p.add_argument("--kinds", default=",".join(KINDS), help="the fault kinds to choose from")
    p.add_argument("--record", default="", help="write what was observed (JSON) to this file")
    p.add_argument("--plant", action="store_true", help="plant a second container of web's slot 1 on h1 "
                   "(one no agent owns): the run must fail, proving the checker live")  # fmt: skip
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if args.hosts < 4 or not set(kinds) <= set(KINDS):
        p.error(f"--hosts must be >= 4 and --kinds among {', '.join(KINDS)}")
    rng, limits = random.Random(args.seed), Limits()
    # a Docker root of its own per host (512 MiB, sparse) and shiftable clocks, when chosen
    disk = 512 if "disk_full" in kinds else 0
    bed = Bed(args.hosts, small_disk=disk, clock_shift="clock_jump" in kinds).up()
    up = bed.timings["up"]
    print(f"testbed {bed.id}: up in {up:.0f}s; seed {args.seed}, {args.minutes} min", flush=True)
    try:
        return _run(bed, rng, kinds, args.minutes * 60, limits, args.plant, args.record)
    finally:
        left = bed.down()
        print(f"testbed {bed.id}: down{'' if not left else f', left {left}'}")


def plant(bed: Bed) -> None:
    """A container with web slot 1's labels on h1's engine, under a node id no agent has
    (so none stops it): a duplicate of the slot, as a leaked container would be."""
    labels = {"io.shoal.cluster": bed.cluster, "io.shoal.node": "planted", "io.shoal.service": "web",
              "io.shoal.slot": "1", "io.shoal.task": "planted"}  # fmt: skip
    flags = [f for k, v in labels.items() for f in ("--label", f"{k}={v}")]
    bed.docker(1, "run", "-d", "--name", "chaos-planted", *flags, "shoal-demo/web:1")


def save(path: str, writes: list[Write], *rest: list[Any]) -> None:
    """What was observed, as JSON: leader, task and service writes, then the rest."""
    names = ("samples", "faults", "acks", "requests")
    kept = [
        {**asdict(w), "value": None if w.value is None else w.value.decode(errors="replace")}
        for w in writes
        if w.key == "leader" or w.key.startswith(("tasks/", "services/")) or b'"leader.' in (w.value or b"")
    ]
    observed = {"writes": kept, **{n: [asdict(x) for x in xs] for n, xs in zip(names, rest, strict=True)}}
    Path(path).write_text(json.dumps(observed))


def _run(
    bed: Bed,
    rng: random.Random,
    kinds: list[str],
    seconds: float,
    limits: Limits,
    planted: bool,
    record: str = "",
) -> int:
    load_host = bed.hosts
    history, sampler, ops = EtcdHistory(bed), EngineSampler(bed), Ops(bed)
    history.start()
    sampler.start()
    ops.apply(WEB, "web", 2)
    restored(sampler, ops.desired, limits.recover_bound)
    if planted:
        plant(bed)
    load = Load(bed, load_host, f"http://{bed.ip(load_host)}:18080/", seconds + limits.recover_bound + 60)
    faults: list[Fault] = []
    end = time.time() + seconds
    while time.time() < end:
        print(f"{time.strftime('%H:%M:%S')} op: {ops.step(rng)}", flush=True)
        restored(sampler, ops.desired, limits.recover_bound)
        kind, hold = rng.choice(kinds), rng.uniform(4.0, 10.0)
        start = time.time()
        done = inject(bed, kind, rng, bed.hosts - 1, hold)
        if kind != "host_flap":
            time.sleep(hold)  # the fault's own duration: the outage held
        done.heal()
        fault = Fault(done.kind, done.target, start, time.time())
        fault.restored = restored(sampler, ops.desired, limits.recover_bound)
        faults.append(fault)
        back = fault.restored
        took = "not restored" if back is None else f"restored in {back - fault.healed:.1f}s"
        print(f"{time.strftime('%H:%M:%S')} fault: {fault.kind} on {fault.target} "
              f"for {fault.healed - start:.1f}s, {took}", flush=True)  # fmt: skip
    time.sleep(2 * sampler.interval)  # a last sweep or two after the last recovery
    requests = load.stop()
    samples = sampler.stop()
    writes = history.stop()
    report = check(writes, samples, requests, ops.acks, faults, ops.desired, limits)
    if record:
        save(record, writes, samples, faults, ops.acks, requests)
    epochs = {w.create_revision for w in writes if w.key == "leader" and w.value is not None}
    print(f"\n{len(writes)} etcd writes, {len(samples)} engine samples, {len(requests)} requests, "
          f"{len(ops.acks)} acknowledged applies, {len(faults)} faults; "
          f"{sum(w.key.startswith('tasks/') and w.value is not None for w in writes)} task writes "
          f"checked for their epoch across {len(epochs)} "
          "leader epochs")  # fmt: skip
    print(report.table())
    for v in report.violations:
        print(f"VIOLATION: {v}")
    print("PASS" if report.ok else "FAIL")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
