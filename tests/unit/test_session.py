"""`Session`: a lost lease fires `lost` at once, a new one is granted, and a leader
session revokes the lost lease once etcd answers again (so the leader key goes)."""

from __future__ import annotations

import asyncio

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
