"""What a dev cluster leaves on the host when its daemons stop, and its removal: the
containers of the cluster, its nodes' nftables tables (decisions 74, 75) and their proxy
workers (decisions 63, 76: a graceful stop of a daemon leaves them serving).

Used by `DevCluster.stop` and by the tests' teardown checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from node.proxy import kernel_rules, vipnat
from node.proxy import worker_link as workers
from node.runtime.base import LABELS


def stop_proxy_workers(directory: Path, timeout: float = 5.0) -> list[int]:
    """Stop the proxy workers answering in `directory` (a node's `<data_dir>/proxy`): told
    to stop, killed when still there after `timeout` s (a connection left draining); their pids."""
    pids = asyncio.run(workers.stop_all(directory))
    exited = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(0.1),
        retry=retry_if_result(lambda gone: not gone),
        retry_error_callback=lambda _state: False,
    )
    exited(lambda: not any(_running(p) for p in pids))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def remove_containers(cluster: str) -> int:
    """Force-remove every container labelled with this cluster, and its secret files on
    tmpfs (`node.agent.secretfiles`); return how many containers."""
    import docker  # here only: the rest of this module runs without Docker

    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABELS.CLUSTER}={cluster}"})
        for container in found:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        shutil.rmtree(Path("/dev/shm/shoal") / cluster, ignore_errors=True)  # secretfiles.default_root
        return len(found)
    finally:
        client.close()


def kernel_tables(cluster: str, nodes: Iterable[str] = ()) -> list[str]:
    """The nftables tables of this cluster's nodes: the kernel fast path's
    (`node.proxy.kernel_rules.table_name`), and the VIP tables of `nodes`
    (`node.proxy.vipnat.table_name`, named exactly: its names are not a cluster prefix)."""
    nft = shutil.which("nft")
    if nft is None:
        return []
    done = subprocess.run([nft, "list", "tables", "ip"], capture_output=True, text=True, timeout=10)
    names = (line.split()[-1] for line in done.stdout.splitlines() if line.startswith("table ip "))
    vip = {vipnat.table_name(cluster, node) for node in nodes}
    return [n for n in names if kernel_rules.is_table_of(n, cluster) or n in vip]


def remove_kernel_tables(cluster: str, nodes: Iterable[str] = ()) -> int:
    """Delete this cluster's tables (`kernel_tables`); how many there were. A graceful
    stop leaves the fast path's (decision 75); a daemon killed with -9 leaves its VIP
    table too (decision 74)."""
    tables = kernel_tables(cluster, nodes)
    nft = shutil.which("nft")
    if tables and nft is not None:
        text = "".join(kernel_rules.removal(t) for t in tables)
        subprocess.run([nft, "-f", "-"], input=text, capture_output=True, text=True, timeout=10)
    return len(tables)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a worker outlives its daemon: whoever reaps it is not us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
