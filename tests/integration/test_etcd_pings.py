"""The store's HTTP/2 pings against a real etcd: never "too many", still finding a hung member.

One etcd member on loopback with etcd's default keepalive policy (`--grpc-keepalive-min-time`
5 s, pings on a connection without a call refused: etcd sets `PermitWithoutStream` false
and has no flag for it). The store's channel must stay up on an idle connection: etcd
answers the fourth ping that comes while no call is open with GOAWAY "too_many_pings"
and closes the connection. With etcd3aio's `keepalive_permit_without_calls` (the options
before decision 98) an idle connection was pinged every `KEEPALIVE_MS` and dropped after
about 18 s, again and again, each time with the calls on it, and the client doubled its
ping interval each time (the hung-member check slowed down for good).
Then the other half: with a watch open, the pings still go, and a member that hangs
(SIGSTOP: its TCP connection stays) is found within a ping interval and its timeout.
The channel's state is followed with `wait_for_state_change`, bounded by deadlines.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from node.dev.freeports import free_port_pair
from node.store.etcd import EtcdStore
from node.store.etcd_channel import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS
from tests.helpers import etcd_member_argv, wait_until

pytestmark = pytest.mark.integration

PING = KEEPALIVE_MS / 1000  # s
IDLE = 4 * PING + 8  # s: etcd's third strike (the fourth ping without a call) falls well within
FOUND = PING + KEEPALIVE_TIMEOUT_MS / 1000 + 4  # s: a hung member's connection is given up within
READY = grpc.ChannelConnectivity.READY


class Member:
    def __init__(self, root: Path) -> None:
        port = free_port_pair()
        self.endpoint = f"127.0.0.1:{port}"
        argv = etcd_member_argv("pings", root / "etcd", port, port + 1)
        with (root / "etcd.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    m = Member(tmp_path)
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
async def store(member: Member) -> AsyncIterator[EtcdStore]:
    s = EtcdStore([member.endpoint], timeout=5.0)
    await s.connect()
    try:

        async def answers() -> bool:
            try:
                await s.ping()
                return True
            except Exception:
                return False

        await wait_until(answers, 30.0, 0.2, "etcd answering")
        yield s
    finally:
        await s.close()


def _channel(store: EtcdStore) -> grpc.aio.Channel:
    channel = store._client._channel
    assert channel is not None
    assert channel.get_state() == READY
    return channel


async def _leaves_ready(channel: grpc.aio.Channel, within: float) -> bool:
    """Does the channel's connection drop (it leaves READY) within `within` seconds?"""
    try:
        async with asyncio.timeout(within):
            await channel.wait_for_state_change(READY)
    except TimeoutError:
        return False
    return True


async def test_an_idle_connection_is_not_called_out_for_too_many_pings(store: EtcdStore) -> None:
    channel = _channel(store)
    assert not await _leaves_ready(channel, IDLE), (
        f"the idle connection to etcd dropped within {IDLE:.0f}s: etcd's GOAWAY too_many_pings "
        "(pings without a call open)"
    )
    await store.put("/pings/after", b"1")


async def test_a_hung_member_is_found_by_a_ping_while_a_watch_is_open(
    store: EtcdStore, member: Member
) -> None:
    revision = await store.put("/pings/before", b"1")

    async def follow() -> None:
        async for _ in store.watch("/pings/", revision + 1):
            pass

    watcher = asyncio.create_task(follow())
    try:
        channel = _channel(store)
        assert not await _leaves_ready(channel, 2 * PING), "the connection with a watch open dropped"
        member.proc.send_signal(signal.SIGSTOP)
        assert await _leaves_ready(channel, FOUND), f"a hung member's connection still up after {FOUND:.0f}s"
    finally:
        member.proc.send_signal(signal.SIGCONT)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
