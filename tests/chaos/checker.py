"""The chaos suite's invariant checker: a pure core over recorded observations.

It imports nothing that talks to etcd, Docker or gRPC; the collectors (`tests.chaos.run`)
record what they saw into these dataclasses and `check()` judges them afterwards:

- `Write`: one put or delete from etcd's history (a watch from revision 1);
- `Sample`: one look at one host's engine: the running containers and their shoal labels;
- `Request`: one request of the load through the mesh, ok or not;
- `Ack`: an apply or scale the API acknowledged (service, version);
- `Fault`: one injected fault, its kind, start, heal and when the counts were restored;
- `desired`: the replicas each service should have at the end.

The invariants (each violation is a line in `Report.violations`):

1. two running containers of one slot (service, slot, different tasks) on the engines,
   for longer than `handoff_window` seconds in a row (a start-first handoff or a move
   off a lost host overlaps briefly; a lasting duplicate is a bug);
2. a leader write (`tasks/`) whose record carries an epoch that is not the create
   revision of the leader key live at that write's revision (a stale leader's write);
3. an acknowledged apply whose (service, version) never appears in etcd's history;
4. the desired counts not restored within `recover_bound` seconds after the last fault;
5. more than `max_failed` of the load's requests failed during one fault.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Write:
    revision: int
    key: str  # without the cluster prefix, e.g. "leader", "tasks/web/0"
    value: bytes | None  # None: a delete
    create_revision: int = 0


@dataclass(frozen=True)
class Container:
    service: str
    slot: int
    task: str


@dataclass(frozen=True)
class Sample:
    t: float
    host: int
    containers: tuple[Container, ...]
    ok: bool = True  # False: the engine did not answer (no evidence either way)


@dataclass(frozen=True)
class Request:
    t: float
    ok: bool


@dataclass(frozen=True)
class Ack:
    t: float
    service: str
    version: int


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    healed: float
    restored: float | None = None  # when every service had its desired count again


@dataclass(frozen=True)
class Limits:
    handoff_window: float = 20.0
    recover_bound: float = 90.0
    max_failed: float = 0.01


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    rows: list[tuple[str, int, str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def table(self) -> str:
        head = ("fault", "count", "recovery p50 s", "recovery max s", "failed requests")
        lines = [f"{head[0]:<16} {head[1]:>5} {head[2]:>15} {head[3]:>15} {head[4]:>16}"]
        lines += [f"{r[0]:<16} {r[1]:>5} {r[2]:>15} {r[3]:>15} {r[4]:>16}" for r in self.rows]
        return "\n".join(lines)


def duplicate_slots(samples: list[Sample], window: float) -> list[str]:
    """Invariant 1: a slot run by two tasks at once, across all engines, for longer than
    `window` s in a row. Samples are grouped into rounds by time (one round per sweep)."""
    rounds: dict[float, list[Sample]] = defaultdict(list)
    for s in samples:
        rounds[round(s.t, 0)].append(s)
    since: dict[tuple[str, int], float] = {}
    found: dict[tuple[str, int], str] = {}
    for t in sorted(rounds):
        tasks: dict[tuple[str, int], set[str]] = defaultdict(set)
        for s in rounds[t]:
            for c in s.containers:
                tasks[(c.service, c.slot)].add(c.task)
        for slot, ids in tasks.items():
            if len(ids) > 1:
                first = since.setdefault(slot, t)
                if t - first > window and slot not in found:
                    found[slot] = f"slot {slot[0]}/{slot[1]} ran two tasks {sorted(ids)} for {t - first:.0f}s"
        for slot in [k for k in since if len(tasks.get(k, ())) <= 1]:
            del since[slot]
    return list(found.values())


def stale_epochs(history: list[Write]) -> list[str]:
    """Invariant 2: every `tasks/` put is made while a leader key is live, and a new
    placement carries that key's epoch (its create revision, as `node.store.base.fence`
    compares). A record keeps the epoch it was placed at: the live leader may rewrite it
    (a handoff released) with its task id and epoch unchanged, never with an older epoch
    under a new task id, nor with an epoch from the future."""
    live = 0  # create revision of the live leader key; 0 while there is none
    placed: dict[str, tuple[str, int]] = {}  # key -> (task id, epoch) of its last put
    out = []
    for w in sorted(history, key=lambda w: w.revision):
        if w.key == "leader":
            live = w.create_revision if w.value is not None else 0
        elif w.key.startswith("tasks/") and w.value is None:
            placed.pop(w.key, None)
        elif w.key.startswith("tasks/") and w.value is not None:
            record = json.loads(w.value)
            task, epoch = str(record.get("task_id", "")), int(record.get("epoch", -1))
            kept = placed.get(w.key) == (task, epoch)
            placed[w.key] = (task, epoch)
            if live and (epoch == live or (kept and epoch < live)):
                continue
            what = "rewritten" if kept else "placed"
            out.append(f"{w.key} {what} at revision {w.revision} with epoch {epoch}; the leader's is {live}")
    return out


def lost_acks(history: list[Write], acks: list[Ack]) -> list[str]:
    """Invariant 3: every acknowledged (service, version) was put under `services/`."""
    stored = set()
    for w in history:
        if w.key.startswith("services/") and w.value is not None:
            rec = json.loads(w.value)
            stored.add((rec.get("name", w.key.removeprefix("services/")), int(rec.get("version", 0))))
    return [f"apply of {a.service} v{a.version} acknowledged at {a.t:.1f} is not in etcd"
            for a in acks if (a.service, a.version) not in stored]  # fmt: skip


def served(sweep: list[Sample]) -> dict[str, int]:
    """service -> how many of its slots run a container in this sweep (a slot run twice
    counts once: duplicates are invariant 1's)."""
    slots: dict[str, set[int]] = defaultdict(set)
    for s in sweep:
        for c in s.containers:
            slots[c.service].add(c.slot)
    return {k: len(v) for k, v in slots.items()}


def counts_restored(
    samples: list[Sample], desired: dict[str, int], after: float, bound: float
) -> tuple[float | None, list[str]]:
    """Invariant 4: the first sweep at or after `after` where every service serves exactly
    its desired count of slots (every engine answered); a violation past `bound` s."""
    rounds: dict[float, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.t >= after:
            rounds[round(s.t, 0)].append(s)
    for t in sorted(rounds):
        if not all(s.ok for s in rounds[t]):
            continue
        if served(rounds[t]) == {k: n for k, n in desired.items() if n}:
            took = t - after
            if took > bound:
                return took, [
                    f"desired counts restored {took:.0f}s after the last fault (bound {bound:.0f}s)"
                ]
            return took, []
    return None, [f"desired counts {desired} not restored within {bound:.0f}s after the last fault"]


def failed_during(fault: Fault, requests: list[Request]) -> tuple[int, int]:
    during = [r for r in requests if fault.start <= r.t <= fault.healed]
    return sum(not r.ok for r in during), len(during)


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return f"{statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]:.1f}"


def check(
    history: list[Write],
    samples: list[Sample],
    requests: list[Request],
    acks: list[Ack],
    faults: list[Fault],
    desired: dict[str, int],
    limits: Limits | None = None,
) -> Report:
    lim = limits or Limits()
    report = Report()
    if not history or not samples or not faults:
        # nothing observed proves nothing: a run without evidence fails
        report.violations.append(
            f"no evidence: {len(history)} etcd writes, {len(samples)} engine samples, {len(faults)} faults"
        )
    report.violations += duplicate_slots(samples, lim.handoff_window)
    report.violations += stale_epochs(history)
    report.violations += lost_acks(history, acks)
    if faults:
        last = max(f.healed for f in faults)
        _, late = counts_restored(samples, desired, last, lim.recover_bound)
        report.violations += late
    by_kind: dict[str, list[Fault]] = defaultdict(list)
    for f in faults:
        by_kind[f.kind].append(f)
        failed, total = failed_during(f, requests)
        if total and failed / total > lim.max_failed:
            what = f"{f.kind} on {f.target} at {f.start:.1f}"
            report.violations.append(f"{what}: {failed}/{total} requests failed (> {lim.max_failed:.0%})")
    for kind in sorted(by_kind):
        done = by_kind[kind]
        times = [f.restored - f.healed for f in done if f.restored is not None]
        counts = [failed_during(f, requests) for f in done]
        bad, total = sum(x for x, _ in counts), sum(n for _, n in counts)
        report.rows.append((kind, len(done), _pct(times, 50), f"{max(times):.1f}" if times else "-",
                            f"{bad}/{total}"))  # fmt: skip
    return report
