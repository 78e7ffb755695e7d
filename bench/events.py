"""What the durable event log costs etcd (issue 14, decision 52).

A real etcd (its own `EtcdProcess`). Measured, same process, same machine:

- bytes per event: key + value of a typical event (a `task.started` with a cause id),
  and the growth of etcd's file in use per event;
- a burst of N events through `EventLog` (batched: one transaction per 100) against
  the same N as one put each (the per-node ring's way): wall time and etcd revisions;
- a read of the whole log at the bound (`shoal events` and the leader's trim read it);
- one trim by the leader (`leader.upkeep.Upkeep.trim`) of a log over its bound.

    python bench/events.py [--events 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leader.upkeep import Bounds, Upkeep
from node.dev.devcluster import EtcdProcess, free_port_pair
from node.model.domain import Event
from node.model.keys import Keys
from node.store.base import MemberStatus
from node.store.etcd import EtcdStore
from node.telemetry.events import EventLog

KEYS = Keys()


def typical(i: int) -> Event:
    return Event(
        time.time(),
        "task.started",
        "node-7",
        f"web.{i % 50} started on node-7 (3f2a9c0d1e2b)",
        "web",
        f"t{i:011x}",
        "c0123456789ab",
    )


async def in_use(store: EtcdStore) -> MemberStatus:
    return (await store.member_status())[0]


async def run(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    port = free_port_pair()
    etcd = EtcdProcess(tmp / "data", port, port + 1)
    await asyncio.to_thread(etcd.start)
    store = EtcdStore([etcd.endpoint], timeout=30.0)
    await store.connect()
    try:
        log = EventLog(store, KEYS, "node-7")
        sample = typical(1)
        key = KEYS.event(int(sample.time * 1e9), "node-7", 12345)
        value = len(sample.to_json())
        print(f"one event: key {len(key)} B + value {value} B = {len(key) + value} B")

        # the ring's way: one put (one revision, one fsync) per event
        _, rev0 = await store.range(KEYS.leader)
        t0 = time.perf_counter()
        for i in range(n):
            await store.put(f"{KEYS.prefix}ring/node-7/{i % 256:04d}", typical(i).to_json())
        single = time.perf_counter() - t0
        _, rev1 = await store.range(KEYS.leader)
        await store.delete(f"{KEYS.prefix}ring/", prefix=True)

        # the log's way: emitted at once, written in batches by EventLog.run
        before = await in_use(store)
        _, rev2 = await store.range(KEYS.leader)
        t0 = time.perf_counter()
        writer = asyncio.create_task(log.run())
        emitted = 0
        while emitted < n:
            for i in range(min(log._queue.maxsize - log._queue.qsize(), n - emitted)):
                log.emit("task.started", typical(i).message, "web", f"t{i:011x}", "c0123456789ab")
                emitted += 1
            await asyncio.sleep(0)
        async with asyncio.timeout(120):
            while len((await store.range(KEYS.events))[0]) + log.dropped < n:  # noqa: ASYNC110 (etcd)
                await asyncio.sleep(0.01)
        batched = time.perf_counter() - t0
        writer.cancel()
        _, rev3 = await store.range(KEYS.leader)
        stored, _ = await store.range(KEYS.events)
        after = await in_use(store)
        print(
            f"{n} events, one put each: {single:.2f} s ({n / single:.0f}/s), {rev1 - rev0} revisions\n"
            f"{len(stored)} events, batched:   {batched:.2f} s ({len(stored) / batched:.0f}/s), "
            f"{rev3 - rev2} revisions (dropped: {log.dropped})\n"
            f"etcd bytes in use per event: {(after.db_size_in_use - before.db_size_in_use) / len(stored):.0f}"
        )

        t0 = time.perf_counter()
        kvs, _ = await store.range(KEYS.events)
        read = time.perf_counter() - t0
        size = sum(len(kv.key) + len(kv.value) for kv in kvs)
        print(f"read of the whole log ({len(kvs)} events, {size / 1024:.0f} KiB): {read * 1000:.0f} ms")

        await store.put(KEYS.leader, b"bench")
        leader = await store.get(KEYS.leader)
        assert leader is not None
        keep = max(100, len(kvs) // 2)
        upkeep = Upkeep(store, KEYS, leader.create_revision, log, Bounds(events_max=keep))  # type: ignore[arg-type]
        t0 = time.perf_counter()
        await upkeep.trim()
        trim = time.perf_counter() - t0
        left, _ = await store.range(KEYS.events)
        print(f"trim to {keep}: {upkeep.trimmed} deleted in {trim * 1000:.0f} ms, {len(left)} left")
    finally:
        await store.close()
        await asyncio.to_thread(etcd.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    asyncio.run(run(parser.parse_args().events))


if __name__ == "__main__":
    main()
