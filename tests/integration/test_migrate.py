"""`node.proxy.migrate` against a real kernel, in a network namespace each test makes
(the sysctl is per namespace and starts at 0 in a new one): a listener of an SO_REUSEPORT
group (a proxy worker) killed while clients connect in a loop resets the connections
queued on it, unless `migrate.ensure()` set `tcp_migrate_req`; then none fails.

Each case runs in `unshare -n` with only its loopback up: its clients reach no one else.
The load is bounded: 16 clients for 1.5 s, each connect and read with a 3 s timeout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CASE = r"""
import json, os, signal, socket, subprocess, sys, threading, time
sys.path.insert(0, sys.argv[2])
from node.proxy import migrate

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
before = migrate.SYSCTL.read_text().strip()
reason = migrate.ensure() if sys.argv[1] == "ensure" else "not asked"
after = migrate.SYSCTL.read_text().strip()

def listener():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 18891))
    s.listen(128)
    return s

mine = listener()
child = os.fork()
if child == 0:  # the worker to be killed: takes its connections slowly, so some queue
    theirs = listener()
    while True:
        c, _ = theirs.accept()
        c.sendall(b"ok")
        c.close()
        time.sleep(0.002)

def serve():
    while True:
        c, _ = mine.accept()
        c.sendall(b"ok")
        c.close()

threading.Thread(target=serve, daemon=True).start()
counts = {"ok": 0, "failed": 0}

def client():
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", 18891), timeout=3) as c:
                got = c.recv(2)
            counts["ok" if got == b"ok" else "failed"] += 1
        except OSError:
            counts["failed"] += 1

clients = [threading.Thread(target=client) for _ in range(16)]
for t in clients:
    t.start()
time.sleep(0.5)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
for t in clients:
    t.join()
print(json.dumps({"before": before, "after": after, "reason": reason, **counts}))
"""


def run_case(mode: str) -> dict[str, object]:
    if shutil.which("unshare") is None:
        pytest.fail("util-linux's unshare is needed (Debian: util-linux)")
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", CASE, mode, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_killed_worker_hands_its_queue_to_its_siblings_once_ensured() -> None:
    got = run_case("ensure")
    assert got["before"] == "0", got  # a new namespace starts with the kernel's default
    assert got["reason"] == "" and got["after"] == "1", got
    assert got["failed"] == 0, got
    assert int(str(got["ok"])) > 100, got


def test_without_it_the_queue_is_reset() -> None:
    """What the setting is for, and that the case above can fail."""
    got = run_case("leave")
    assert got["after"] == "0", got
    assert int(str(got["failed"])) > 0, got
