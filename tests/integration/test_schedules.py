"""Scheduled jobs on a real cluster (issue 18 item 3): each tick runs once, `forbid` skips
a tick while the last run goes, a leader killed with SIGKILL a second before a tick
neither skips nor doubles it; and a viewer token reads jobs but cannot start one.

Schedules here have a seconds field (`*/5 * * * * *`, `node.model.cron`) so a tick comes
every few seconds instead of every minute. Container starts are counted from Docker's
own event log (`docker events` since the test began, by the task's service label): the
cluster's records are checked against what really ran."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from leader import crashpoint
from node.dev.devcluster import DevCluster, NodeProcess
from node.pb import jobs_pb2
from node.runtime.base import LABELS
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGE = "shoal-demo/base:1"


def shoal(cluster: DevCluster, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(REPO)}
    if token is not None:
        env["SHOAL_TOKEN"] = token
    cmd = [sys.executable, "-m", "node.cli.main", "--addr", cluster.members[0].addr, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def scheduled(name: str, cron: str, script: str, **schedule: str) -> str:
    extra = "".join(f", {k}: {v}" for k, v in schedule.items())
    return (
        f"name: {name}\nimage: {IMAGE}\nkind: job\n"
        f'command: ["sh", "-c", {script!r}]\n'
        f'schedule: {{cron: "{cron}"{extra}}}\n'
    )


def runs(cluster: DevCluster, name: str, member: int = 1) -> list[jobs_pb2.JobRun]:
    with cluster.client(member) as c:
        return list(c._jobs("ListRuns", jobs_pb2.ListRunsRequest(name=name)).runs)


def starts(cluster: DevCluster, service: str, since: float, until: float) -> int:
    """Containers of `service` in this cluster that Docker started in [since, until]."""
    client = docker.from_env()
    try:
        labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}={service}"]
        filters = {"type": "container", "event": "start", "label": labels}
        return len(list(client.events(since=int(since), until=int(until) + 1, filters=filters, decode=True)))
    finally:
        client.close()


def leader(cluster: DevCluster) -> NodeProcess:
    alive = next(m for m in cluster.members if m.alive())
    with cluster.client(alive.index) as c:
        node = next(n.id for n in c.list_nodes().nodes if n.leader)
    return next(m for m in cluster.members if m.node_id == node)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster.on_free_ports(tmp_path_factory.mktemp("schedules"), nodes=2)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_a_schedule_runs_once_per_tick(cluster: DevCluster) -> None:
    since = time.time()
    with cluster.client() as c:
        c.apply(scheduled("every5", "*/5 * * * * *", "echo ran; sleep 1"))

    def three_done() -> list[jobs_pb2.JobRun] | None:
        done = [r for r in runs(cluster, "every5") if r.outcome == "succeeded"]
        return done if len(done) >= 3 else None

    done = wait_until_sync(three_done, 60, 0.5, "3 runs succeeded")[:3]
    assert runs(cluster, "every5")[:3] == done, "the first tick after the apply fired, then each one"
    ticks = [r.tick for r in done]
    assert ticks == [ticks[0], ticks[0] + 5, ticks[0] + 10], "three ticks in a row, each once"
    assert all(len(r.task_ids) == 1 for r in done) and len({r.task_ids[0] for r in done}) == 3
    assert all(0 <= r.fired_at - r.tick < 5 for r in done), "fired at the tick, before the next one"
    assert starts(cluster, "every5", since, done[2].finished_at) == 3, "Docker started 3 containers"
    with cluster.client() as c:
        c.delete_service("every5")
    gone = shoal(cluster, "job", "runs", "every5")
    assert gone.returncode != 0 and "no job named" in gone.stderr


def test_job_runs_lists_ticks_and_task_logs_read_the_last_run(cluster: DevCluster) -> None:
    with cluster.client() as c:
        c.apply(scheduled("listed", "*/5 * * * * *", "echo hello from a tick"))
    wait_until_sync(
        lambda: len([r for r in runs(cluster, "listed") if r.outcome == "succeeded"]) >= 2, 40, 0.5, "2 runs"
    )
    with cluster.client() as c:  # no more ticks: the last run's task stays in its slot
        c.apply(scheduled("listed", "0 0 1 1 *", "echo hello from a tick"))

    def last_ended() -> jobs_pb2.JobRun | None:
        last = runs(cluster, "listed")[-1]
        return last if last.outcome != "running" else None

    last = wait_until_sync(last_ended, 30, 0.3, "the last run ended")
    assert last.outcome == "succeeded"
    out = shoal(cluster, "job", "runs", "listed")
    assert out.returncode == 0 and out.stdout.count("succeeded") >= 2, out.stderr
    logs = shoal(cluster, "task", "logs", last.task_ids[0])
    assert "hello from a tick" in logs.stdout, logs.stderr
    status = shoal(cluster, "job", "status", "listed")
    assert "schedule 0 0 1 1 * (UTC), next tick" in status.stdout, status.stdout
    with cluster.client() as c:
        c.delete_service("listed")


def test_forbid_skips_a_tick_while_the_previous_run_goes(cluster: DevCluster) -> None:
    since = time.time()
    with cluster.client() as c:
        c.apply(scheduled("slow", "*/5 * * * * *", "sleep 8", concurrency="forbid"))

    def fired_twice() -> list[jobs_pb2.JobRun] | None:
        got = runs(cluster, "slow")
        fired = [r for r in got if r.outcome not in ("skipped", "missed")]
        return got if len(fired) >= 2 and fired[0].outcome == "succeeded" else None

    got = wait_until_sync(fired_twice, 60, 0.5, "a second run after the first")
    outcomes = [r.outcome for r in got]
    first = outcomes.index("succeeded")
    second = next(i for i, o in enumerate(outcomes) if i > first and o not in ("skipped", "missed"))
    between = outcomes[first + 1 : second]
    assert between and set(between) == {"skipped"}, outcomes  # 8 s of work, a tick every 5 s
    a, b = got[first], got[second]
    assert b.fired_at >= a.finished_at, "the runs never overlapped"
    with cluster.client() as c:
        c.delete_service("slow")
    fired = [o for o in outcomes[: second + 1] if o not in ("skipped", "missed")]
    assert starts(cluster, "slow", since, b.fired_at + 3) == len(fired), "Docker agrees"


@pytest.mark.parametrize("round_", range(3))
def test_a_leader_killed_a_second_before_a_tick_fires_it_exactly_once(
    cluster: DevCluster, round_: int
) -> None:
    """SIGKILL of the leader one second before a tick (every 20 s, deadline 15 s): the next
    leader fires that tick once; the record, the run's task and Docker's starts agree."""
    name = f"kill{round_}"
    with cluster.client() as c:
        c.apply(scheduled(name, "*/20 * * * * *", "echo tick", starting_deadline="15s"))
    tick = (int(time.time()) // 20 + 1) * 20
    if tick - time.time() < 4:
        tick += 20  # room for the kill a second before
    wait_until_sync(lambda: time.time() >= tick - 1 or None, 25, 0.05, "a second before the tick")
    dead = leader(cluster)
    dead.kill(signal.SIGKILL)
    survivor = next(m for m in cluster.members if m is not dead)
    try:

        def settled() -> list[jobs_pb2.JobRun] | None:
            got = [r for r in runs(cluster, name, survivor.index) if r.tick == tick]
            return got if got and got[0].outcome != "running" else None

        [run] = wait_until_sync(settled, 40, 0.5, f"tick {tick} decided by the next leader")
        assert run.outcome == "succeeded", run
        assert len(run.task_ids) == 1
        print(f"tick {tick}: fired {run.fired_at - tick:.2f}s after it, by the next leader")
        with cluster.client(survivor.index) as c:
            job = c.get_job(name)
        assert [i.attempts for i in job.indexes] == [1]
        assert starts(cluster, name, tick - 2, min(time.time(), tick + 15)) == 1, "one container for the tick"
    finally:
        dead.start()
        cluster.wait_ready(30)
        with cluster.client(survivor.index) as c:
            c.delete_service(name)


def test_a_viewer_lists_jobs_and_runs_but_cannot_run_one(cluster: DevCluster) -> None:
    with cluster.client() as c:
        c.apply(scheduled("seen", "0 0 1 1 *", "true"))
        viewer = c.create_token("viewer", "schedules test viewer").token
    listed = shoal(cluster, "job", "ls", token=viewer)
    assert listed.returncode == 0 and "seen" in listed.stdout, listed.stderr
    ran = shoal(cluster, "job", "runs", "seen", token=viewer)
    assert ran.returncode == 0, ran.stderr
    refused = shoal(cluster, "run", IMAGE, "--", "true", token=viewer)
    assert refused.returncode != 0 and "role viewer" in refused.stderr, refused.stderr
    with cluster.client() as c:
        assert not [j for j in c.list_jobs() if j.name.startswith("run-")], "nothing was stored"
        c.delete_service("seen")


def test_replace_ends_the_running_run_and_starts_the_tick(cluster: DevCluster) -> None:
    since = time.time()
    with cluster.client() as c:
        c.apply(scheduled("swap", "*/10 * * * * *", "sleep 60", concurrency="replace"))

    def replaced() -> list[jobs_pb2.JobRun] | None:
        got = runs(cluster, "swap")
        return got if len(got) >= 2 and got[1].outcome == "running" else None

    got = wait_until_sync(replaced, 40, 0.3, "a second tick replaced the first run")
    assert got[0].outcome == "replaced" and got[1].tick == got[0].tick + 10, got
    with cluster.client() as c:
        # The run records change in one transaction; the replaced run's task is told to
        # stop, and the new run's task placed, by the passes after it.
        def swapped() -> list[str] | None:
            wanted = [t.task_id for t in c.list_tasks("swap") if t.desired == "running"]
            return wanted if len(wanted) == 1 and wanted[0] not in got[0].task_ids else None

        wait_until_sync(swapped, 30, 0.3, "the replaced run's task stopped, the new run's task placed")
        wait_until_sync(lambda: c.list_tasks("swap")[0].state == "running" or None, 30, 0.3)
        c.delete_service("swap")
    assert starts(cluster, "swap", since, got[1].fired_at + 5) == 2


def test_a_leader_killed_right_after_recording_a_tick_does_not_fire_it_again(
    make_cluster: Callable[..., DevCluster], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGKILL of the leader just after the tick's record and run committed, before any
    task (`crashpoint.SCHEDULE_FIRED`): the next leader runs that tick's run, once."""
    marker = tmp_path / "crashed"
    monkeypatch.setenv(crashpoint.ENV, f"{crashpoint.SCHEDULE_FIRED}:{marker}")
    cluster = make_cluster(nodes=2)
    since = time.time()
    with cluster.client() as c:
        c.apply(scheduled("once", "*/20 * * * * *", "echo once", starting_deadline="15s"))
    wait_until_sync(marker.exists, 40, 0.2, "the leader reached schedule.fired")
    dead = wait_until_sync(lambda: next((m for m in cluster.members if not m.alive()), None), 10, 0.1)
    survivor = next(m for m in cluster.members if m is not dead)

    def settled() -> jobs_pb2.JobRun | None:
        got = runs(cluster, "once", survivor.index)
        return got[0] if got and got[0].outcome != "running" else None

    run = wait_until_sync(settled, 40, 0.5, "the next leader ran the recorded tick")
    assert run.outcome == "succeeded" and len(run.task_ids) == 1
    assert len([r for r in runs(cluster, "once", survivor.index) if r.tick == run.tick]) == 1
    assert starts(cluster, "once", since, min(time.time(), run.tick + 15)) == 1, "one container"


MIGRATION = """\
services:
  migrate:
    image: shoal-demo/base:1
    command: ["sh", "-c", "sleep 4; echo migrated"]
    restart: "no"
    deploy: {restart_policy: {condition: none}}
  web:
    image: shoal-demo/base:1
    command: ["sh", "-c", "echo serving; sleep 600"]
    depends_on: {migrate: {condition: service_completed_successfully}}
"""


def test_a_stack_web_tier_waits_for_its_migration_job(cluster: DevCluster, tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text(MIGRATION)
    out = shoal(cluster, "stack", "deploy", "-c", str(compose), "shop")
    assert out.returncode == 0, out.stderr
    with cluster.client() as c:
        wait_until_sync(
            lambda: c.get_job("shop_migrate").state == "running" or None, 60, 0.3, "the migration runs"
        )
        ps = shoal(cluster, "stack", "ps", "shop")
        assert "waiting for migrate (completed)" in ps.stdout, ps.stdout
        assert list(c.tasks("shop_web").tasks) == [], "no web task while the migration runs"
        job = wait_until_sync(
            lambda: c.get_job("shop_migrate") if c.get_job("shop_migrate").state != "running" else None,
            60,
            0.3,
        )
        assert job.state == "succeeded"

        def web_running() -> list[object] | None:
            return [t for t in c.tasks("shop_web").tasks if t.state == "running"] or None

        wait_until_sync(web_running, 60, 0.3, "web starts after the migration succeeded")
    removed = shoal(cluster, "stack", "rm", "shop")
    assert removed.returncode == 0, removed.stderr
