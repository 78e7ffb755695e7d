"""`node.runtime.engine_start`: the engine's start time from the kernel, on a unix socket
this test listens on and a /proc tree it writes (the real one's format)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.runtime.engine_start import engine_started, peer_pid, process_started, socket_path, the_engine

TICKS = os.sysconf("SC_CLK_TCK")


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "docker.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        s.listen(4)
        yield path


def fake_proc(root: Path, procs: dict[int, str], btime: int = 1_700_000_000) -> Path:
    """A /proc with `btime` and, per pid, its comm and a stat whose start is pid x 100 ticks."""
    root.mkdir()
    (root / "stat").write_text(f"cpu  1 2 3\nbtime {btime}\nprocesses 9\n")
    for pid, name in procs.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "comm").write_text(name + "\n")
        rest = " ".join(["S", *["0"] * 18, str(pid * 100), "0"])  # fields 3..23: 22 is starttime
        (root / str(pid) / "stat").write_text(f"{pid} (a (weird) name) {rest}\n")
    return root


def test_socket_paths_of_docker_urls() -> None:
    assert socket_path("unix:///var/run/docker.sock") == "/var/run/docker.sock"
    assert socket_path("http+unix:///run/d.sock") == "/run/d.sock"
    assert socket_path("tcp://10.0.0.1:2375") == ""


def test_the_peer_of_a_unix_socket_is_the_process_that_listens(listening: str) -> None:
    assert peer_pid(listening) == os.getpid()


def test_the_engine_that_listens_itself(listening: str, tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {os.getpid(): "dockerd"})
    assert engine_started(f"unix://{listening}", proc) == 1_700_000_000 + os.getpid() * 100 / TICKS


def test_behind_a_socket_someone_else_made_the_one_dockerd_is_the_engine(
    listening: str, tmp_path: Path
) -> None:
    proc = fake_proc(tmp_path / "proc", {os.getpid(): "systemd", 4242: "dockerd", 4243: "containerd"})
    assert the_engine(proc) == 4242
    assert engine_started(f"unix://{listening}", proc) == 1_700_000_000 + 4242 * 100 / TICKS


@pytest.mark.parametrize(
    "procs",
    [
        {1: "systemd"},  # no engine at all
        {1: "systemd", 4242: "dockerd", 4343: "dockerd"},  # several engines: which one?
    ],
)
def test_not_known_is_zero(listening: str, tmp_path: Path, procs: dict[int, str]) -> None:
    proc = fake_proc(tmp_path / "proc", procs)
    assert engine_started(f"unix://{listening}", proc) == 0.0
    assert engine_started("tcp://127.0.0.1:2375", proc) == 0.0
    assert engine_started(f"unix://{tmp_path}/nothing.sock", proc) == 0.0


def test_a_process_start_from_a_stat_whose_name_holds_parentheses(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {77: "dockerd"}, btime=1000)
    assert process_started(77, proc) == 1000 + 7700 / TICKS
