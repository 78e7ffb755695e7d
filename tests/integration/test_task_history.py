"""Exited containers kept for their logs (decision 71) on a real two-node cluster.

The nodes keep `--task-history-limit 2` exited containers per slot. A service of two
replicas (one per node) prints lines naming its generation; each update replaces both
tasks. The replaced tasks' logs stay readable through node 1 with `shoal task logs`
(by full id and by the 12 characters logs print), the task on node 2 over the peer API;
after three updates each slot keeps only its two newest exited containers, which are
never started again or published; `service rm` removes them all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from node.dev.devcluster import DevCluster
from node.runtime.base import LABELS
from tests.helpers import wait_until_sync
from tests.integration.test_logs_exec import shoal

pytestmark = pytest.mark.integration

LIMIT = 2
SPEC = """\
name: keeper
image: shoal-demo/base:1
replicas: 2
env: {{GEN: "{gen}"}}
update: {{parallelism: 2, drain: 0, monitor: 1}}
stop_grace: 1
command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \\"gen $GEN line $i\\"; sleep 0.3; done"]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster.on_free_ports(
        tmp_path_factory.mktemp("history"), nodes=2, extra_args=["--task-history-limit", str(LIMIT)]
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.DockerClient.from_env()
    try:
        yield client
    finally:
        client.close()


@dataclass(frozen=True)
class Listed:
    """A container as Docker's list gives it (no inspect per container: one the agent
    removes between the list and the inspect would fail the read with a 404, as CI saw)."""

    labels: dict[str, str]
    status: str


def containers(engine: docker.DockerClient, cluster: DevCluster) -> list[Listed]:
    labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}=keeper"]
    found = engine.api.containers(all=True, filters={"label": labels})
    return [Listed(dict(c.get("Labels") or {}), str(c.get("State") or "")) for c in found]


def deploy(cluster: DevCluster, gen: int) -> dict[str, tuple[str, int]]:
    """Apply generation `gen` and wait until both its tasks run and print: task id -> (node, slot)."""
    with cluster.client() as client:
        client.apply(SPEC.format(gen=gen))

        def running() -> dict[str, tuple[str, int]] | None:
            tasks = client.list_tasks("keeper")
            fresh = [t for t in tasks if t.version == gen and t.state == "running"]
            if len(tasks) != 2 or len(fresh) != 2:
                return None
            return {t.task_id: (t.node, t.slot) for t in fresh}

        tasks: dict[str, tuple[str, int]] = wait_until_sync(running, 90, 0.3, f"generation {gen} running")
    assert {node for node, _ in tasks.values()} == {"n1", "n2"}, tasks  # spread: one per node
    for task in tasks:
        wait_until_sync(lambda t=task: f"gen {gen} line" in shoal(cluster, "task", "logs", t).stdout, 30, 0.3)
    return tasks


def test_replaced_tasks_stay_readable_only_the_newest_are_kept_and_rm_takes_them(
    cluster: DevCluster, engine: docker.DockerClient
) -> None:
    generations = [deploy(cluster, gen) for gen in (1, 2)]
    for task, (node, _) in generations[0].items():  # n2's over the peer API: the client calls n1
        for name in (task, task[:12]):
            done = shoal(cluster, "task", "logs", "--tail", "3", name)
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert len(lines) == 3 and all("gen 1 line" in line for line in lines), done.stdout
            assert all(f"@{node} " in line for line in lines), done.stdout

    generations += [deploy(cluster, gen) for gen in (3, 4)]
    replaced: dict[tuple[str, int], list[str]] = {}  # (node, slot) -> its replaced tasks, oldest first
    for tasks in generations[:-1]:
        for task, where in tasks.items():
            replaced.setdefault(where, []).append(task)
    expected = {t for tasks in replaced.values() for t in tasks[-LIMIT:]}

    def trimmed() -> set[str] | None:
        exited = {c.labels[LABELS.TASK] for c in containers(engine, cluster) if c.status == "exited"}
        return exited if exited == expected else None

    wait_until_sync(trimmed, 30, 0.3, f"the newest {LIMIT} exited containers kept per slot: {expected}")
    running = [c for c in containers(engine, cluster) if c.status == "running"]
    assert {c.labels[LABELS.TASK] for c in running} == set(generations[3]), "none started again"
    gone = [t for tasks in replaced.values() for t in tasks[:-LIMIT]]
    assert gone, replaced
    done = shoal(cluster, "task", "logs", gone[0])
    assert done.returncode == 1 and "not found" in done.stderr, done.stderr  # removed: gone for good
    with cluster.client() as client:
        tasks = client.list_tasks("keeper")
    assert {t.task_id for t in tasks} == set(generations[3]), "kept ones are no replicas"
    assert not [t for t in tasks if t.endpoint and t.task_id not in generations[3]]
    # `service ps --all` lists them too, from both nodes, each after its slot's running task
    done = shoal(cluster, "service", "ps", "keeper", "--all", "-o", "json")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rows = json.loads(done.stdout)
    shown = {r["task"]: (r["node"], r["slot"], r["desired"]) for r in rows}
    assert {t for t, (_, _, d) in shown.items() if d == "shutdown"} == expected, rows
    assert {t for t, (_, _, d) in shown.items() if d == "running"} == set(generations[3]), rows
    for task, (node, slot) in [w for tasks in generations[:-1] for w in tasks.items()]:
        if task in expected:
            assert shown[task] == (node, slot, "shutdown"), (task, rows)
    assert [r["slot"] for r in rows] == sorted(r["slot"] for r in rows), "grouped by slot"

    with cluster.client() as client:
        client.delete_service("keeper")
    wait_until_sync(lambda: not containers(engine, cluster), 30, 0.3, "service rm removes the kept ones")


CRASHER = """\
name: crasher
image: shoal-demo/base:1
replicas: 1
restart: {delay: 0.2}
command: ["sh", "-c", "echo \\"run on $(hostname)\\"; sleep 0.5; exit 3"]
"""


def test_the_runs_before_a_crash_are_kept_and_read_with_previous(
    cluster: DevCluster, engine: docker.DockerClient
) -> None:
    with cluster.client() as client:
        client.apply(CRASHER)

        def restarted(n: int) -> str | None:
            tasks = client.list_tasks("crasher")
            return tasks[0].task_id if len(tasks) == 1 and tasks[0].restarts >= n else None

        task = wait_until_sync(lambda: restarted(LIMIT + 2), 60, 0.3, f"{LIMIT + 2} restarts")

    def runs(*args: str) -> str:
        done = shoal(cluster, "task", "logs", *args)
        assert done.returncode == 0, done.stderr
        [line] = done.stdout.splitlines()
        return line.rsplit(" ", 1)[1]

    # The same task, two containers. The previous one is read first: the task restarts
    # every ~0.7 s, so reading the newest first let a restart in between make it the
    # previous one (a flake); read in this order, a restart between only moves the newest on.
    before = runs("--previous", "1", task[:12])
    last = runs(task)
    assert last != before, "--previous reads the container before the newest"
    done = shoal(cluster, "task", "logs", "--previous", "50", task)
    assert "earlier run(s) kept on this node" in done.stderr and not done.stdout, done.stderr

    def of_crasher() -> list[docker.models.containers.Container]:
        labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}=crasher"]
        return list(engine.containers.list(all=True, filters={"label": labels}))

    assert len(of_crasher()) <= LIMIT + 2, "the newest N kept, the task's exited one, its next"
    assert len({c.name for c in of_crasher()}) == len(of_crasher())
    with cluster.client() as client:
        client.delete_service("crasher")
    wait_until_sync(lambda: not of_crasher(), 30, 0.3, "service rm removes the kept runs")
