"""Jobs on a real cluster (issue 18): `shoal run`, completions and parallelism, retries
with back-off, and a leader killed between recording an outcome and starting the next
task. The CLI runs as a process (`python -m node.cli.main`) through node 1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from leader import crashpoint
from node.dev.devcluster import DevCluster
from node.pb import api_pb2
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGE = "shoal-demo/base:1"


def shoal(cluster: DevCluster, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "node.cli.main", "--addr", cluster.members[0].addr, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def job_yaml(name: str, script: str, **job: object) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in job.items())
    return f'name: {name}\nimage: {IMAGE}\nkind: job\ncommand: ["sh", "-c", {script!r}]\njob: {{{fields}}}\n'


def job_ended(cluster: DevCluster, name: str, timeout: float) -> object:
    with cluster.client() as c:

        def ended() -> object:
            j = c.get_job(name)
            return j if j.state in ("succeeded", "failed") else None

        return wait_until_sync(ended, timeout, 0.3, f"job {name} ended")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster.on_free_ports(tmp_path_factory.mktemp("jobs"), nodes=2)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_run_prints_the_output_and_exits_with_the_containers_code(cluster: DevCluster) -> None:
    ok = shoal(cluster, "run", IMAGE, "--", "sh", "-c", "echo hello from a run; echo to stderr >&2")
    assert ok.returncode == 0, ok.stderr
    assert "hello from a run" in ok.stdout and "to stderr" in ok.stderr
    bad = shoal(cluster, "run", "--rm", IMAGE, "--", "sh", "-c", "echo failing; exit 3")
    assert bad.returncode == 3, bad.stderr
    assert "failing" in bad.stdout


def test_run_detached_prints_the_task_id_and_task_rm_removes_it(cluster: DevCluster) -> None:
    started = shoal(cluster, "run", "-d", "--name", "run-detached", IMAGE, "--", "sh", "-c", "echo detached")
    assert started.returncode == 0, started.stderr
    task_id = started.stdout.strip()
    assert len(task_id) == 12
    with cluster.client() as c:
        wait_until_sync(lambda: c.get_job("run-detached").state == "succeeded", 60, 0.3, "the run ended")
    listed = shoal(cluster, "task", "ls")
    assert task_id in listed.stdout and "run-detached.1" in listed.stdout
    logs = shoal(cluster, "task", "logs", task_id)
    assert "detached" in logs.stdout
    removed = shoal(cluster, "task", "rm", task_id)
    assert removed.returncode == 0 and "run-detached removed" in removed.stdout
    assert task_id not in shoal(cluster, "task", "ls").stdout


def test_six_completions_two_at_a_time(cluster: DevCluster) -> None:
    script = "echo start; sleep 2; echo end"
    with cluster.client() as c:
        c.apply(job_yaml("six", script, completions=6, parallelism=2))
    job = job_ended(cluster, "six", 120)
    assert (job.state, job.succeeded, job.failures) == ("succeeded", 6, 0)  # type: ignore[attr-defined]
    spans: dict[str, list[int]] = {}
    with cluster.client() as c:
        for batch in c._stream("ServiceLogs", api_pb2.LogsRequest(service="six"), 60):
            for line in batch.lines:
                if not line.notice:
                    spans.setdefault(line.task, []).append(line.time_ns)
    assert len(spans) == 6 and all(len(t) == 2 for t in spans.values()), spans
    events = sorted([(t[0], 1) for t in spans.values()] + [(t[1], -1) for t in spans.values()])
    running = most = 0
    for _, d in events:
        running += d
        most = max(most, running)
    assert most == 2, f"at most 2 at once, and 2 did run together (got {most})"
    status = shoal(cluster, "job", "status", "six")
    assert status.returncode == 0 and status.stdout.count("succeeded") >= 6


def test_a_failing_job_is_retried_with_back_off_and_ends_failed(cluster: DevCluster) -> None:
    with cluster.client() as c:
        c.apply(job_yaml("flaky", "echo try; exit 1", retries=2, backoff="2s"))
    job = job_ended(cluster, "flaky", 120)
    assert job.state == "failed" and job.failures == 3  # type: ignore[attr-defined]
    [index] = job.indexes  # type: ignore[attr-defined]
    assert (index.state, index.attempts, index.exit_code) == ("failed", 3, 1)
    waited = job.finished_at - job.started_at  # type: ignore[attr-defined]
    assert waited >= 2 + 4, f"back-off of 2 s then 4 s between the three attempts, ended after {waited:.1f}s"
    listed = shoal(cluster, "job", "ls")
    assert "flaky" in listed.stdout and "failed" in listed.stdout


def test_a_leader_killed_between_recording_an_outcome_and_the_next_start_counts_it_once(
    make_cluster: Callable[..., DevCluster], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """kill -9 of the leader right after it recorded a task's outcome in `jobs/<name>` and
    before the next task was placed (`crashpoint.JOB_RECORDED`): the next leader reads the
    record back, counts nothing twice and runs the rest."""
    marker = tmp_path / "crashed"
    monkeypatch.setenv(crashpoint.ENV, f"{crashpoint.JOB_RECORDED}:{marker}")
    cluster = make_cluster(nodes=2)
    with cluster.client() as c:
        c.apply(job_yaml("steps", "echo step", completions=3))
    wait_until_sync(marker.exists, 120, message="the leader reached job.recorded")
    dead = wait_until_sync(
        lambda: next((m for m in cluster.members if not m.alive()), None), 10, message="the leader killed"
    )
    node = next(i for i, m in enumerate(cluster.members, 1) if m is not dead)
    started = time.monotonic()
    with cluster.client(node) as c:

        def ended() -> object:
            j = c.get_job("steps")
            return j if j.state in ("succeeded", "failed") else None

        job = wait_until_sync(ended, 120, 0.3, "the next leader finished the job")
    assert (job.state, job.succeeded, job.failures) == ("succeeded", 3, 0)
    assert [i.attempts for i in job.indexes] == [1, 1, 1], "each index ran and was counted once"
    assert time.monotonic() - started < 120
