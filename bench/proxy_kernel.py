"""The kernel fast path's rows for bench/proxy.py (issue 17 item 4, decision 75).

`kernel_port(backends)` writes a table exactly as a node would for a `fast_path: kernel`
port (`node.proxy.kernel_rules.ruleset`: DNAT per new connection, `numgen inc` round
robin) on a free port of 127.0.0.1 towards the bench's 3 backends, and removes it when
the bench ends (also on error or Ctrl-C). No process serves that port: the kernel's nat
output chain rewrites each SYN, so the proxy's CPU is softirq time, not a process's
(printed as NaN). Needs root and `nft`; otherwise it says why and the rows are left out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

from node.dev import freeports
from node.proxy.kernel_rules import KernelPort, removal, ruleset, table_name

HOST = "127.0.0.1"


@contextlib.contextmanager
def kernel_port(backends: list[int]) -> Iterator[int | None]:
    """A published port served by the kernel (None: it cannot be had here, said why)."""
    nft = shutil.which("nft")
    if nft is None or os.geteuid() != 0:
        print("kernel path rows left out: " + ("nft is not installed (apt-get install -y nftables)"
              if nft is None else "they need root (nftables)"))  # fmt: skip
        yield None
        return
    port = freeports.free_port(HOST)
    table = table_name("bench", f"p{os.getpid()}")
    text = ruleset(table, HOST, [KernelPort("bench", port, tuple((HOST, p) for p in backends))])
    subprocess.run([nft, "-f", "-"], input=text, text=True, capture_output=True, check=True, timeout=10)
    try:
        yield port
    finally:
        subprocess.run([nft, "-f", "-"], input=removal(table), text=True, capture_output=True, timeout=10)
