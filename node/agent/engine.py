"""Is this node's container engine answering? `EngineWatch` pings it and says so.

Why: a Docker engine that stops answering (dockerd hung, its socket gone) used to be
invisible: the agent's passes failed or hung, its tasks stayed `running` in `ps`, its
endpoints stayed published, and nothing moved. The watch pings the engine every
`interval` seconds (each ping bounded by `PING_BOUND`, so a frozen engine counts as a
failure, not a wait; a busy one has seconds to answer). After `down_after` seconds
without a successful ping the engine is declared down: the agent withdraws every
endpoint of this node and reports its tasks `unknown`, and the daemon re-registers the
node as not ready (`NodeInfo.not_ready`), so the leader places its tasks on other nodes. The first
successful ping after that declares it up again: the node is ready, the agent
reconciles (it re-adopts what runs and stops what was moved away), and the leader may
place tasks there again.

Pure of Docker: it calls `ping` (the runtime's, `node.runtime.base.Runtime.ping`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
PING_BOUND = 3.0  # s a ping may take and still count as an answer (a loaded host's dockerd is slow)


class EngineWatch:
    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        down_after: float = 15.0,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ping = ping
        self.down_after = down_after
        self.interval = interval
        self.clock = clock
        self.up = True
        self.reason = ""  # why it is down ("" while up)
        self.last_ok = clock()
        self.last_error = ""
        self._listeners: list[Callable[[bool], None]] = []

    def on_change(self, fn: Callable[[bool], None]) -> None:
        """Call `fn(up)` on every change of verdict (up -> down, down -> up)."""
        self._listeners.append(fn)

    def ok(self) -> None:
        """A call to the engine answered (a ping, or any call of the agent's)."""
        self.last_ok = self.clock()
        self.last_error = ""
        if not self.up:
            self._set(True, "")

    def failed(self, error: str) -> None:
        """A ping failed or timed out; declare the engine down once it is `down_after` old."""
        self.last_error = error
        silent = self.clock() - self.last_ok
        if self.up and silent >= self.down_after:
            self._set(False, f"the container engine has not answered for {silent:.0f}s: {error}")

    def _set(self, up: bool, reason: str) -> None:
        self.up, self.reason = up, reason
        if up:
            log.warning("the container engine answers again; this node is ready")
        else:
            log.error("%s; this node withdraws its endpoints and reports itself not ready", reason)
        for fn in self._listeners:
            fn(up)

    async def check(self) -> None:
        """One ping, bounded by PING_BOUND (or `interval` when longer)."""
        bound = max(PING_BOUND, self.interval)
        try:
            async with asyncio.timeout(bound):
                await self.ping()
        except TimeoutError:
            self.failed(f"no answer to a ping within {bound:g}s")
        except Exception as exc:  # RuntimeUnavailable, or anything the engine said
            self.failed(str(exc))
        else:
            self.ok()

    async def run(self) -> None:
        while True:
            started = self.clock()
            await self.check()
            await asyncio.sleep(max(0.0, self.interval - (self.clock() - started)))
