"""Durable events (issue 14) on a real three-node `shoal dev` cluster.

One cluster serves the module, with the event log bounded to `events_max` = 100
(SHOAL_EVENTS_MAX, as an operator sets it): an apply's cause id leads to the apply,
its placements and its starts on several nodes; `-f` shows a scale's events as they
happen; a node whose daemon is killed keeps its events listed; a burst of 300 events
is trimmed back to the bound by the leader. The tests run in file order (the node
kill and the burst last). The CLI runs as a process, as a person runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.dev.devcluster import DevCluster
from node.model.keys import DEFAULT_PREFIX, Keys
from node.store.etcd import EtcdStore
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "node.cli.main", "--addr")
EVENTS_MAX = 100
SECRET_VALUE = "s3cr3t-" + os.urandom(8).hex()  # must never appear in an event
ENV_VALUE = "envv4l-" + os.urandom(8).hex()
SERVICE = f"""\
name: web
image: shoal-demo/web:1
replicas: 3
ports: [{{container: 8080}}]
placement: {{max_per_node: 2}}
secrets: [{{source: api_pw}}]
secret_env: {{API_KEY: {ENV_VALUE}}}
"""


def shoal(cluster: DevCluster, *args: str, node: int = 0, timeout: float = 60.0) -> str:
    done = subprocess.run(
        [*CLI, cluster.members[node].addr, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(cluster),
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _env(cluster: DevCluster) -> dict[str, str]:
    return {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(REPO)}


def events(cluster: DevCluster, *args: str, node: int = 0) -> list[dict[str, str]]:
    out = shoal(cluster, "events", "-o", "json", *args, node=node)
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    os.environ["SHOAL_EVENTS_MAX"] = str(EVENTS_MAX)  # the daemons inherit it
    try:
        c = DevCluster.on_free_ports(tmp_path_factory.mktemp("events"), nodes=3)
        c.start()
    finally:
        del os.environ["SHOAL_EVENTS_MAX"]
    try:
        with c.client() as client:
            client.put_object("secret", "api_pw", SECRET_VALUE.encode())
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def applied(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The cause id `shoal service apply` printed, once its three replicas run."""
    spec = tmp_path_factory.mktemp("spec") / "web.yaml"
    spec.write_text(SERVICE)
    out = shoal(cluster, "service", "apply", "-d", "-f", str(spec))
    found = re.search(r"version 1 applied \(cause (c[0-9a-f]{12})\)", out)
    assert found, out
    with cluster.client() as client:

        def running() -> bool:
            tasks = client.list_tasks("web")
            return len(tasks) == 3 and all(t.state == "running" for t in tasks)

        wait_until_sync(running, 90, 0.3, "three replicas of web running")
    return found.group(1)


def test_a_cause_id_shows_the_apply_its_placements_and_its_starts_on_several_nodes(
    cluster: DevCluster, applied: str
) -> None:
    def complete() -> list[dict[str, str]] | None:
        got = events(cluster, "--cause", applied)
        started = [e for e in got if e["kind"] == "task.started"]
        return got if len(started) == 3 else None

    got = wait_until_sync(complete, 30, 0.5, "three task.started events of the apply's cause")
    kinds = [e["kind"] for e in got]
    assert kinds[0] == "service.applied", kinds
    assert " by " in got[0]["message"] and "unauthenticated" not in got[0]["message"], got[0]  # who
    assert kinds.count("task.placed") == 3, kinds
    assert {e["node"] for e in got if e["kind"] == "task.started"} == {"n1", "n2", "n3"}
    assert all(e["cause"] == applied and e["service"] == "web" for e in got)
    # the same through another node, and the filters combine on the server
    placed = events(cluster, "--cause", applied, "--kind", "task.placed", "--since", "10m", node=2)
    assert [e["kind"] for e in placed] == ["task.placed"] * 3
    assert events(cluster, "--cause", "c000000000000") == []
    assert events(cluster, "--since", "1s", "--kind", "leader.elected") == [], "old events are left out"


def test_exec_is_an_event_naming_who_ran_what_and_no_event_holds_a_secret(
    cluster: DevCluster, applied: str
) -> None:
    out = shoal(cluster, "exec", "web", "--", "sh", "-c", "cat /run/secrets/api_pw; echo; echo $API_KEY")
    assert SECRET_VALUE in out and ENV_VALUE in out, "the container has both"

    def exec_event() -> list[dict[str, str]] | None:
        return events(cluster, "--kind", "task.exec") or None

    (ran,) = wait_until_sync(exec_event, 20, 0.3, "a task.exec event")
    assert "ran `sh -c" in ran["message"] and ran["service"] == "web"
    everything = shoal(cluster, "events", "-o", "json")
    assert SECRET_VALUE not in everything and ENV_VALUE not in everything


def test_follow_shows_a_scale_as_it_happens(cluster: DevCluster, applied: str) -> None:
    proc = subprocess.Popen(
        [*CLI, cluster.members[1].addr, "events", "-f", "--since", "0s", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cluster),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()

    def read_until(
        done: Callable[[list[dict[str, str]]], bool], seen: list[dict[str, str]], what: str
    ) -> None:
        deadline = time.monotonic() + 60
        while not done(seen):
            left = deadline - time.monotonic()
            assert left > 0, f"{what}: not seen in 60 s; got {[e['kind'] for e in seen]}"
            with contextlib.suppress(queue.Empty):
                seen.append(json.loads(lines.get(timeout=min(left, 1.0))))
            if not seen:  # the CLI may still be starting: a marker shows the stream is open
                with cluster.client() as client:
                    client.put_object("config", f"marker-{len(seen)}-{time.monotonic_ns()}", b"m")

    try:
        before: list[dict[str, str]] = []
        read_until(lambda s: any(e["kind"] == "config.created" for e in s), before, "a marker event")
        out = shoal(cluster, "service", "scale", "web", "4")
        found = re.search(r"\(cause (c[0-9a-f]{12})\)", out)
        assert found, out
        cause = found.group(1)
        seen: list[dict[str, str]] = []
        read_until(
            lambda s: any(e["kind"] == "task.started" and e["cause"] == cause for e in s), seen, "start"
        )
        kinds = {e["kind"] for e in seen if e["cause"] == cause}
        assert {"service.scaled", "task.placed", "task.started"} <= kinds, seen
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_killed_nodes_events_stay_listed(cluster: DevCluster, applied: str) -> None:
    before = [e for e in events(cluster) if e["node"] == "n3"]
    assert any(e["kind"] == "task.started" for e in before), before
    cluster.members[2].kill()  # SIGKILL: no goodbye

    def lost() -> bool:
        return any(
            e["kind"] in ("node.lost", "node.down") and "n3" in e["message"]
            for e in events(cluster, "--kind", "node.")
        )

    wait_until_sync(lost, 60, 1.0, "the leader reports n3 lost")
    after = [e for e in events(cluster) if e["node"] == "n3"]
    assert after == before, "nothing n3 wrote is gone with it"


def test_the_leader_trims_a_burst_back_to_the_bound(cluster: DevCluster) -> None:
    with cluster.client() as client:
        for i in range(150):  # 300 events: config.created and config.removed
            client.put_object("config", f"burst-{i}", b"x")
            client.remove_object("config", f"burst-{i}")
        peak = len(list(client.events()))
        assert peak > EVENTS_MAX, "the burst went over the bound before a trim"

        def trimmed() -> int | None:
            n = len(list(client.events()))
            return n if n <= EVENTS_MAX else None

        n = wait_until_sync(trimmed, 60, 1.0, f"the log back to {EVENTS_MAX} events (trim every 30 s)")
        newest = list(client.events(limit=1))
        assert newest and newest[0].kind == "config.removed", "the oldest went, the newest stayed"
    sizes = asyncio.run(_stored_sizes(cluster))
    per_event = sum(sizes) / len(sizes)
    print(f"events: peak {peak}, trimmed to {n}; etcd key+value bytes per event: {per_event:.0f}")
    assert per_event < 1500


async def _stored_sizes(cluster: DevCluster) -> list[int]:
    store = EtcdStore([cluster.etcd.endpoint], tls=cluster.etcd.tls)
    await store.connect()
    try:
        kvs, _ = await store.range(Keys(DEFAULT_PREFIX).events)
        return [len(kv.key.encode()) + len(kv.value) for kv in kvs]
    finally:
        await store.close()
