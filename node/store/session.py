"""A node's session with etcd: one lease, kept alive, replaced when lost.

Everything a node publishes about itself (its registry entry, task status,
endpoints, and the leader key while it leads) hangs on this lease, so it all
vanishes when the node stops renewing it.

Guarantees:
- `lease` is valid until `deadline` (monotonic seconds), computed from the time a
  renewal was *sent* plus the TTL etcd granted, so it is never later than etcd's own
  expiry; `expiring()` turns true `margin` seconds before that.
- when the lease is lost (or about to be), `lost` callbacks run *at once*, before a
  new lease is granted: the leader stops its work there.
- a new lease is then granted and the `renewed` callbacks run to re-publish.
- `answered` is when etcd last answered a grant or a renewal (monotonic seconds): etcd
  cannot have extended the lease past `answered + ttl`, so after that it has certainly
  expired (`node.agent.disconnect`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from node.store.base import Store, StoreError
from node.store.retry import patiently

log = logging.getLogger(__name__)

Callback = Callable[[int], Awaitable[None] | None]


class Session:
    def __init__(
        self, store: Store, ttl: int, margin: float | None = None, revoke_lost: bool = False
    ) -> None:
        if ttl < 2:
            raise ValueError("lease ttl must be at least 2 seconds")
        self.store = store
        self.ttl = ttl
        self.margin = margin if margin is not None else max(0.5, ttl / 5)
        # Revoke a lost lease once etcd answers again. etcd renews every lease when it
        # comes back, so what hangs on a lease we gave up would outlive us by a TTL; for
        # the leader key that means no election until it expires.
        self.revoke_lost = revoke_lost
        self.lease = 0
        self.deadline = 0.0
        self.answered = time.monotonic()
        self.valid = asyncio.Event()
        self._on_lost: list[Callback] = []
        self._on_renewed: list[Callback] = []

    def on_lost(self, cb: Callback) -> None:
        self._on_lost.append(cb)

    def on_renewed(self, cb: Callback) -> None:
        self._on_renewed.append(cb)

    def expiring(self) -> bool:
        return time.monotonic() >= self.deadline - self.margin

    async def start(self) -> int:
        """Grant the first lease (raises StoreUnavailable when etcd is down)."""
        sent = time.monotonic()
        self.lease = await self.store.grant(self.ttl)
        self.deadline = sent + self.ttl
        self.answered = time.monotonic()
        self.valid.set()
        return self.lease

    async def _fire(self, callbacks: list[Callback], lease: int) -> None:
        for cb in callbacks:
            try:
                result = cb(lease)
                if result is not None:
                    await result
            except Exception:
                log.exception("session callback %r failed", cb)

    async def _lose(self, why: str) -> None:
        log.warning("etcd lease %x lost: %s", self.lease, why)
        self.valid.clear()
        await self._fire(self._on_lost, self.lease)

    async def run(self) -> None:
        """Keep the lease alive forever; replace it when lost."""
        while True:
            if self.valid.is_set():
                sent = time.monotonic()
                try:
                    ttl = await self.store.keepalive(self.lease)
                except StoreError as exc:
                    ttl = -1
                    log.warning("lease %x keepalive failed: %s", self.lease, exc)
                if ttl > 0:
                    self.deadline = sent + ttl
                    self.answered = time.monotonic()
                    await asyncio.sleep(max(0.2, ttl / 3))
                    continue
                if ttl == 0 or self.expiring():
                    await self._lose("expired in etcd" if ttl == 0 else "not renewed in time")
                    continue
                await asyncio.sleep(min(0.5, max(0.05, self.deadline - self.margin - time.monotonic())))
                continue
            lost = self.lease
            await patiently("cannot get a new lease", first=1.0, most=1.0, logger=log)(self.start)
            log.info("new etcd lease %x", self.lease)
            if self.revoke_lost and lost:
                try:
                    await self.store.revoke(lost)
                except StoreError as exc:
                    log.warning("could not revoke the lost lease %x: %s", lost, exc)
            await self._fire(self._on_renewed, self.lease)

    async def close(self, revoke: bool) -> None:
        if revoke and self.lease:
            try:
                await self.store.revoke(self.lease)
            except StoreError as exc:
                log.warning("could not revoke lease %x: %s", self.lease, exc)
        self.valid.clear()
