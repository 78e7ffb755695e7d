"""An idle leader stays idle, even with a rollout record of a removed service in etcd.

`shoal service rm` racing a rollout could leave `rollouts/<svc>` behind (the unit tests
in tests/unit/test_leader_orphans.py make the race happen); past its deadline the
leader re-planned every ~30 ms forever. Here the orphan record is written straight into
a real cluster's etcd, as that race leaves it; the leader must delete it and its CPU
over an idle window must stay low.

The issue asks for <= 2 % over 60 s; this test measures 15 s (the machine is shared, a
shorter window keeps the suite short) and compares the leader with a follower of the
same run: leader CPU <= follower CPU + 2 percentage points. CPU is read from
/proc/<pid>/stat (utime + stime of the daemon, every thread), no psutil.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from leader.rollout import PROGRESS_DEADLINE, RolloutState
from node.dev.devcluster import DevCluster, NodeProcess
from node.model.domain import RolloutRecord
from node.model.keys import Keys
from node.store.etcd import EtcdStore
from tests.helpers import on_store, wait_until_sync

pytestmark = pytest.mark.integration

WINDOW = 15.0  # s of idle measured


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)": field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(members: list[NodeProcess], window: float) -> list[float]:
    """Each member's CPU share over `window` seconds of wall time (a measurement, not a wait)."""
    pids = [m.proc.pid for m in members]  # type: ignore[union-attr]
    before, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
    time.sleep(window)
    after, took = [cpu_seconds(p) for p in pids], time.monotonic() - t0
    return [(a - b) / took for a, b in zip(after, before, strict=True)]


def test_an_orphan_rollout_record_is_deleted_and_the_leader_stays_idle(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster()
    with cluster.client() as c:
        leader_id = next(n.id for n in c.list_nodes().nodes if n.leader)
    leader = next(m for m in cluster.members if m.node_id == leader_id)
    follower = next(m for m in cluster.members if m is not leader)
    keys = Keys(prefix=cluster.prefix)
    given = time.time() - PROGRESS_DEADLINE - 60  # past its progress deadline
    orphan = RolloutRecord(
        "gone", 1, 2, "t2", state=RolloutState.UPDATING.value, batch={"1": given}, started_at=given
    )

    async def put(store: EtcdStore) -> None:
        await store.put(keys.rollout("gone"), orphan.to_json())

    async def left(store: EtcdStore) -> bool:
        return await store.get(keys.rollout("gone")) is not None

    on_store(cluster.etcd.endpoint, put)
    leader_share, follower_share = cpu_share([leader, follower], WINDOW)
    print(
        f"CPU over {WINDOW:.0f} s idle, an orphan record: "
        f"leader {leader_share:.1%}, follower {follower_share:.1%}"
    )
    assert leader_share <= follower_share + 0.02, (
        f"leader {leader_share:.1%} vs follower {follower_share:.1%}: the leader busy-loops"
    )
    wait_until_sync(lambda: not on_store(cluster.etcd.endpoint, left), 10, message="orphan record deleted")
