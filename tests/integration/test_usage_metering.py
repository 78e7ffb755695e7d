"""Usage metering on a real three-node cluster (issue 15 item 4, decision 67).

A service of known size (2 replicas of 0.5 vCPU and 64 MiB, kept off the leader's node)
runs; the nodes meter in 2-s intervals (`SHOAL_USAGE_INTERVAL=2`) and the leader rolls
intervals older than 6 s into day totals. What was reserved comes from the engine
itself: the sum over the two containers of (their node's cursor - their
State.StartedAt) times their size. Checked, each within 1 %, on one consistent read of
etcd's usage/ keys (and the report read between two equal reads says exactly the same):
- after the first roll-up, a `kill -9` of the leader, a new leader, the old one back;
- once every raw interval recorded by then is rolled up by the new leader;
- `shoal usage --by service --json` (priced with a rate card set by `shoal usage rates
  set`), `--by node`, `--by label:KEY`, a bad `--by`, and the `/metrics` counters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from node.dev.devcluster import DevCluster, NodeProcess
from node.model.keys import DEFAULT_PREFIX
from node.model.usage_ledger import MeterState, Record, UsageKeys
from node.pb import api_pb2
from node.runtime.base import LABELS, engine_time
from node.wire.client import ShoalClient
from tests.helpers import on_store, wait_until_sync

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 2
ROLLUP_AFTER = 6
CPU, MIB = 0.5, 64
SPEC = """\
name: meter
image: shoal-demo/web:1
replicas: 2
resources: {{cpu: 0.5, memory: 64Mi}}
placement: {{constraints: ["node.id != {leader}"]}}
"""
TOLERANCE = 0.01


def client(member: NodeProcess) -> ShoalClient:
    return ShoalClient(member.addr, timeout=5.0, context_file=member.context_file)


def leader_of(cluster: DevCluster, ask: NodeProcess) -> tuple[NodeProcess | None, int]:
    with client(ask) as c:
        resp = c.list_nodes()
    ids = [n.id for n in resp.nodes if n.leader]
    return next((m for m in cluster.members if m.node_id in ids), None), resp.epoch


def started(cluster: DevCluster) -> dict[str, float]:
    """The running replicas' containers -> their engine start time."""
    return {cid: at for cid, (_, at) in placed(cluster).items()}


def placed(cluster: DevCluster) -> dict[str, tuple[str, float]]:
    """The running replicas' containers -> (their node, their engine start time)."""
    engine = docker.from_env()
    try:
        found = engine.containers.list(
            filters={"label": [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}=meter"]}
        )
        return {
            c.id: (
                c.labels[LABELS.NODE],
                engine_time(engine.api.inspect_container(c.id)["State"]["StartedAt"]),
            )
            for c in found
        }
    finally:
        engine.close()


@dataclass(frozen=True)
class Snap:
    """One consistent read of etcd's usage/ (raw intervals, day totals, cursors)."""

    vcpu: float  # vCPU-s recorded for `meter`
    gib: float
    want_vcpu: float  # what its replicas reserved up to their nodes' cursors
    want_gib: float
    cursor: int  # the lowest cursor of the replicas' nodes
    raw: int  # raw records left
    mark: tuple[tuple[str, int], ...]  # every key and its mod revision: equal marks, equal data


def snapshot(cluster: DevCluster, where: dict[str, tuple[str, float]]) -> Snap | None:
    """None while a replica's node has no cursor past its start."""
    keys = UsageKeys(DEFAULT_PREFIX)

    async def read(store: Any) -> Snap | None:
        kvs, _ = await store.range(f"{DEFAULT_PREFIX}usage/")
        cursors = {
            kv.key[len(keys.cursors) :]: MeterState.from_json(kv.value).end
            for kv in kvs
            if kv.key.startswith(keys.cursors)
        }
        records = [Record.from_json(kv.value) for kv in kvs if kv.key.startswith((keys.raw, keys.days))]
        mine = [r.tally for r in records if r.dims.service == "meter"]
        if any(cursors.get(node, 0) <= at for node, at in where.values()):
            return None
        seconds = sum(cursors[node] - at for node, at in where.values())
        return Snap(
            sum(t.reserved_vcpu_s for t in mine),
            sum(t.reserved_gib_s for t in mine),
            CPU * seconds,
            MIB / 1024 * seconds,
            min(cursors[node] for node, _ in where.values()),
            sum(1 for kv in kvs if kv.key.startswith(keys.raw)),
            tuple((kv.key, kv.mod_revision) for kv in kvs),
        )

    return on_store(cluster.etcd.endpoint, read)


def consistent(
    cluster: DevCluster, where: dict[str, tuple[str, float]], member: NodeProcess, after: float
) -> Callable[[], tuple[Snap, api_pb2.UsageRow]]:
    """A report read between two equal snapshots whose cursors are past `after`."""

    def read() -> tuple[Snap, api_pb2.UsageRow]:
        before = snapshot(cluster, where)
        rows = {r.key: r for r in report(member, 0.0).rows}
        again = snapshot(cluster, where)
        assert before is not None and again is not None and before.cursor > after, "cursors not there yet"
        assert before.mark == again.mark, "usage changed during the read"
        return before, rows["meter"]

    return read


def check(snap: Snap, row: api_pb2.UsageRow) -> None:
    assert close_to(snap.vcpu, snap.want_vcpu), (snap.vcpu, snap.want_vcpu)
    assert close_to(snap.gib, snap.want_gib), (snap.gib, snap.want_gib)
    assert row.vcpu_hours_reserved * 3600 == pytest.approx(snap.vcpu, rel=1e-9)
    assert row.gib_hours_reserved * 3600 == pytest.approx(snap.gib, rel=1e-9)


def two_running(cluster: DevCluster) -> dict[str, float] | None:
    found = started(cluster)
    return found if len(found) == 2 else None


def new_leader(cluster: DevCluster, ask: NodeProcess, after: int) -> tuple[NodeProcess, int] | None:
    member, epoch = leader_of(cluster, ask)
    return (member, epoch) if member is not None and epoch > after else None


def expected(starts: dict[str, float], until: float) -> tuple[float, float]:
    """(vCPU-s, GiB-s) the replicas reserved up to `until`."""
    seconds = sum(until - s for s in starts.values())
    return CPU * seconds, MIB / 1024 * seconds


def report(member: NodeProcess, until: float) -> api_pb2.UsageReportResponse:
    with client(member) as c:
        answer: api_pb2.UsageReportResponse = c._unary(
            "UsageReport", api_pb2.UsageReportRequest(until=until, by="service")
        )
    return answer


def close_to(got: float, want: float) -> bool:
    return abs(got - want) <= TOLERANCE * want


def raw_before(cluster: DevCluster, until: float) -> int:
    keys = UsageKeys(DEFAULT_PREFIX)

    async def count(store: Any) -> int:
        kvs, _ = await store.range(keys.raw)
        return sum(1 for kv in kvs if int(kv.key[len(keys.raw) :].split("/")[0]) < until)

    return on_store(cluster.etcd.endpoint, count)


def shoal(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "node.cli.main", "--addr", cluster.endpoints, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_reserved_usage_is_exact_across_a_leader_kill(
    make_cluster: Callable[..., DevCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOAL_USAGE_INTERVAL", str(INTERVAL))
    monkeypatch.setenv("SHOAL_USAGE_ROLLUP_AFTER", str(ROLLUP_AFTER))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    cluster = make_cluster(3)
    first = cluster.members[0]
    leader, epoch = wait_until_sync(lambda: new_leader(cluster, first, 0), 30, 0.2, "a leader")
    with client(first) as c:
        c.apply(SPEC.format(leader=leader.node_id), "meter.yaml")
    starts = wait_until_sync(lambda: two_running(cluster), 60, 0.2, "2 replicas running")
    where = placed(cluster)
    others = [m for m in cluster.members if m is not leader]

    # the first roll-up (by the first leader) has happened
    wait_until_sync(lambda: report(others[0], time.time()).day_records, 45, 0.5, "a first day total")

    leader.kill(signal.SIGKILL)
    killed_at = time.time()
    new = wait_until_sync(lambda: new_leader(cluster, others[0], epoch), 20, 0.2, "a new leader")
    leader.start()
    assert started(cluster) == starts, "the replicas kept running (nothing moved)"

    # recorded (etcd) = reserved (the engine's start times x size) across the kill, and the
    # report says what etcd holds
    snap, row = wait_until_sync(
        consistent(cluster, where, others[0], killed_at + INTERVAL), 30, 0.2, "a read"
    )
    check(snap, row)
    print(f"\nacross the kill: {snap.vcpu:.3f} vCPU-s recorded, {snap.want_vcpu:.3f} reserved; "
          f"new leader {new[0].node_id}")  # fmt: skip

    # every raw interval before that cursor rolled up, by the new leader: the same again
    wait_until_sync(lambda: raw_before(cluster, snap.cursor) == 0, 40, 0.5, "raw intervals rolled up")
    snap, row = wait_until_sync(consistent(cluster, where, others[0], snap.cursor), 30, 0.2, "a read")
    check(snap, row)
    print(
        f"after the roll-up: {snap.vcpu:.3f} vCPU-s recorded, {snap.want_vcpu:.3f} reserved, {snap.raw} raw"
    )
    assert row.vcpu_hours_used >= 0 and row.gib_hours_used > 0, "used memory sampled from the cgroups"

    # the CLI, priced
    done = shoal(cluster, "usage", "rates", "set", "--vcpu-hour", "0.04048", "--gib-hour", "0.004445")
    assert done.returncode == 0, done.stderr
    # rolled up to whole days now: bracketed by what was recorded before the call and what
    # the replicas reserved until after it
    first = snapshot(cluster, where)
    before = first.vcpu if first is not None else 0.0
    done = shoal(cluster, "usage", "--by", "service", "--json")
    after = expected(starts, time.time())
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = {r["key"]: r for r in data["rows"]}
    reserved = rows["meter"]["vcpu_hours_reserved"] * 3600
    assert before * (1 - TOLERANCE) <= reserved <= after[0] * (1 + TOLERANCE)
    gib = rows["meter"]["gib_hours_reserved"] * 3600
    assert close_to(gib, reserved * MIB / 1024 / CPU)
    cost = rows["meter"]["vcpu_hours_reserved"] * 0.04048 + rows["meter"]["gib_hours_reserved"] * 0.004445
    assert rows["meter"]["cost"] == pytest.approx(cost)
    assert data["rates"] == {
        "vcpu_hour": 0.04048,
        "gib_hour": 0.004445,
        "node_hour": 0.0,
        "currency": "USD",
        "set": True,
    }
    by_node = json.loads(shoal(cluster, "usage", "--by", "node", "--json").stdout)
    assert {r["key"] for r in by_node["rows"]} == {m.node_id for m in cluster.members}
    assert all(r["node_hours"] > 0 for r in by_node["rows"])
    by_label = json.loads(shoal(cluster, "usage", "--by", "label:dev.index", "--json").stdout)
    assert {r["key"] for r in by_label["rows"]} >= {"1", "2", "3"}
    bad = shoal(cluster, "usage", "--by", "task")
    assert bad.returncode != 0 and "--by must be service, stack, node or label:KEY" in bad.stderr

    # /metrics: the counters of the nodes running the replicas
    total, seen = 0.0, []
    for m in others:
        port = cluster.metrics_port
        with urllib.request.urlopen(f"http://{m.address}:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            seen += [line] if line.startswith("shoal_usage_") else []
            if line.startswith('shoal_usage_vcpu_seconds_total{kind="reserved",service="meter"}'):
                total += float(line.rsplit(" ", 1)[1])
    assert 0 < total <= expected(starts, time.time())[0] * (1 + TOLERANCE), seen
