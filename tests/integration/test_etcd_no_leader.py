"""An etcd member that lost its leader: the store's calls fail at once, then recover.

Three real etcd members on loopback (as `test_etcd_frozen_member`), one `EtcdStore`
connected to member 0 only, so no round robin hides that member's state. Its two peers
are stopped: member 0 still answers TCP and HTTP/2 pings, but has no leader once its
election timeout passes (etcd's CheckQuorum makes a leader step down too). Every call
sends `hasleader` (decision 82), so etcd refuses it at once, and the store says
"etcd has no leader (quorum lost?)": asserted for a write, a read, a listing and a lease
grant, each answered well within one store deadline (`FAST` against `TIMEOUT`).
Without `hasleader` (the code before decision 82) each of these waited for a leader
until the store's deadline and failed as "no answer within 5s": a daemon's every call
hung for its whole deadline, and nothing said why.
Then the peers come back: writes go through again, and a watch opened before the
outage delivers a write made after it (it resumed where it had stopped).
Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from node.dev.freeports import free_port
from node.store.base import KV, StoreError, StoreUnavailable
from node.store.etcd import EtcdStore
from tests.helpers import etcd_member_argv, wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 5.0  # s: the store's deadline per call
FAST = 2.0  # s: a call refused for want of a leader answers within this
DEADLINE = 30.0  # s: for the cluster to form, lose its leader, and elect one again
NO_LEADER = "etcd has no leader (quorum lost?)"


class Members:
    """Three etcd members on 127.0.0.1 (free ports, data under `root`), each started and
    stopped on its own; a stopped member starts again from its data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = [(free_port(), free_port()) for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None, None, None]

    def endpoint(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i][0]}"

    def start(self, i: int) -> None:
        initial = ",".join(f"m{j}=http://127.0.0.1:{peer}" for j, (_, peer) in enumerate(self.ports))
        client, peer = self.ports[i]
        argv = etcd_member_argv(f"m{i}", self.root / f"m{i}", client, peer, initial)
        with (self.root / f"m{i}.log").open("ab") as log:
            self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, i: int) -> None:
        proc, self.procs[i] = self.procs[i], None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[Members]:
    members = Members(tmp_path)
    try:
        for i in range(3):
            members.start(i)
        yield members
    finally:
        for i in range(3):
            members.stop(i)


async def _writes(store: EtcdStore) -> bool:
    try:
        await store.put("/noleader/probe", b"v")
        return True
    except StoreError:
        return False


async def test_a_member_without_a_leader_refuses_at_once_and_recovers(etcd3: Members) -> None:
    store = EtcdStore([etcd3.endpoint(0)], timeout=TIMEOUT)
    await store.connect()
    seen: list[KV] = []
    watcher: asyncio.Task[None] | None = None
    try:
        await wait_until(lambda: _writes(store), DEADLINE, 0.2, "the cluster taking writes")
        revision = await store.put("/noleader/before", b"1")

        async def follow() -> None:
            async for batch in store.watch("/noleader/", revision + 1):
                seen.extend(event.kv for event in batch.events)

        watcher = asyncio.create_task(follow())
        etcd3.stop(1)
        etcd3.stop(2)

        async def refused() -> str | None:
            try:
                await store.put("/noleader/k", b"v")
            except StoreUnavailable as exc:
                return str(exc) if NO_LEADER in str(exc) else None
            return None

        print(f"\nfirst refusal: {await wait_until(refused, DEADLINE, 0.1, 'a write refused: no leader')}")
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "put": lambda: store.put("/noleader/k", b"v"),
            "get": lambda: store.get("/noleader/before"),
            "range": lambda: store.range("/noleader/"),
            "grant": lambda: store.grant(10),
        }
        for name, call in calls.items():
            start = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            took = time.monotonic() - start
            assert NO_LEADER in str(caught.value), f"{name}: {caught.value}"
            assert took < FAST, f"{name} took {took:.2f}s to fail: {caught.value}"
            print(f"{name}: refused in {took:.3f}s")

        etcd3.start(1)
        etcd3.start(2)
        await wait_until(lambda: _writes(store), DEADLINE, 0.1, "writes accepted again")
        await store.put("/noleader/after", b"2")
        await wait_until(
            lambda: any(kv.key == "/noleader/after" for kv in seen), DEADLINE, 0.05, "the watch resumed"
        )
        assert watcher is not None and not watcher.done(), "the watch ended"
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await asyncio.wait_for(store.close(), 10)
