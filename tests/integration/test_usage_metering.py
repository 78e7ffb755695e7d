"""Usage metering on a real three-node cluster (issue 15 item 4, decision 67).

A service of known size (2 replicas of 0.5 vCPU and 64 MiB) runs; the nodes meter in
2-s intervals (`SHOAL_USAGE_INTERVAL=2`) and the leader rolls intervals older than 6 s
into day totals. The expected reserved figures come from the engine itself: the sum
over the two containers of (B - their State.StartedAt) times their size, B an interval
boundary. Checked, each within 1 %:
- after the first roll-up, `kill -9` of the leader (the replicas run elsewhere, so
  nothing else moves), a new leader, the old one back: the report up to B;
- once every raw interval before B is rolled up (by the new leader): the same report
  again (rolled, nothing lost or doubled);
- `shoal usage --by service --json` (priced with a rate card set by `shoal usage rates
  set`), and the `/metrics` counters.
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
from pathlib import Path
from typing import Any

import docker
import pytest

from node.daemon.usage_meter import engine_time
from node.dev.devcluster import DevCluster, NodeProcess
from node.model.keys import DEFAULT_PREFIX
from node.model.usage_ledger import MeterState, Record, UsageKeys, interval_start
from node.pb import api_pb2
from node.runtime.base import LABELS
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


def snapshot(cluster: DevCluster, where: dict[str, tuple[str, float]]) -> tuple[float, float, int] | None:
    """One consistent read of etcd's usage/ (raw intervals, day totals, cursors): the vCPU-s
    recorded for `meter`, those its replicas reserved up to their nodes' cursors, the raw
    records left. None while a replica's node has no cursor past its start."""
    keys = UsageKeys(DEFAULT_PREFIX)

    async def read(store: Any) -> tuple[float, float, int] | None:
        kvs, _ = await store.range(f"{DEFAULT_PREFIX}usage/")
        cursors = {
            kv.key[len(keys.cursors) :]: MeterState.from_json(kv.value).end
            for kv in kvs
            if kv.key.startswith(keys.cursors)
        }
        records = [Record.from_json(kv.value) for kv in kvs if kv.key.startswith((keys.raw, keys.days))]
        got = sum(r.tally.reserved_vcpu_s for r in records if r.dims.service == "meter")
        if any(cursors.get(node, 0) <= at for node, at in where.values()):
            return None
        want = sum(CPU * (cursors[node] - at) for node, at in where.values())
        return got, want, sum(1 for kv in kvs if kv.key.startswith(keys.raw))

    return on_store(cluster.etcd.endpoint, read)


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


def matches(member: NodeProcess, starts: dict[str, float], until: float) -> Callable[[], Any]:
    def check() -> Any:
        answer = report(member, until)
        rows = {r.key: r for r in answer.rows}
        vcpu, gib = expected(starts, until)
        row = rows.get("meter")
        if row is None:
            return None
        got = (row.vcpu_hours_reserved * 3600, row.gib_hours_reserved * 3600)
        return answer if close_to(got[0], vcpu) and close_to(got[1], gib) else None

    return check


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

    boundary = interval_start(time.time(), INTERVAL) + 2 * INTERVAL  # its interval closes soon
    assert boundary > killed_at
    answer = wait_until_sync(matches(others[0], starts, boundary), 30, 0.5, "reserved within 1 % up to B")
    print(f"\nreserved to B: {answer.rows[0].vcpu_hours_reserved * 3600:.3f} vCPU-s "
          f"(expected {expected(starts, boundary)[0]:.3f}), new leader {new[0].node_id}")  # fmt: skip

    # every raw interval before B rolled up, by the new leader: still within 1 %, nothing twice
    wait_until_sync(lambda: raw_before(cluster, boundary) == 0, 40, 0.5, "raw intervals before B rolled up")
    got, want, raw_left = wait_until_sync(lambda: snapshot(cluster, where), 10, 0.5, "cursors")
    print(f"after the roll-up: {got:.3f} vCPU-s recorded, {want:.3f} reserved to the cursors, {raw_left} raw")
    assert close_to(got, want)
    row = answer.rows[0]
    assert row.vcpu_hours_used >= 0 and row.gib_hours_used > 0, "used memory sampled from the cgroups"

    # the CLI, priced
    done = shoal(cluster, "usage", "rates", "set", "--vcpu-hour", "0.04048", "--gib-hour", "0.004445")
    assert done.returncode == 0, done.stderr
    # rolled up to whole days now: bracketed by what was recorded before the call and what
    # the replicas reserved until after it
    before, _, _ = snapshot(cluster, where) or (0.0, 0.0, 0)
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
