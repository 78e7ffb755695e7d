"""A replica's connection carries the streams of many clients: one client that never
reads its responses must not close the window the others share (`H2Peer.received`)."""

from __future__ import annotations

import asyncio

import grpc
import h2.connection
import h2.events
import pytest

from node.proxy import h2_conn, h2_peer, h2_proxy
from node.proxy.h2_peer import STREAM_WINDOW, H2Peer, _Connection, config
from tests.helpers import wait_until
from tests.unit.test_proxy_h2 import HOST, channel, cluster

BIG = [
    (b":method", b"POST"), (b":path", b"/t.T/Big"), (b":scheme", b"http"), (b":authority", b"x"),
    (b"content-type", b"application/grpc"), (b"te", b"trailers"),
]  # fmt: skip


async def test_a_client_that_never_reads_does_not_stop_the_others_on_its_replica_connection() -> None:
    async with cluster(1) as (proxy, (replica,)), channel(proxy) as ch:
        assert [m async for m in ch.unary_stream("/t.T/Big")(b"", timeout=5)]  # the replica connection is up
        _, writer = await asyncio.open_connection(HOST, proxy.port)
        conn = h2.connection.H2Connection(config(client_side=True))
        conn.initiate_connection()
        for _ in range(6):  # 6 x 256 KiB unread: more than the replica connection's window
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, BIG)
            conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
        writer.write(conn.data_to_send())

        def held() -> int:
            return sum(c.peer.queued() for c in proxy._open)

        # two stream windows held: on the way that tied the connection's window to the
        # passing on, that window was then closed (557 KB held, the rest acknowledged
        # in h2's batches), and the next call waited for good
        await wait_until(lambda: held() >= 2 * STREAM_WINDOW, 5, message="held for the reader")
        got = [m async for m in ch.unary_stream("/t.T/Big")(b"", timeout=5)]  # the same replica connection
        assert len(got) == 64
        assert replica.calls == 8
        writer.close()
        await wait_until(lambda: all(c.peer.early == 0 for c in proxy._open), 5, message="budgets back")


def test_a_clients_budget_bounds_what_is_acknowledged_on_reading() -> None:
    touched: list[H2Peer] = []
    replica_side = H2Peer(client_side=True, touch=touched.append)
    client = H2Peer(client_side=False, touch=touched.append)
    acks = [replica_side.received(1, 16_384, client) for _ in range(h2_peer.EARLY_MAX // 16_384 + 3)]
    early = [a for a in acks if a.early is not None]
    assert len(early) == h2_peer.EARLY_MAX // 16_384 and client.early == h2_peer.EARLY_MAX
    assert all(a.early is None for a in acks[len(early) :])  # past the budget: tied to the passing on
    for a in acks:
        a.done()
    assert client.early == 0


@pytest.mark.parametrize("size", [1, 40_000, STREAM_WINDOW])
def test_the_two_halves_send_what_acknowledge_received_data_sends(size: int) -> None:
    def opened() -> tuple[_Connection, int]:
        c = _Connection(client_side=True)
        c.initiate_connection()
        remote = h2.connection.H2Connection(config(client_side=False))
        remote.initiate_connection()
        c.receive_data(remote.data_to_send())
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, BIG)
        remote.receive_data(c.data_to_send())
        remote.send_headers(sid, [(b":status", b"200")])
        for _ in range(3):
            remote.send_data(sid, b"x" * 16_384)
        c.receive_data(remote.data_to_send())
        c.data_to_send()
        return c, sid

    whole, sid = opened()
    whole.acknowledge_received_data(size, sid)
    halves, sid2 = opened()
    halves.ack_connection(size)
    halves.ack_stream(sid2, size)
    assert halves.data_to_send() == whole.data_to_send()


async def test_a_stream_waiting_for_a_slot_too_long_fails_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h2_conn, "CAPACITY", 1)
    monkeypatch.setattr(h2_proxy, "CONNS_PER_BACKEND", 1)
    monkeypatch.setattr(h2_proxy, "QUEUE_TIMEOUT", 0.3)
    monkeypatch.setattr(h2_proxy, "SWEEP", 0.1)
    async with cluster(1) as (proxy, (replica,)), channel(proxy) as ch:
        count = ch.unary_stream("/t.T/Count")
        long = asyncio.ensure_future(asyncio.wait_for(_all(count(b"2 1")), 10))  # holds the one slot ~2 s
        await wait_until(lambda: replica.calls == 1, 5, message="the long call started")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _all(count(b"1", timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no free stream on the replicas of service" in (err.value.details() or "")
        assert await long == [b"r0 0", b"r0 1"] and proxy.stats.timeouts == 1
        assert await _all(count(b"1", timeout=5)) == [b"r0 0"]  # the slot is free again


async def _all(call: object) -> list[bytes]:
    return [m async for m in call]  # type: ignore[attr-defined]
