"""A frozen etcd member (SIGSTOP: its TCP connections stay open, nothing answers).

Three real etcd members on loopback, one `EtcdStore` over all three. Before the fix the
store's round-robin channel kept sending one call in three to the frozen member, each
hanging to its deadline, for as long as the member stayed frozen: a run of good calls
never came. Now an unanswered HTTP/2 ping closes that connection and the channel
leaves the member out (docs/testbed.md). The test asserts the outcome, not a speed: a
run of `RUN` consecutive successful writes and reads, within a generous deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.dev.freeports import free_port
from node.store.base import StoreError
from node.store.etcd import EtcdStore
from tests.helpers import etcd_member_argv, wait_until

pytestmark = pytest.mark.integration

RUN = 20  # consecutive good calls that show the frozen member is left out
DEADLINE = 30.0  # s: well beyond 6 s ping interval + 2 s ping timeout, short of gRPC's default 60 s


def _members() -> list[tuple[str, int, int]]:
    return [(f"m{i}", free_port(), free_port()) for i in range(3)]


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[tuple[list[str], list[subprocess.Popen[bytes]]]]:
    members = _members()
    initial = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, _, peer in members)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, client, peer in members:
            log = (tmp_path / f"{name}.log").open("wb")
            argv = etcd_member_argv(name, tmp_path / name, client, peer, initial)
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        yield [f"127.0.0.1:{client}" for _, client, _ in members], procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(10)


async def test_a_frozen_member_is_left_out_and_calls_go_on(
    etcd3: tuple[list[str], list[subprocess.Popen[bytes]]],
) -> None:
    endpoints, procs = etcd3
    store = EtcdStore(endpoints, timeout=5.0)
    await store.connect()
    try:

        async def all_answer() -> bool:
            try:
                for i in range(6):  # round-robin: every member's connection is up and used
                    await store.put(f"/frozen/{i}", b"v")
                return True
            except StoreError:
                return False

        await wait_until(all_answer, 30, 0.2, "the three members answering")
        os.kill(procs[1].pid, signal.SIGSTOP)
        failed = 0

        async def a_good_run() -> bool:
            nonlocal failed
            for i in range(RUN):
                try:
                    await store.put(f"/frozen/{i % 3}", str(i).encode())
                    assert (await store.get(f"/frozen/{i % 3}")) is not None
                except StoreError:
                    failed += 1
                    return False
            return True

        await wait_until(a_good_run, DEADLINE, 0.05, f"{RUN} good calls in a row with a member frozen")
        print(f"\nfrozen member: {failed} call(s) failed before it was left out")
    finally:
        os.kill(procs[1].pid, signal.SIGCONT)
        await asyncio.wait_for(store.close(), 10)
