"""The leader's etcd upkeep on a real etcd: compaction happens, a member is
defragmented, and a mirror cut off across the compaction re-lists and is whole.

Its own etcd (an `EtcdProcess`, so compacting it disturbs no other test). A mirror
watches through a `FaultProxy`; the proxy is blocked (a partition) while keys are
rewritten and deleted and the upkeep compacts to a revision past the mirror's last
event. When the partition heals, the mirror's resume asks for compacted history:
it must re-list (not skip, not stall) and equal a fresh listing. The defragmentation
shrinks the member's file (measured with etcd's maintenance Status).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from leader.upkeep import Bounds, Upkeep
from node.dev.devcluster import EtcdProcess
from node.model.keys import Keys
from node.store.base import MemberStatus
from node.store.cache import PrefixCache
from node.store.etcd import EtcdStore
from node.telemetry.events import EventLog
from tests.factories import FakeClock
from tests.faultproxy import FaultProxy, port_below_ephemeral
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

KEYS = Keys()
PREFIX = "/m/"
VALUE = b"x" * 10_000
KEYCOUNT = 100
REWRITES = 5  # each key rewritten this often while the mirror is cut off: history to compact away


def _state(kvs: object) -> dict[str, bytes]:
    return {kv.key: kv.value for kv in kvs}  # type: ignore[attr-defined]


async def test_compaction_and_defragmentation_with_a_mirror_cut_off_across_them(tmp_path: Path) -> None:
    port = port_below_ephemeral(count=2)
    etcd = EtcdProcess(tmp_path / "etcd" / "data", port, port + 1)
    await asyncio.to_thread(etcd.start)
    proxy = FaultProxy(etcd.endpoint)
    await proxy.start()
    direct = EtcdStore([etcd.endpoint], timeout=5.0)
    watched = EtcdStore([proxy.endpoint], timeout=2.0)
    mirror = PrefixCache(watched, PREFIX)
    task: asyncio.Task[None] | None = None
    try:
        await direct.connect()
        await watched.connect()
        await direct.put(KEYS.leader, b"n1")
        leader = await direct.get(KEYS.leader)
        assert leader is not None
        clock = FakeClock()
        upkeep = Upkeep(
            direct,
            KEYS,
            leader.create_revision,
            EventLog(direct, KEYS, "n1"),
            Bounds(retention=600.0, defrag_ratio=0.5, defrag_min=2**20),
            clock,
        )
        for i in range(KEYCOUNT):
            await direct.put(f"{PREFIX}{i:03d}", VALUE)
        task = asyncio.create_task(mirror.run())
        await wait_until(lambda: len(mirror.items) == KEYCOUNT, timeout=10, message="mirror listed")

        proxy.block()  # the mirror is cut off from here on
        for round_ in range(REWRITES):
            for i in range(KEYCOUNT):
                await direct.put(f"{PREFIX}{i:03d}", VALUE[:-1] + str(round_).encode())
        for i in range(0, KEYCOUNT, 2):
            await direct.delete(f"{PREFIX}{i:03d}")
        await upkeep.compact()  # notes the revision now
        clock.advance(601.0)
        await upkeep.compact()  # ... and compacts to it, a retention later
        assert upkeep.compacted > mirror.revision, "the mirror's next revision is compacted away"

        async def fragmented() -> MemberStatus | None:  # freed pages count at etcd's next commits
            await direct.put("/other/tick", b"1")
            [status] = await direct.member_status()
            return status if status.db_size_in_use < status.db_size * 0.5 else None

        before = await wait_until(fragmented, timeout=20, message="etcd's file mostly free after compaction")
        await upkeep.defragment()
        assert upkeep.defragmented == [etcd.endpoint]
        [after] = await direct.member_status()
        assert after.db_size < before.db_size, f"the file shrank: {before.db_size} -> {after.db_size}"

        relists = mirror.relists
        proxy.unblock()
        await wait_until(lambda: mirror.relists > relists, timeout=20, message="mirror re-listed")
        fresh, _ = await direct.range(PREFIX)
        await wait_until(
            lambda: _state(mirror.values()) == _state(fresh), timeout=20, message="mirror equal to a listing"
        )
        await direct.put(f"{PREFIX}after", b"1")
        await wait_until(lambda: f"{PREFIX}after" in mirror.items, timeout=20, message="watching again")
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await watched.close()
        await direct.close()
        await proxy.stop()
        await asyncio.to_thread(etcd.stop)
