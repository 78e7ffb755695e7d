"""Removing a test bed: every process, container, mount, namespace, link and rule it made.

`Bed.down()` works from the bed's state file alone (pids, what was made), so it can run
in another process than `up()` and after an `up()` that failed half-way; every step is
tried, and what could not be removed is returned, never hidden. A pid is signalled only
while its command line names the bed's own directory (a recycled pid is left alone).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any


class BedError(Exception):
    """The bed could not be made or removed; the message names the step and the log."""


def run(
    *argv: str, check: bool = True, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise BedError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return done


def wait(pred: object, timeout: float, what: str, log: Path | None = None) -> float:
    """Poll `pred` every 50 ms until true; the seconds it took. BedError at the deadline."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if pred():  # type: ignore[operator]
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise BedError(f"{what} not ready within {timeout:g}s" + (f"; see {log}" if log else ""))
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie of ours is as good as gone
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


class Teardown:
    """The `down` half of `deploy.testbed.bed.Bed` (a mixin: it uses the bed's names)."""

    if TYPE_CHECKING:
        hosts: int
        id: str
        pids: dict[str, int]
        made: list[str]
        timings: dict[str, float]

        @property
        def dir(self) -> Path: ...
        @property
        def bridge(self) -> str: ...
        @property
        def rule(self) -> tuple[str, ...]: ...

        def netns(self, i: int) -> str: ...
        def veth(self, i: int) -> str: ...
        def docker(self, i: int, *args: str, check: bool = True) -> str: ...
        def docker_host(self, i: int) -> str: ...

    # -- down ------------------------------------------------------------------------------
    def stop(self, key: str, sig: int = signal.SIGTERM, grace: float = 20) -> None:
        self.stop_all([key], sig, grace)

    def stop_all(self, keys: list[str], sig: int = signal.SIGTERM, grace: float = 20) -> None:
        """Signal these processes at once, wait up to `grace` s for all, SIGKILL the rest."""
        pids = {k: self.pids[k] for k in keys if self.pids.get(k) and self._ours(self.pids[k])}
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while any(pid_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for key, pid in pids.items():
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait(lambda pid=pid: not pid_alive(pid), 10, f"{key} ({pid}) to exit after SIGKILL")

    def _ours(self, pid: int) -> bool:
        """pid is a live process of this bed (its command line names the bed's directory)."""
        try:
            return str(self.dir) in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return False

    def down(self) -> list[str]:
        """Remove everything; every step is tried. Returns what is left (empty when clean)."""
        start = time.monotonic()
        for i in range(1, self.hosts + 1):  # a cut host's daemon stops slowly
            run("ip", "link", "set", self.veth(i), "up", check=False)
        self.stop_all([k for k in self.pids if k.startswith("shoald")], signal.SIGTERM, 15)
        removals: list[Any] = []
        for i in range(1, self.hosts + 1):  # every container, so that no shim outlives its engine
            if pid_alive(self.pids.get(f"dockerd-{i}", 0)):
                ids = self.docker(i, "ps", "-aq", check=False).split()
                if ids:
                    argv = ["docker", "-H", self.docker_host(i), "rm", "-f", *ids]
                    removals.append(
                        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    )
        for proc in removals:
            proc.wait(60)
        # etcd's data goes with the bed: no need for a leader hand-over, which all members
        # stopping at once would wait ~7 s for
        self.stop_all([k for k in self.pids if k.startswith("etcd")], signal.SIGKILL, 10)
        self.stop_all(list(self.pids), signal.SIGTERM, 20)
        for i in range(1, self.hosts + 1):  # whatever else still runs in a host's namespace
            if f"netns-{i}" in self.made:
                for pid in run("ip", "netns", "pids", self.netns(i), check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        self._unmount()
        for device in self._loops():  # a small disk's (hostfaults); the mount frees it unless busy
            run("losetup", "-d", device, check=False)
        for i in range(1, self.hosts + 1):
            if f"netns-{i}" in self.made:
                run("ip", "netns", "del", self.netns(i), check=False)
                run("ip", "link", "del", self.veth(i), check=False)
        if "rule" in self.made:
            while run("iptables", "-C", *self.rule, check=False).returncode == 0:
                run("iptables", "-D", *self.rule, check=False)
        if "bridge" in self.made:
            run("ip", "link", "del", self.bridge, check=False)
        if all(what.startswith("directory") for what in self.leftovers()):
            run("rm", "-rf", "--one-file-system", str(self.dir), check=False)
        left = self.leftovers()
        self.timings["down"] = round(time.monotonic() - start, 2)
        return left

    def _mounts(self) -> list[str]:
        found = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == str(self.dir) or point.startswith(f"{self.dir}/"):
                found.append(point)
        return found

    def _unmount(self) -> None:
        for _ in range(5):  # nested mounts: a few rounds, deepest first
            points = sorted(self._mounts(), key=len, reverse=True)
            if not points:
                return
            for point in points:
                run("umount", "-l", point, check=False)

    def _loops(self) -> list[str]:
        """Loop devices backed by a file of this bed (`losetup -a`: "/dev/loop0: []: (file)")."""
        out = run("losetup", "-a", check=False).stdout
        return [line.split(":", 1)[0] for line in out.splitlines() if f"({self.dir}/" in line]

    def leftovers(self) -> list[str]:
        """What of this bed still exists (empty after a clean `down`)."""
        found = []
        if run("ip", "link", "show", self.bridge, check=False).returncode == 0:
            found.append(f"link {self.bridge}")
        names = run("ip", "netns", "list").stdout
        found += [f"netns {self.netns(i)}" for i in range(1, self.hosts + 1) if self.netns(i) in names]
        links = run("ip", "-o", "link", "show").stdout
        found += [f"link {self.veth(i)}" for i in range(1, self.hosts + 1) if f" {self.veth(i)}@" in links]
        if run("iptables", "-C", *self.rule, check=False).returncode == 0:
            found.append(f"iptables rule shoal-testbed-{self.id}")
        found += [f"process {pid}" for pid in self._bed_processes()]
        found += [f"mount {m}" for m in self._mounts()]
        found += [f"loop device {d}" for d in self._loops()]
        if self.dir.exists():
            found.append(f"directory {self.dir}")
        return found

    def _bed_processes(self) -> list[int]:
        mine = os.getpid()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != mine and self._ours(int(entry.name)):
                found.append(int(entry.name))
        return found
