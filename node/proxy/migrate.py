"""`net.ipv4.tcp_migrate_req = 1`: a proxy worker that stops listening hands the
connections queued on its sockets to its siblings instead of resetting them.

Every proxy worker listens on each published port with its own SO_REUSEPORT socket
(`node.proxy.worker`); the kernel hashes each new connection to one of them, and a
connection it has accepted waits in that socket's queue until the worker takes it. When a
worker closes its listener (it steps down for a successor of another build, the setting
was lowered), the kernel resets what waits in that queue, unless
`tcp_migrate_req` is 1 (Linux 5.14 and later): then it moves those connections, and
the handshakes still in progress, to another listener of the same port. Measured on this
machine, 16 clients opening connections in a loop while one of two listeners closed:
14-16 connections reset with 0, none with 1 (the kernel default is 0).

The setting is per network namespace, and it changes nothing for a program that does not
use SO_REUSEPORT. It does not cover a handshake that completes while the listener
closes (`node.proxy.ports`), so a route change keeps the port's socket rather than
closing one of two. The daemon sets it at start; when it cannot (no
CAP_NET_ADMIN, a read-only /proc/sys, a kernel without it), it says what an upgrade
or a lowered `proxy_workers` will cost, and how to set it.
"""

from __future__ import annotations

from pathlib import Path

SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def ensure(path: Path = SYSCTL) -> str:
    """Set `path` to 1 unless it is; "" when it is 1 now, else why not (for a warning)."""
    try:
        if path.read_text().strip() == "1":
            return ""
        path.write_text("1\n")
    except FileNotFoundError:
        return f"{path} does not exist (Linux before 5.14)"
    except OSError as exc:
        return f"cannot set {path}: {exc.strerror or exc}"
    return ""


def warning(reason: str) -> str:
    """What an operator reads when `ensure` failed."""
    return (
        f"proxy: {reason}. A listener that stops (a worker's at an upgrade or a lower "
        "proxy_workers, any at a changed route) resets the connections queued on it; "
        "set `sysctl -w net.ipv4.tcp_migrate_req=1` (and in /etc/sysctl.d) to hand them "
        "to the listener beside it instead"
    )
