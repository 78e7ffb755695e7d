"""The etcd channel's options: each set once, with a ping that finds a hung member;
and every call asks etcd to refuse it when the member has no leader."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from etcd3aio._protobuf import rpc_pb2, rpc_pb2_grpc

from node.store.base import Put
from node.store.etcd import EtcdStore
from node.store.etcd_channel import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS
from tests.helpers import wait_until


def test_each_channel_option_is_set_once_and_a_hung_member_is_found_by_a_ping() -> None:
    store = EtcdStore(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    options = store._client._manager.grpc_options
    names = [name for name, _ in options]
    assert len(names) == len(set(names)), f"an option set twice: {names}"
    got = dict(options)
    assert got["grpc.lb_policy_name"] == "round_robin"
    assert got["grpc.keepalive_time_ms"] == KEEPALIVE_MS >= 5000  # etcd's --grpc-keepalive-min-time
    assert got["grpc.http2.ping_timeout_ms"] == got["grpc.keepalive_timeout_ms"] == KEEPALIVE_TIMEOUT_MS
    assert got["grpc.http2.max_pings_without_data"] == 0
    # etcd answers pings on a connection without a call open with GOAWAY "too_many_pings"
    # (measured: an idle connection dropped ~18 s after connecting); etcd3aio sets true
    assert got["grpc.keepalive_permit_without_calls"] == 0


class _Recorder(rpc_pb2_grpc.KVServicer, rpc_pb2_grpc.LeaseServicer, rpc_pb2_grpc.WatchServicer):
    """KV, Lease and Watch services that answer at once and keep each call's metadata."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, str]] = {}

    def _note(self, name: str, context: grpc.aio.ServicerContext) -> None:
        self.seen[name] = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}

    async def Range(self, request: object, context: grpc.aio.ServicerContext) -> object:
        self._note("range", context)
        return rpc_pb2.RangeResponse()

    async def Txn(self, request: object, context: grpc.aio.ServicerContext) -> object:
        self._note("txn", context)
        return rpc_pb2.TxnResponse(succeeded=True)

    async def LeaseKeepAlive(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        self._note("keepalive", context)
        async for req in requests:
            yield rpc_pb2.LeaseKeepAliveResponse(ID=req.ID, TTL=5)

    async def Watch(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        self._note("watch", context)
        async for _ in requests:
            yield rpc_pb2.WatchResponse(created=True)


async def test_every_call_asks_etcd_to_refuse_it_without_a_leader() -> None:
    """Before, no call sent etcd's `hasleader` metadata: a member cut off from its peers
    kept a watch open with no events forever (its HTTP/2 pings still answered), and every
    mirror of the daemon froze silently. With it etcd answers "no leader" and the watch
    resumes on another member."""
    recorder = _Recorder()
    server = grpc.aio.server()
    rpc_pb2_grpc.add_KVServicer_to_server(recorder, server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(recorder, server)
    rpc_pb2_grpc.add_WatchServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    store = EtcdStore([f"127.0.0.1:{port}"], timeout=5.0)
    try:
        await store.connect()
        await store.get("/k")
        await store.txn([], [Put("/k", b"v")])
        assert await store.keepalive(7) == 5
        watch = store.watch("/p/", 1)
        task = asyncio.create_task(anext(watch))
        try:
            await wait_until(lambda: "watch" in recorder.seen, timeout=5.0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await watch.aclose()
        for call in ("range", "txn", "keepalive", "watch"):
            assert recorder.seen[call].get("hasleader") == "true", (call, recorder.seen[call])
    finally:
        await store.close()
        await server.stop(None)
