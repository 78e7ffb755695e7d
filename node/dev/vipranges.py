"""A virtual-address range per dev cluster (issue 13, service names).

Every node of a `shoal dev` cluster shares the host's network stack, and so do the dev
clusters tests and benches run side by side: each gets its own /24 of `DEV_POOL`, so
their name servers and VIPs never meet. The /24 is drawn from the cluster's name and
skips those the host already has as local routes (another cluster's, running or left
over); `release` removes the route when the cluster stops.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess

DEV_POOL = ipaddress.IPv4Network("10.212.0.0/16")  # apart from the default 10.213.0.0/16 and the test bed's


def local_routes() -> set[ipaddress.IPv4Network]:
    try:
        cmd = ["ip", "-4", "route", "show", "table", "local"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    nets = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "local" and "/" in parts[1]:
            try:
                nets.add(ipaddress.IPv4Network(parts[1], strict=False))
            except ValueError:
                continue
    return nets


def free_vip_range(seed: str) -> str:
    """A /24 of DEV_POOL no other cluster on this host holds, claimed at once: its local
    route is added here (`ip route add` fails when the route exists), so two clusters
    starting side by side never draw the same range (a test saw another cluster's VIP
    answer). The daemons' `ip route replace` of it is then a no-op; `release` removes it."""
    used = local_routes()
    subnets = list(DEV_POOL.subnets(new_prefix=24))
    start = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big") % len(subnets)
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if candidate not in used and _claim(str(candidate)):
            return str(candidate)
    return str(subnets[start])


def _claim(vip_range: str) -> bool:
    try:
        cmd = ["ip", "route", "add", "local", vip_range, "dev", "lo"]
        done = subprocess.run(cmd, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return True  # no iproute2 here: names are off anyway, any range does
    return done.returncode == 0 or b"Operation not permitted" in done.stderr  # not root: cannot claim


def release(vip_range: str) -> None:
    subprocess.run(
        ["ip", "route", "del", "local", vip_range, "dev", "lo"], capture_output=True, timeout=10, check=False
    )
