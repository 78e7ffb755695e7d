"""`Session`: a lost lease fires `lost` at once, a new one is granted, and a leader
session revokes the lost lease once etcd answers again (so the leader key goes)."""

from __future__ import annotations

import asyncio

from node.store.base import StoreUnavailable
from node.store.memory import MemoryStore
from node.store.session import Session
from tests.helpers import wait_until


async def _lose_and_recover(revoke_lost: bool) -> tuple[MemoryStore, int, int, list[int]]:
    """Lose the lease to an outage, get it back; return the store, both leases, and lost calls."""
    store = MemoryStore()
    session = Session(store, ttl=2, margin=0.5, revoke_lost=revoke_lost)
    first = await session.start()
    await store.put("/k/leader", b"me", lease=first)
    lost: list[int] = []
    session.on_lost(lost.append)
    runner = asyncio.create_task(session.run())
    try:
        store.unavailable = True  # etcd gone: renewals fail until the deadline passes
        await wait_until(lambda: lost == [first], timeout=5, message="lost fired")
        store.unavailable = False
        renewed = lambda: session.valid.is_set() and session.lease != first  # noqa: E731
        await wait_until(renewed, timeout=5, message="new lease")
        return store, first, session.lease, lost
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_leader_session_revokes_its_lost_lease_when_etcd_is_back() -> None:
    store, first, second, _ = await _lose_and_recover(revoke_lost=True)
    assert second != first
    await wait_until(lambda: _gone(store, "/k/leader"), timeout=5, message="the leader key revoked")


async def _gone(store: MemoryStore, key: str) -> bool:
    return await store.get(key) is None


class _OneHungRenewal(MemoryStore):
    """Renewal number `hang_at` lands on a member that does not answer: it fails after
    `hang` seconds (as `EtcdStore.keepalive` does after etcd_timeout); the others answer."""

    def __init__(self, hang_at: int, hang: float) -> None:
        super().__init__()
        self.renewals, self.hang_at, self.hang = 0, hang_at, hang

    async def keepalive(self, lease: int) -> int:
        self.renewals += 1
        if self.renewals == self.hang_at:
            await asyncio.sleep(self.hang)
            raise StoreUnavailable("no answer within 5s")
        return await super().keepalive(lease)


async def test_one_renewal_hanging_on_a_sick_member_does_not_cost_the_lease() -> None:
    """Before, each renewal waited up to etcd_timeout (5 s) for its answer while the lease
    (3 s for the local preset) ran out: one renewal that hung on a sick member lost the
    leader its leadership. Now a renewal gets half the time left and is retried at once."""
    store = _OneHungRenewal(hang_at=2, hang=5.0)
    session = Session(store, ttl=3)
    first = await session.start()
    lost: list[int] = []
    session.on_lost(lost.append)
    runner = asyncio.create_task(session.run())
    try:
        await wait_until(lambda: store.renewals >= 3, timeout=8, message="a renewal after the hung one")
        assert lost == [] and session.lease == first and not session.expiring()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
