"""The leader's etcd upkeep (leader.upkeep): each rule alone, then the shell on a
MemoryStore with a fake clock: compaction to the retention window, one member
defragmented per pass past the threshold, gone nodes and stale tokens reaped, and
nothing written by a deposed leader."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from leader.upkeep import Bounds, Upkeep, compact_target, defrag_due, gone_nodes, stale_tokens
from node.model.domain import Event
from node.model.keys import Keys
from node.security.tokens import Role, StoredToken
from node.store import Fenced
from node.store.base import MemberStatus
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import FakeClock

KEYS = Keys()
DAY = 86400.0
MiB = 2**20
NOW = 1.8e9  # wall clock of the tests


# -- the rules ----------------------------------------------------------------------------


def test_compaction_goes_to_the_newest_revision_noted_a_retention_ago() -> None:
    samples = [(0.0, 10), (60.0, 50), (120.0, 90), (180.0, 130)]
    assert compact_target(samples, 100.0, 600.0) == 0, "nothing that old yet"
    assert compact_target(samples, 660.0, 600.0) == 50
    assert compact_target(samples, 780.0, 600.0) == 130


@pytest.mark.parametrize(
    ("size", "in_use", "due"),
    [
        (100 * MiB, 40 * MiB, True),  # 60 % free space, big enough
        (100 * MiB, 60 * MiB, False),  # mostly in use
        (10 * MiB, 1 * MiB, False),  # mostly free but small: not worth a stall
    ],
)
def test_defragmentation_past_the_fragmentation_threshold_only(size: int, in_use: int, due: bool) -> None:
    assert defrag_due(MemberStatus("m1:2379", size, in_use), 0.5, 64 * MiB) is due
    assert not defrag_due(MemberStatus("m1:2379", size, in_use), 0.0, 64 * MiB), "0 turns it off"


def test_a_node_is_gone_when_unregistered_and_silent_longer_than_the_reap_time() -> None:
    marks = {"old": NOW - 2 * DAY, "back": NOW - 2 * DAY, "recent": NOW - 60}
    newest = {"old": NOW - 2 * DAY, "back": NOW - 10, "ringonly": NOW - 3 * DAY, "talks": NOW - 2 * DAY}
    registered = ["talks"]
    assert gone_nodes(marks, newest, registered, NOW, DAY) == {"old", "ringonly"}
    # "back" wrote an event recently, "recent" died a minute ago, "talks" is registered


def test_tokens_revoked_or_expired_longer_than_the_reap_time_are_stale() -> None:
    now = datetime.fromtimestamp(NOW, UTC)

    def token(tid: str, revoked: timedelta | None = None, expires: timedelta | None = None) -> StoredToken:
        _, record = StoredToken.issue(Role.VIEWER, now=now - timedelta(days=30))
        return StoredToken(
            tid,
            record.role,
            record.hash,
            record.created,
            revoked=(now - revoked).isoformat() if revoked else "",
            expires=(now - expires).isoformat() if expires else "",
        )

    records = [
        token("long-revoked", revoked=timedelta(days=2)),
        token("just-revoked", revoked=timedelta(hours=1)),
        token("long-expired", expires=timedelta(days=3)),
        token("expires-later", expires=-timedelta(days=3)),
        token("in-force"),
    ]
    assert stale_tokens(records, now, DAY) == ["long-expired", "long-revoked"]


# -- the shell ----------------------------------------------------------------------------


class Members:
    """A MemoryStore that also answers etcd's maintenance calls, for two members."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.sizes = {"m1:2379": (200 * MiB, 50 * MiB), "m2:2379": (200 * MiB, 50 * MiB)}
        self.defragmented: list[str] = []

    async def member_status(self) -> list[MemberStatus]:
        return [MemberStatus(e, size, used) for e, (size, used) in self.sizes.items()]

    async def defragment(self, endpoint: str) -> None:
        self.defragmented.append(endpoint)
        _, used = self.sizes[endpoint]
        self.sizes[endpoint] = (used, used)


class MaintainedStore(MemoryStore):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.members = Members(self)

    async def member_status(self) -> list[MemberStatus]:
        return await self.members.member_status()

    async def defragment(self, endpoint: str) -> None:
        await self.members.defragment(endpoint)


async def leading(store: MemoryStore) -> int:
    """Write a leader key as an election would; its create revision is the epoch."""
    await store.put(KEYS.leader, b"n1")
    kv = await store.get(KEYS.leader)
    assert kv is not None
    return kv.create_revision


def upkeep(store: MemoryStore, epoch: int, clock: FakeClock, **bounds: float) -> Upkeep:
    return Upkeep(store, KEYS, epoch, EventLog(store, KEYS, "n1"), Bounds(**bounds), clock, lambda: NOW)  # type: ignore[arg-type]


async def test_the_leader_compacts_to_its_retention_window() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    u = upkeep(store, await leading(store), clock, retention=600.0)
    noted: list[int] = []
    for minute in range(15):
        for i in range(10):
            await store.put(f"/x/{i}", str(minute).encode())
        noted.append(store.revision)
        await u.compact()
        clock.advance(60.0)
    # at minute 14 the revision noted at minute 4 (10 minutes before) is the compaction point
    assert store.compacted == u.compacted == noted[4]
    assert len(u.samples) <= 11, "the notes are bounded by the window"


async def test_one_fragmented_member_is_defragmented_per_pass() -> None:
    clock = FakeClock()
    store = MaintainedStore(clock)
    u = upkeep(store, await leading(store), clock, defrag_ratio=0.5, defrag_min=64 * MiB)
    await u.defragment()
    assert store.members.defragmented == ["m1:2379"], "one member at a time"
    await u.defragment()
    assert store.members.defragmented == ["m1:2379", "m2:2379"]
    await u.defragment()
    assert store.members.defragmented == ["m1:2379", "m2:2379"], "nothing left to defragment"


async def test_gone_nodes_and_stale_tokens_are_reaped_in_one_fenced_write() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    epoch = await leading(store)
    mark = json.dumps({"since": NOW - 2 * DAY, "epoch": 1, "by": "gossip"}).encode()
    await store.put(KEYS.down("gone"), mark)
    await store.put(KEYS.down("fresh"), json.dumps({"since": NOW - 60}).encode())
    for seq in range(3):
        old = Event(NOW - 2 * DAY, "node.started", "gone", "hello")
        await store.put(KEYS.event(int(old.time * 1e9), "gone", seq), old.to_json())
    await store.put(KEYS.node("alive"), b"{}")
    _, revoked = StoredToken.issue(Role.ADMIN)
    old_revoke = datetime.fromtimestamp(NOW - 2 * DAY, UTC).isoformat()
    revoked = replace(revoked, revoked=old_revoke)
    await store.put(KEYS.token(revoked.id), revoked.to_json())
    _, kept = StoredToken.issue(Role.ADMIN)
    await store.put(KEYS.token(kept.id), kept.to_json())
    before = store.revision

    await upkeep(store, epoch, clock, reap_after=DAY).reap()

    assert store.revision == before + 1, "one transaction"
    assert [kv.key for kv in (await store.range(KEYS.down_all))[0]] == [KEYS.down("fresh")]
    assert len((await store.range(KEYS.events))[0]) == 3, "a gone node's events stay (trimmed by age only)"
    assert [kv.key for kv in (await store.range(KEYS.tokens))[0]] == [KEYS.token(kept.id)]


async def test_a_deposed_leader_reaps_and_compacts_nothing() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    epoch = await leading(store)
    await store.put(KEYS.down("gone"), json.dumps({"since": NOW - 2 * DAY}).encode())
    await store.delete(KEYS.leader)
    await leading(store)  # another node leads now
    u = upkeep(store, epoch, clock, reap_after=DAY, retention=600.0)
    with pytest.raises(Fenced):
        await u.reap()
    assert await store.get(KEYS.down("gone")) is not None
    await u.compact()
    clock.advance(700.0)
    with pytest.raises(Fenced):
        await u.compact()
    assert store.compacted == 0


async def test_an_etcd_error_skips_a_step_until_the_next_pass() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    u = upkeep(store, await leading(store), clock, retention=600.0)
    store.unavailable = True
    await u.tick()  # logged, not raised: the leader keeps leading
    store.unavailable = False
    await u.tick()
    assert u.samples


async def test_the_leader_runs_the_upkeep_while_it_leads() -> None:
    from node.daemon.leadership import Leadership
    from node.store.session import Session
    from tests.helpers import wait_until

    store = MemoryStore()
    await store.put(KEYS.down("gone"), json.dumps({"since": 1.0}).encode())  # gone since 1970
    session = Session(store, ttl=10)
    await session.start()
    leadership = Leadership(
        store, KEYS, "n1", "127.0.0.1:7070", session, EventLog(store, KEYS, "n1"), 1.0, bounds=Bounds()
    )
    task = asyncio.create_task(leadership.run())
    try:
        await wait_until(lambda: leadership.epoch, timeout=10, message="leading")

        async def reaped() -> bool:
            return await store.get(KEYS.down("gone")) is None

        await wait_until(reaped, timeout=10, message="the down mark of a long-gone node reaped")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
