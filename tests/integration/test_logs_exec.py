"""`shoal service logs`, `shoal task logs` and `shoal exec` against a real two-node cluster.

One cluster serves the module: a service of two replicas (spread: one per node) whose
containers print numbered lines. The CLI runs as a process (`python -m node.cli.main`),
as a person runs it, through node 1, so the replica on node 2 is read over the peer API.
"""

from __future__ import annotations

import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from node.dev.devcluster import DevCluster
from node.runtime.base import LABELS
from node.runtime.logmerge import split_timestamp
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVICE = """\
name: chatty
image: shoal-demo/base:1
replicas: 2
command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \\"$(hostname) line $i\\"; sleep 0.5; done"]
"""
CLI = (sys.executable, "-m", "node.cli.main", "--addr")
TAG = re.compile(r"^[a-z0-9-]+\.(\d+)\.([0-9a-z]{1,12})@(n\d) +\| (.*)$")


def shoal(
    cluster: DevCluster, *args: str, timeout: float = 60.0, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, cluster.members[0].addr, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(cluster, token),
    )


def _env(cluster: DevCluster, token: str | None = None) -> dict[str, str]:
    env = {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(REPO)}
    if token is not None:
        env["SHOAL_TOKEN"] = token
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster.on_free_ports(tmp_path_factory.mktemp("logs"), nodes=2)
    c.start()
    try:
        with c.client() as client:
            client.apply(SERVICE)

            def both_running() -> bool:
                tasks = client.list_tasks("chatty")
                return len(tasks) == 2 and all(t.state == "running" for t in tasks)

            wait_until_sync(both_running, 60, 0.2, "both replicas running")
            assert {t.node for t in client.list_tasks("chatty")} == {"n1", "n2"}
        yield c
    finally:
        c.stop()


def _lines(out: str) -> list[tuple[int, str, str, str]]:
    """(slot, task, node, text) of each printed line; every line must carry the tag."""
    parsed = []
    for line in out.splitlines():
        m = TAG.match(line)
        assert m, f"not a tagged log line: {line!r}"
        parsed.append((int(m.group(1)), m.group(2), m.group(3), m.group(4)))
    return parsed


def test_service_logs_merges_both_replicas_with_prefixes_in_time_order(cluster: DevCluster) -> None:
    def enough() -> list[tuple[int, str, str, str]] | None:
        done = shoal(cluster, "service", "logs", "--timestamps", "chatty")
        assert done.returncode == 0, done.stderr
        lines = _lines(done.stdout)
        return lines if {n for _, _, n, _ in lines} == {"n1", "n2"} and len(lines) >= 6 else None

    lines = wait_until_sync(enough, 30, 0.5, "lines of both replicas")
    assert {s for s, _, _, _ in lines} == {1, 2}
    stamps = [split_timestamp(text.encode())[0] for _, _, _, text in lines]
    assert all(stamps) and stamps == sorted(stamps), "not in time order"
    for node in ("n1", "n2"):  # each replica's own numbers come complete and in order
        numbers = [int(t.rsplit(" ", 1)[1]) for _, _, n, t in lines if n == node]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers


def test_tail_gives_the_last_n_lines_of_each_task_and_task_logs_one(cluster: DevCluster) -> None:
    done = shoal(cluster, "service", "logs", "--tail", "2", "chatty")
    assert done.returncode == 0, done.stderr
    lines = _lines(done.stdout)
    assert sorted(n for _, _, n, _ in lines) == ["n1", "n1", "n2", "n2"], done.stdout
    with cluster.client() as client:
        remote = next(t for t in client.list_tasks("chatty") if t.node == "n2")
    done = shoal(cluster, "task", "logs", "-n", "3", remote.task_id)
    assert done.returncode == 0, done.stderr
    assert [n for _, _, n, _ in _lines(done.stdout)] == ["n2"] * 3


def test_since_and_unknown_names_are_clear_errors(cluster: DevCluster) -> None:
    done = shoal(cluster, "service", "logs", "--since", "1s", "chatty")
    assert done.returncode == 0 and len(_lines(done.stdout)) <= 8, done.stdout
    done = shoal(cluster, "service", "logs", "--since", "yesterday", "chatty")
    assert done.returncode == 2 and "--since" in done.stderr
    done = shoal(cluster, "service", "logs", "nope")
    assert done.returncode == 1 and "service 'nope' not found" in done.stderr, done.stderr
    done = shoal(cluster, "task", "logs", "nosuchtask")
    assert done.returncode == 1 and "task 'nosuchtask' not found" in done.stderr, done.stderr


def test_follow_shows_new_lines_and_ends_on_ctrl_c(cluster: DevCluster) -> None:
    proc = subprocess.Popen(
        [*CLI, cluster.members[0].addr, "service", "logs", "-f", "--tail", "0", "chatty"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cluster),
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True)
    reader.start()
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while seen != {"n1", "n2"} and time.monotonic() < deadline:  # new lines of both, as written
            try:
                seen.add(_lines(lines.get(timeout=1))[0][2])
            except queue.Empty:
                continue
        assert seen == {"n1", "n2"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_exec_returns_output_and_exit_code_on_either_node(cluster: DevCluster) -> None:
    with cluster.client() as client:
        tasks = {t.node: t for t in client.list_tasks("chatty")}
    done = shoal(cluster, "exec", "chatty", "--", "echo", "hi")
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
    script = "hostname; echo $((40+2))-answer >&2; exit 3"
    done = shoal(cluster, "exec", tasks["n2"].task_id, "--", "sh", "-c", script)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() and "42-answer" in done.stderr
    done = shoal(cluster, "exec", "chatty.2", "--", "sh", "-c", "exit 7")
    assert done.returncode == 7
    stdin = subprocess.run(
        [*CLI, cluster.members[0].addr, "exec", "-i", tasks["n2"].task_id, "--", "cat"],
        input="piped in\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(cluster),
    )
    assert (stdin.returncode, stdin.stdout) == (0, "piped in\n"), stdin.stderr
    with cluster.client() as client:
        events = [e for e in client.events(service="chatty") if e.kind == "task.exec"]
    assert any("echo hi" in e.message for e in events), [e.message for e in events]
    assert any("exit 3" in e.message and tasks["n2"].task_id in e.message for e in events)
    # the command, never its output ("42" alone could be part of a task id in the message)
    assert not any("42-answer" in e.message for e in events), [e.message for e in events]


def test_exec_of_a_missing_task_or_without_command_is_a_clear_error(cluster: DevCluster) -> None:
    done = shoal(cluster, "exec", "nosuchtask", "--", "true")
    assert done.returncode == 1 and "not found" in done.stderr, done.stderr
    done = shoal(cluster, "exec", "chatty.9", "--", "true")
    assert done.returncode == 1 and "slot 9" in done.stderr, done.stderr


def test_a_viewer_reads_logs_but_may_not_exec(cluster: DevCluster) -> None:
    with cluster.client() as client:
        viewer = client.create_token("viewer", "logs test viewer").token
    done = shoal(cluster, "service", "logs", "--tail", "1", "chatty", token=viewer)
    assert done.returncode == 0 and len(_lines(done.stdout)) == 2, done.stderr
    done = shoal(cluster, "exec", "chatty", "--", "echo", "hi", token=viewer)
    assert done.returncode == 1 and "role viewer" in done.stderr and "Exec" in done.stderr, done.stderr
    assert done.stdout == ""


def test_logging_options_reach_docker_and_logs_still_read(cluster: DevCluster) -> None:
    spec = SERVICE.replace("name: chatty", "name: bounded").replace("replicas: 2", "replicas: 1")
    spec += "logging:\n  driver: json-file\n  options: {max-size: 1m, max-file: '2'}\n"
    with cluster.client() as client:
        client.apply(spec)

        def running() -> bool:
            tasks = client.list_tasks("bounded")
            return len(tasks) == 1 and tasks[0].state == "running"

        wait_until_sync(running, 60, 0.2, "the bounded replica running")
    client_ = docker.DockerClient.from_env()
    try:
        (found,) = client_.containers.list(
            filters={"label": [f"{LABELS.SERVICE}=bounded", f"{LABELS.CLUSTER}={cluster.cluster}"]}
        )
        log_config = found.attrs["HostConfig"]["LogConfig"]
    finally:
        client_.close()
    assert log_config == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}}

    def read() -> bool:
        done = shoal(cluster, "service", "logs", "bounded")
        return done.returncode == 0 and bool(done.stdout.strip())

    wait_until_sync(read, 20, 0.5, "logs of the bounded service")


LINES = 20_000


def test_numbered_lines_of_both_replicas_come_complete_and_the_rate_is_measured(cluster: DevCluster) -> None:
    spec = "name: counted\nimage: shoal-demo/base:1\nreplicas: 2\n"
    spec += f'command: ["sh", "-c", "seq 1 {LINES}; sleep 3600"]\n'
    with cluster.client() as client:
        client.apply(spec)

        def printed() -> bool:
            tasks = client.list_tasks("counted")
            return len(tasks) == 2 and all(t.state == "running" for t in tasks)

        wait_until_sync(printed, 60, 0.2, "the counted replicas running")
        tasks = client.list_tasks("counted")

    def complete() -> subprocess.CompletedProcess[str] | None:
        done = shoal(cluster, "service", "logs", "counted")
        return done if done.returncode == 0 and done.stdout.count("\n") == 2 * LINES else None

    wait_until_sync(complete, 30, 0.5, "every line of both replicas")
    start = time.monotonic()
    done = shoal(cluster, "service", "logs", "counted")
    through_shoal = time.monotonic() - start
    lines = _lines(done.stdout)
    for node in ("n1", "n2"):  # nothing missing, nothing twice, in order
        assert [int(t) for _, _, n, t in lines if n == node] == list(range(1, LINES + 1))
    start = time.monotonic()
    for t in tasks:
        subprocess.run(["docker", "logs", t.container_id], capture_output=True, check=True, timeout=60)
    through_docker = time.monotonic() - start
    print(
        f"\nFIGURE service logs: {2 * LINES} lines from 2 nodes in {through_shoal:.2f}s "
        f"({2 * LINES / through_shoal:,.0f} lines/s, CLI start included); "
        f"docker logs of the same containers: {through_docker:.2f}s"
    )


def test_exec_it_gives_the_command_a_terminal_of_this_size(cluster: DevCluster) -> None:
    """`shoal exec -it` in a pseudo-terminal, as a person at a terminal runs it."""
    import fcntl
    import pty
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))  # rows, columns
    proc = subprocess.Popen(
        [*CLI, cluster.members[0].addr, "exec", "-it", "chatty.2", "--", "sh"],
        stdin=child,
        stdout=child,
        stderr=child,
        env=_env(cluster),
        close_fds=True,
    )
    os.close(child)
    seen = b""
    try:
        # As a person does: type once the shell's prompt is there (what is typed before the
        # remote shell reads its terminal may be echoed and taken by the line discipline).
        deadline = time.monotonic() + 30
        while b"# " not in seen and b"$ " not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                seen += os.read(main, 4096)
        assert b"# " in seen or b"$ " in seen, f"no prompt from the remote shell: {seen!r}"
        os.write(main, b"stty size; tty; exit 4\n")
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(main, 4096)
                except OSError:
                    break
        assert proc.wait(timeout=10) == 4, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    assert b"33 101" in seen and b"/dev/pts/" in seen, seen
