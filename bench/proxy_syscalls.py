"""System calls per request of a proxy under wrk (`bench/proxy.py --syscalls`).

`strace -c -f` is attached to every process of the proxy for one bounded wrk run and
its summary divided by the requests wrk counted. strace slows the proxy several times,
so this run's requests/s mean nothing; the calls per request are what the code does
(and the kernel time a proxy spends is mostly those calls). Shown for shoal's engines
next to HAProxy's: where their counts are equal, the gap between them is in userland.
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

ATTACH_TIMEOUT = 10.0


def _attached(err: Path, pids: list[int]) -> bool:
    text = err.read_text() if err.exists() else ""
    return all(re.search(rf"Process {pid} attached", text) for pid in pids)


def parse(summary: str) -> collections.Counter[str]:
    """Calls by system call name, from `strace -c` output."""
    calls: collections.Counter[str] = collections.Counter()
    for line in summary.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[-1] == "total" or not fields[0][0].isdigit():
            continue
        try:
            calls[fields[-1]] += int(fields[3])
        except ValueError:
            continue
    return calls


def per_request(pids: list[int], run: Callable[[], int]) -> tuple[float, collections.Counter[str]]:
    """(system calls per request, calls per request by name) of `run()` (a wrk run
    returning its request count) with `strace -c -f` attached to `pids`."""
    with tempfile.TemporaryDirectory(prefix="shoal-bench-strace-") as d:
        out, err = Path(d) / "summary", Path(d) / "stderr"
        args = ["strace", "-c", "-f", "-o", str(out)]
        for pid in pids:
            args += ["-p", str(pid)]
        with err.open("w") as err_file:
            strace = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            attached = Retrying(
                stop=stop_after_delay(ATTACH_TIMEOUT),
                wait=wait_fixed(0.05),
                retry=retry_if_result(lambda ok: not ok),
                retry_error_callback=lambda _state: False,
            )(_attached, err, pids)
            if not attached:
                raise RuntimeError(f"strace did not attach to {pids}: {err.read_text()[-300:]}")
            requests = run()
        finally:
            strace.send_signal(signal.SIGINT)
            try:
                strace.wait(timeout=10)
            except subprocess.TimeoutExpired:
                strace.kill()
                strace.wait(timeout=5)
        calls = parse(out.read_text() if out.exists() else "")
    n = max(int(requests), 1)
    return sum(calls.values()) / n, collections.Counter({k: v / n for k, v in calls.items()})


def line(name: str, total: float, calls: collections.Counter[str], top: int = 8) -> str:
    shown = ", ".join(f"{k} {v:.2f}" for k, v in calls.most_common(top) if v >= 0.05)
    return f"  {name:<12} {total:5.1f} per request: {shown}"
