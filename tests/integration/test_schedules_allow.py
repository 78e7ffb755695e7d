"""`concurrency: allow` on a real cluster (decision 69): a schedule whose run outlasts its
period runs overlapping runs, each in its own slots and recorded with its own outcome;
an earlier run's container keeps its logs while its record is kept; a leader killed with
SIGKILL a second before a tick while a run goes fires that tick exactly once.

Ticks come every few seconds (a seconds field, `node.model.cron`); container starts are
counted from Docker's own event log, as in `test_schedules.py`."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator

import docker
import pytest

from node.dev.devcluster import DevCluster
from node.model.runs import lane_of
from node.pb import jobs_pb2
from node.runtime.base import LABELS
from tests.helpers import wait_until_sync
from tests.integration.test_schedules import leader, runs, scheduled, shoal

pytestmark = pytest.mark.integration


def start_ids(cluster: DevCluster, service: str, since: float, until: float) -> list[str]:
    """The task ids of the containers of `service` that Docker started in [since, until]."""
    client = docker.from_env()
    try:
        labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}={service}"]
        filters = {"type": "container", "event": "start", "label": labels}
        events = client.events(since=int(since), until=int(until) + 1, filters=filters, decode=True)
        return [e["Actor"]["Attributes"][LABELS.TASK] for e in events]
    finally:
        client.close()


def started(cluster: DevCluster, task_id: str, since: float) -> int:
    """Containers of this task that Docker started since `since`."""
    client = docker.from_env()
    try:
        labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.TASK}={task_id}"]
        filters = {"type": "container", "event": "start", "label": labels}
        until = int(time.time()) + 1
        return len(list(client.events(since=int(since), until=until, filters=filters, decode=True)))
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster.on_free_ports(tmp_path_factory.mktemp("allow"), nodes=2)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_runs_longer_than_the_period_overlap_each_with_its_own_outcome(cluster: DevCluster) -> None:
    since = time.time()
    script = 'echo "run of $(hostname)"; sleep 9; test -e /etc/hostname'
    with cluster.client() as c:
        c.apply(scheduled("overlap", "*/4 * * * * *", script, concurrency="allow"))

    def three_done() -> list[jobs_pb2.JobRun] | None:
        got = [r for r in runs(cluster, "overlap") if r.outcome != "running"]
        return got if len(got) >= 3 else None

    done = wait_until_sync(three_done, 60, 0.5, "3 runs ended")[:3]
    assert [r.outcome for r in done] == ["succeeded"] * 3, done
    assert [r.tick for r in done] == [done[0].tick + 4 * i for i in range(3)], "every tick fired"
    assert all(b.fired_at < a.finished_at for a, b in itertools.pairwise(done)), "they overlapped"
    assert len({r.task_ids[0] for r in done}) == 3 and all(len(r.task_ids) == 1 for r in done)
    with cluster.client() as c:
        slots = {t.task_id: t.slot for t in c.list_tasks("overlap")}
        # No more ticks. The change rolls the runs still going (`schedule` is in the template)
        # and must leave the ended runs' tasks where they are (their slots are not the view's).
        c.apply(scheduled("overlap", "0 0 1 1 *", script, concurrency="allow"))
    lanes = {lane_of(slots[r.task_ids[0]]) for r in done}
    assert len(lanes) == 3, f"each run in its own slots: {slots}"
    listed = shoal(cluster, "job", "runs", "overlap")
    assert listed.returncode == 0 and listed.stdout.count("succeeded") >= 3, listed.stderr
    for run in done:  # an earlier run's output stays readable while its record is kept
        logs = shoal(cluster, "task", "logs", run.task_ids[0])
        assert logs.returncode == 0 and "run of" in logs.stdout, logs.stderr
    for run in done:
        assert started(cluster, run.task_ids[0], since) == 1, "Docker started each run's container once"
    with cluster.client() as c:
        c.delete_service("overlap")


@pytest.mark.parametrize("round_", range(2))
def test_a_leader_killed_a_second_before_a_tick_while_a_run_goes_fires_it_once(
    cluster: DevCluster, round_: int
) -> None:
    """Every 10 s, each run 14 s: the tick the leader dies before is fired once, next to
    the run still going, by the next leader."""
    name = f"akill{round_}"
    with cluster.client() as c:
        c.apply(
            scheduled(
                name, "*/10 * * * * *", "sleep 14; echo tick", concurrency="allow", starting_deadline="8s"
            )
        )
    first = wait_until_sync(lambda: runs(cluster, name) or None, 25, 0.2, "a first run")[0]
    tick = int(first.tick) + 10
    if tick - time.time() < 3:
        tick += 10
    wait_until_sync(lambda: time.time() >= tick - 1 or None, 25, 0.05, "a second before the tick")
    assert any(r.outcome == "running" for r in runs(cluster, name)), "a run goes at the kill"
    dead = leader(cluster)
    dead.kill(signal.SIGKILL)
    survivor = next(m for m in cluster.members if m is not dead)
    try:

        def settled() -> dict[float, jobs_pb2.JobRun] | None:
            got = {r.tick: r for r in runs(cluster, name, survivor.index) if r.tick in (tick - 10, tick)}
            return got if len(got) == 2 and all(r.outcome != "running" for r in got.values()) else None

        got = wait_until_sync(settled, 60, 0.5, f"tick {tick} and the run going at the kill ended")
        run, going = got[tick], got[tick - 10]
        assert [len(r.task_ids) for r in runs(cluster, name, survivor.index) if r.tick == tick] == [1]
        assert run.outcome == going.outcome == "succeeded", got
        print(f"allow, tick {tick}: fired {run.fired_at - tick:.2f}s after it, by the next leader")
        # Every container Docker started from a second before the tick until now. The tick's
        # may start late under load (placed on the dead node, it starts on the survivor once
        # that node is found down), so the window ends now, not at a fixed time. The runs are
        # read after the events: an ended run holds its task ids (the going one's include its
        # retry on the survivor, a lost task, not an outcome); a later tick's run still going
        # holds none yet, so each of those may account for one start. A second container
        # fired for the tick would be one start too many.
        ids = start_ids(cluster, name, tick - 1, time.time())
        listed = runs(cluster, name, survivor.index)
        holder = {i: r.tick for r in listed for i in r.task_ids}
        assert [i for i in ids if holder.get(i) == tick] == [run.task_ids[0]], "one container for the tick"
        later = [r.tick for r in listed if r.tick > tick and r.outcome == "running"]
        unheld = [i for i in ids if i not in holder]
        assert len(unheld) <= len(later), f"starts {unheld} for the runs still going at {later}"
    finally:
        dead.start()
        cluster.wait_ready(30)
        with cluster.client(survivor.index) as c:
            c.delete_service(name)
