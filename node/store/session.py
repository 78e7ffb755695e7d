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
- one renewal that hangs (a sick member) cannot outlast the lease: each try gets half
  the time left before `deadline - margin` (at least `MIN_TRY`), and a failed one is
  tried again at once (round robin sends it to another member) while time remains.
  The next renewal is due `ttl / 3` after the last one was *sent*.
- `answered` is when etcd last answered a grant or a renewal (monotonic seconds): etcd
  cannot have extended the lease past `answered + ttl`, so after that it has certainly
  expired (`node.agent.disconnect`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_fixed

from node.store.base import Store, StoreError, StoreUnavailable
from node.store.retry import patiently

log = logging.getLogger(__name__)

MIN_TRY = 0.2  # s: the shortest a renewal is given for its answer
RETRY_WAIT = 0.1  # s: between failed renewals (a refused connection fails at once)

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
        self._sent = 0.0  # when the last renewal that etcd answered was sent
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
        self._sent, self.deadline = sent, sent + self.ttl
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

    async def _renew_once(self) -> int:
        """One renewal, given half the time left before the lease is `expiring`."""
        sent = time.monotonic()
        bound = max(MIN_TRY, (self.deadline - self.margin - sent) / 2)
        try:
            async with asyncio.timeout(bound):  # etcd's own timeout may be shorter still
                ttl = await self.store.keepalive(self.lease)
        except TimeoutError as exc:
            raise StoreUnavailable(f"no answer within {bound:.2f}s") from exc
        if ttl > 0:
            self._sent, self.deadline = sent, sent + ttl
            self.answered = time.monotonic()
        return ttl

    async def _renew(self) -> int:
        """Renew the lease, retried at once while it is not `expiring`; the TTL granted
        (0 or less: etcd has no such lease). Raises `StoreError` when time ran out."""

        def out_of_time(state: RetryCallState) -> bool:
            return self.expiring()

        def failed(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            said = log.warning if state.attempt_number == 1 else log.debug  # not 10 a second
            said("lease %x keepalive failed: %s; trying again", self.lease, exc)

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(StoreError),
            stop=out_of_time,
            wait=wait_fixed(RETRY_WAIT),
            before_sleep=failed,
            reraise=True,
        ):
            with attempt:
                return await self._renew_once()
        raise AssertionError("unreachable")  # tenacity re-raises the last failure

    async def run(self) -> None:
        """Keep the lease alive forever; replace it when lost."""
        while True:
            if self.valid.is_set():
                try:
                    ttl = await self._renew()
                except StoreError as exc:
                    await self._lose(f"not renewed in time: {exc}")
                    continue
                if ttl <= 0:
                    await self._lose("expired in etcd")
                    continue
                await asyncio.sleep(max(0.0, self._sent + max(MIN_TRY, ttl / 3) - time.monotonic()))
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
