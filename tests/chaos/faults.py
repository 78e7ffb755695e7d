"""The faults the chaos suite injects on a test bed (deploy/testbed/), each an inject and
a heal. Hosts 1..`targets` are targets; the load's host is never one.

`disk_full` and `clock_jump` need a bed made with `small_disk` and `clock_shift`
(deploy/testbed/hostfaults.py): the host's Docker root is filled to its last block, or
its shoald's wall clock steps 30-180 s forward or back (and steps back in line at the
heal), its monotonic clock untouched, as with a real clock step.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from deploy.testbed import hostfaults
from deploy.testbed.bed import Bed, BedError
from deploy.testbed.teardown import run


@dataclass
class Injected:
    kind: str
    target: str
    heal: Callable[[], None]


def _drop_inbound(bed: Bed, i: int, on: bool) -> None:
    """One-way cut: host i sends, but nothing from the bridge's subnet reaches it."""
    rule = ["INPUT", "-s", bed.subnet, "-m", "comment", "--comment", f"shoal-chaos-{bed.id}", "-j", "DROP"]
    run("ip", "netns", "exec", bed.netns(i), "iptables", "-I" if on else "-D", *rule)


def daemon_kill9(bed: Bed, i: int) -> Injected:
    bed.stop_shoald(i, signal.SIGKILL)

    def heal() -> None:
        bed.start_shoald(i)
        bed.save()

    return Injected("daemon_kill9", f"h{i}", heal)


def daemon_stop(bed: Bed, i: int) -> Injected:
    bed.freeze(f"shoald-{i}")
    return Injected("daemon_sigstop", f"h{i}", lambda: bed.freeze(f"shoald-{i}", False))


def engine_stop(bed: Bed, i: int) -> Injected:
    bed.stop_engine(i)
    return Injected("engine_stop", f"h{i}", lambda: bed.start_engine(i))


def host_cut(bed: Bed, i: int) -> Injected:
    bed.cut(i)
    return Injected("host_cut", f"h{i}", lambda: bed.cut(i, False))


def host_cut_oneway(bed: Bed, i: int) -> Injected:
    _drop_inbound(bed, i, True)
    return Injected("host_cut_oneway", f"h{i}", lambda: _drop_inbound(bed, i, False))


def host_flap(bed: Bed, i: int, rng: random.Random, hold: float) -> Injected:
    """The link goes down and up every 1-2 s for `hold` s; healed up."""
    until = time.monotonic() + hold
    down = True
    while time.monotonic() < until:
        bed.cut(i, down)
        down = not down
        time.sleep(rng.uniform(1.0, 2.0))
    return Injected("host_flap", f"h{i}", lambda: bed.cut(i, False))


def etcd_kill(bed: Bed, i: int) -> Injected:
    bed.stop_etcd(i, signal.SIGKILL)

    def heal() -> None:
        bed.start_etcd(i)
        bed.save()

    return Injected("etcd_kill", f"etcd-h{i}", heal)


def etcd_leader_cut(bed: Bed) -> Injected:
    # Right after another fault the members may know no leader yet: ask again for a while.
    retrying = Retrying(
        stop=stop_after_delay(30), wait=wait_fixed(0.5), retry=retry_if_exception_type(BedError), reraise=True
    )
    i = retrying(bed.etcd_leader)
    bed.cut(i)
    return Injected("etcd_leader_cut", f"h{i}", lambda: bed.cut(i, False))


def disk_full(bed: Bed, i: int) -> Injected:
    if not bed.small_disk:
        raise BedError("disk_full needs a bed with small_disk (a Docker root of its own per host)")
    root = bed.docker_root(i)
    hostfaults.fill_disk(root)
    return Injected("disk_full", f"h{i}", lambda: hostfaults.free_disk(root))


def clock_jump(bed: Bed, i: int, rng: random.Random) -> Injected:
    if not bed.clock_shift:
        raise BedError("clock_jump needs a bed with clock_shift (each shoald's own wall clock)")
    step = rng.choice((-1, 1)) * rng.uniform(30, 180)  # within the certificates' 5-minute backdate
    hostfaults.set_clock(bed.clock_file(i), step)
    return Injected("clock_jump", f"h{i}", lambda: hostfaults.set_clock(bed.clock_file(i), 0))


KINDS = ("daemon_kill9", "daemon_sigstop", "engine_stop", "host_cut", "host_cut_oneway", "host_flap",
         "etcd_kill", "etcd_leader_cut", "disk_full", "clock_jump")  # fmt: skip


def inject(bed: Bed, kind: str, rng: random.Random, targets: int, hold: float) -> Injected:
    """Inject `kind` on a host chosen by `rng` (etcd faults: among etcd's hosts). Flapping
    takes its `hold` while injecting; the others return at once and hold afterwards."""
    i = rng.randint(1, targets)
    e = rng.choice([h for h in bed.etcd_hosts if h <= targets])
    match kind:
        case "daemon_kill9":
            return daemon_kill9(bed, i)
        case "daemon_sigstop":
            return daemon_stop(bed, i)
        case "engine_stop":
            return engine_stop(bed, i)
        case "host_cut":
            return host_cut(bed, i)
        case "host_cut_oneway":
            return host_cut_oneway(bed, i)
        case "host_flap":
            return host_flap(bed, i, rng, hold)
        case "etcd_kill":
            return etcd_kill(bed, e)
        case "etcd_leader_cut":
            return etcd_leader_cut(bed)
        case "disk_full":
            return disk_full(bed, i)
        case "clock_jump":
            return clock_jump(bed, i, rng)
    raise ValueError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
