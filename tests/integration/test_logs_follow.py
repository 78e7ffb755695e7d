"""`shoal service logs -f` follows replicas that start after it began, and `--events`
puts the service's events among the lines, against a real two-node cluster: the CLI
runs as a process through node 1 while the service is scaled from 1 to 2 replicas."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.dev.devcluster import DevCluster
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVICE = """\
name: counting
image: shoal-demo/base:1
replicas: 1
command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \\"line $i\\"; sleep 0.3; done"]
"""
CLI = (sys.executable, "-m", "node.cli.main", "--addr")
LINE = re.compile(r"^counting\.(\d+)\.[0-9a-z]{1,12}@n\d +\| line (\d+)$")
EVENT = re.compile(r"^event +\| (\S+) ")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster.on_free_ports(tmp_path_factory.mktemp("logsf"), nodes=2)
    c.start()
    try:
        with c.client() as client:
            client.apply(SERVICE)

            def running() -> bool:
                tasks = client.list_tasks("counting")
                return len(tasks) == 1 and tasks[0].state == "running"

            wait_until_sync(running, 60, 0.2, "the replica running")
        yield c
    finally:
        c.stop()


def _env(cluster: DevCluster) -> dict[str, str]:
    return {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(REPO)}


def test_follow_takes_in_a_replica_started_after_it_began_and_shows_events(cluster: DevCluster) -> None:
    proc = subprocess.Popen(
        [*CLI, cluster.members[0].addr, "service", "logs", "-f", "--events", "counting"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cluster),
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True)
    reader.start()
    numbers: dict[int, list[int]] = {}
    kinds: set[str] = set()

    def read_until(done: object, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:  # type: ignore[operator]
            try:
                text = lines.get(timeout=1).rstrip("\n")
            except queue.Empty:
                continue
            if (m := LINE.match(text)) is not None:
                numbers.setdefault(int(m.group(1)), []).append(int(m.group(2)))
            elif (e := EVENT.match(text)) is not None:
                kinds.add(e.group(1))

    try:
        read_until(lambda: 1 in numbers, 30)
        assert 1 in numbers, "no line of the first replica"
        with cluster.client() as client:
            client.scale("counting", 2)
        read_until(lambda: len(numbers.get(2, [])) >= 3 and "service.scaled" in kinds, 60)
        assert len(numbers.get(2, [])) >= 3, f"the new replica's lines never came: {sorted(numbers)}"
        new = numbers[2]
        assert new[:3] == [new[0], new[0] + 1, new[0] + 2] and new[0] <= 3  # from its first lines, in order
        assert "service.scaled" in kinds
        assert proc.poll() is None  # still following
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # one shot: the event among the lines, in time order
    out = subprocess.run(
        [*CLI, cluster.members[0].addr, "service", "logs", "--events", "counting"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(cluster),
    )
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()
    scaled = [i for i, line in enumerate(printed) if EVENT.match(line) and "service.scaled" in line]
    assert scaled, printed[:20]
    slot2 = [i for i, line in enumerate(printed) if (m := LINE.match(line)) and m.group(1) == "2"]
    assert slot2 and scaled[0] < slot2[0]  # the scaling came before the new replica's first line
