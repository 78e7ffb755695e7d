"""When the local Docker engine's process started, from the kernel (no Docker call).

A container that exited 0 before the engine's process started was stopped by the
engine's shutdown (`systemctl restart docker`, a host reboot), not by its own end. The
agent sees most engine restarts as a gap in its listings; this covers the one it cannot
see: the engine restarted while shoald was down too, a host reboot above all.

The engine's pid is the peer of a connection to its unix socket (`SO_PEERCRED`). When
systemd made the socket (`-H fd://`, Debian's docker.socket) that peer is systemd; then
the one process named `dockerd`, if there is exactly one, is the engine. Its start is
`/proc/<pid>/stat`'s start time (clock ticks since boot) plus the boot time
(`/proc/stat`'s `btime`, whole seconds, so the result is at most 1 s early). Anything
else (a TCP `DOCKER_HOST`, another pid namespace, several engines behind systemd, a
/proc that says otherwise) gives 0.0: not known, and the agent judges as before.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

CONNECT_TIMEOUT = 1.0  # s: connecting to a listening unix socket does not wait for the engine
ENGINE = "dockerd"


def socket_path(url: str) -> str:
    """The unix socket path of a Docker URL ("" when it is not a unix socket)."""
    for scheme in ("unix://", "http+unix://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return ""


def peer_pid(path: str) -> int:
    """The pid of the process that listens on unix socket `path` (0 when not known)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CONNECT_TIMEOUT)
        s.connect(path)
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return max(pid, 0)


def comm(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def the_engine(proc: Path = Path("/proc")) -> int:
    """The pid of the one process named `dockerd` (0: none, or more than one)."""
    found = [int(p.name) for p in proc.iterdir() if p.name.isdigit() and comm(int(p.name), proc) == ENGINE]
    return found[0] if len(found) == 1 else 0


def boot_time(proc: Path = Path("/proc")) -> float:
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def process_started(pid: int, proc: Path = Path("/proc")) -> float:
    """Epoch seconds when process `pid` started."""
    stat = (proc / str(pid) / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    ticks = int(fields[19])  # field 22, `starttime`; the list begins at field 3
    return boot_time(proc) + ticks / os.sysconf("SC_CLK_TCK")


def engine_started(url: str, proc: Path = Path("/proc")) -> float:
    """When the engine behind Docker URL `url` started (epoch s; 0.0: not known)."""
    path = socket_path(url)
    if not path:
        return 0.0
    try:
        pid = peer_pid(path)
        if comm(pid, proc) != ENGINE:  # systemd's socket, or a relay: look for the engine
            pid = the_engine(proc)
        return process_started(pid, proc) if pid > 0 else 0.0
    except (OSError, ValueError, IndexError):
        return 0.0
