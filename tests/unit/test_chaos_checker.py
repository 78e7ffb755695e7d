"""The chaos suite's invariant checker (tests/chaos/checker.py) catches each planted
violation, and passes the same run without it: it cannot pass vacuously."""

from __future__ import annotations

import json

from tests.chaos.checker import Ack, Container, Fault, Limits, Request, Sample, Write, check


def task(slot: int, tid: str, epoch: int) -> bytes:
    return json.dumps({"task_id": tid, "service": "web", "slot": slot, "epoch": epoch}).encode()


def service(version: int, replicas: int = 2) -> bytes:
    return json.dumps({"name": "web", "version": version, "spec": {"replicas": replicas}}).encode()


HISTORY = [
    Write(5, "leader", b"h1", create_revision=5),
    Write(6, "services/web", service(1)),
    Write(7, "tasks/web/0", task(0, "a", 5)),
    Write(8, "tasks/web/1", task(1, "b", 5)),
    Write(20, "leader", None),
    Write(21, "leader", b"h2", create_revision=21),
    Write(22, "tasks/web/1", task(1, "c", 21)),
]
FAULT = Fault("engine_stop", "h2", start=10.0, healed=20.0, restored=24.0)


def sweep(t: float, *where: tuple[int, str, int]) -> list[Sample]:
    by_host: dict[int, list[Container]] = {1: [], 2: []}
    for host, tid, slot in where:
        by_host[host].append(Container("web", slot, tid))
    return [Sample(t, h, tuple(cs)) for h, cs in by_host.items()]


def good_samples() -> list[Sample]:
    out: list[Sample] = []
    for t in range(0, 10):
        out += sweep(float(t), (1, "a", 0), (2, "b", 1))
    for t in range(10, 24):  # h2's engine is down: b is gone, c starts on h1 at 23
        out += sweep(float(t), (1, "a", 0))
    for t in range(24, 40):
        out += sweep(float(t), (1, "a", 0), (1, "c", 1))
    return out


def requests(failed: int = 0) -> list[Request]:
    return [Request(10.0 + i * 0.05, ok=i >= failed) for i in range(200)]


def run(**over: object) -> list[str]:
    args: dict[str, object] = {
        "history": HISTORY,
        "samples": good_samples(),
        "requests": requests(),
        "acks": [Ack(1.0, "web", 1)],
        "faults": [FAULT],
        "desired": {"web": 2},
        "limits": Limits(handoff_window=5.0, recover_bound=30.0, max_failed=0.01),
    }
    args.update(over)
    return check(**args).violations  # type: ignore[arg-type]


def test_a_clean_run_passes_and_prints_its_table() -> None:
    report = check(HISTORY, good_samples(), requests(), [Ack(1.0, "web", 1)], [FAULT], {"web": 2})
    assert report.ok, report.violations
    assert "engine_stop" in report.table() and "4.0" in report.table()


def test_a_duplicated_container_of_a_slot_fails_the_run() -> None:
    dup = good_samples() + [s for t in range(24, 40) for s in sweep(float(t), (2, "b", 1))]
    assert any("slot web/1 ran two tasks" in v for v in run(samples=dup))


def test_a_short_overlap_within_the_handoff_window_passes() -> None:
    brief = good_samples() + [s for t in range(24, 28) for s in sweep(float(t), (2, "b", 1))]
    assert run(samples=brief) == []


def test_a_stale_epoch_write_fails_the_run() -> None:
    stale = [*HISTORY, Write(30, "tasks/web/0", task(0, "d", 5))]  # the old leader's epoch
    assert any("epoch 5; the leader's is 21" in v for v in run(history=stale))


def test_a_placement_rewritten_by_the_next_leader_keeps_its_epoch_and_passes() -> None:
    released = [*HISTORY, Write(30, "tasks/web/0", task(0, "a", 5))]  # e.g. a handoff released
    assert run(history=released) == []


def test_a_rewrite_from_the_future_or_without_a_leader_fails_the_run() -> None:
    ahead = [*HISTORY, Write(30, "tasks/web/0", task(0, "a", 99))]
    assert any("epoch 99; the leader's is 21" in v for v in run(history=ahead))
    orphan = [*HISTORY[:4], Write(20, "leader", None), Write(25, "tasks/web/0", task(0, "a", 5))]
    assert any("rewritten at revision 25 with epoch 5; the leader's is 0" in v for v in run(history=orphan))


def test_a_write_without_a_live_leader_key_fails_the_run() -> None:
    orphan = [*HISTORY[:5], Write(20, "tasks/web/0", task(0, "d", 5))]
    assert any("the leader's is 0" in v for v in run(history=orphan))


def test_a_lost_acknowledged_apply_fails_the_run() -> None:
    violations = run(acks=[Ack(1.0, "web", 1), Ack(30.0, "web", 2)])
    assert violations == ["apply of web v2 acknowledged at 30.0 is not in etcd"]


def test_a_missed_recovery_fails_the_run() -> None:
    never = [s for s in good_samples() if s.t < 24]
    assert any("not restored" in v for v in run(samples=never))
    late = run(limits=Limits(handoff_window=5.0, recover_bound=2.0))
    assert any("restored 4s after the last fault (bound 2s)" in v for v in late)


def test_too_many_failed_requests_during_a_fault_fail_the_run() -> None:
    assert run(requests=requests(failed=3)) == ["engine_stop on h2 at 10.0: 3/200 requests failed (> 1%)"]
    assert run(requests=requests(failed=2)) == []  # 1 %: within the bound


def test_a_run_without_evidence_fails() -> None:
    assert any("no evidence" in v for v in run(history=[], acks=[]))
    assert any("no evidence" in v for v in run(faults=[]))
