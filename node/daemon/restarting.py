"""A node that is stopped to come back (an upgrade of shoald, a restart) says so.

On SIGTERM, unless it leaves for good (`leave_on_stop`) or a background task died, the
daemon puts `restarting/<node>` on a lease of its own of `restart_grace` seconds (the
lease TTL by default). While that mark lives, the leader does not act on the node's
gossip death (`leader.liveness.DownMarks`): its containers keep running through the
restart, so moving them would only start copies and stop the originals. The mark is
never deleted: it expires, so a node that does not come back has its tasks moved one
grace later than a crashed one. A restart longer than the node's lease TTL loses its
registry entry all the same, and its tasks move then (the default grace is that TTL).
"""

from __future__ import annotations

import json
import math
import time

from node.model.config import NodeConfig
from node.model.keys import Keys
from node.store import Store


def grace(config: NodeConfig) -> float:
    """Seconds the mark lives: `restart_grace`, 0 = the lease TTL, -1 = no mark."""
    if config.restart_grace < 0:
        return 0.0
    return config.restart_grace or float(config.timings.lease_ttl)


async def mark(store: Store, keys: Keys, node: str, seconds: float) -> None:
    lease = await store.grant(max(1, math.ceil(seconds)))
    value = json.dumps({"since": time.time(), "grace": seconds}).encode()
    await store.put(keys.restarting(node), value, lease=lease)
