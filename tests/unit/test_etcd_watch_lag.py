"""A watch resumed on a lagging member is kept; on a restored etcd it re-lists.

Before, a watch created on a member whose revision was behind the one already delivered
was always taken for a restore from a backup (`Compacted`): a follower that had not yet
applied the last writes made every mirror re-list at once, again on each re-open while it
lagged. Now a linearizable read tells the two apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import pytest
from etcd3aio._protobuf import kv_pb2, rpc_pb2, rpc_pb2_grpc

from node.store.base import Compacted
from node.store.etcd import EtcdStore

CLUSTER = 0x5EA1


class _Member(rpc_pb2_grpc.KVServicer, rpc_pb2_grpc.WatchServicer):
    """A member at revision `member` in an etcd whose (linearizable) revision is `etcd`;
    a watch gets its "created" answer at `member`, then the event at its start revision."""

    def __init__(self, member: int, etcd: int) -> None:
        self.member, self.etcd = member, etcd
        self.ranges = 0

    def _header(self, revision: int) -> Any:
        return rpc_pb2.ResponseHeader(cluster_id=CLUSTER, revision=revision)

    async def Range(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.ranges += 1
        return rpc_pb2.RangeResponse(header=self._header(self.etcd))

    async def Watch(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async for req in requests:
            start = req.create_request.start_revision
            yield rpc_pb2.WatchResponse(header=self._header(self.member), created=True)
            kv = kv_pb2.KeyValue(key=b"/p/a", value=b"v", create_revision=start, mod_revision=start)
            yield rpc_pb2.WatchResponse(header=self._header(start), events=[kv_pb2.Event(kv=kv)])
            await asyncio.Event().wait()


async def _first_batch(member: _Member, start: int) -> int:
    server = grpc.aio.server()
    rpc_pb2_grpc.add_KVServicer_to_server(member, server)
    rpc_pb2_grpc.add_WatchServicer_to_server(member, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    store = EtcdStore([f"127.0.0.1:{port}"], timeout=5.0)
    watch = store.watch("/p/", start)
    assert isinstance(watch, AsyncGenerator)
    try:
        await store.connect()
        async with asyncio.timeout(10.0):
            batch = await anext(watch)
        return batch.revision
    finally:
        await watch.aclose()
        await store.close()
        await server.stop(None)


async def test_a_watch_on_a_lagging_member_is_kept_and_gets_its_events() -> None:
    member = _Member(member=95, etcd=101)  # 100 delivered, etcd at 101, this member at 95
    assert await _first_batch(member, 101) == 101
    assert member.ranges == 1


async def test_a_watch_on_a_restored_etcd_lists_again() -> None:
    member = _Member(member=40, etcd=40)  # etcd itself behind what was delivered: a restore
    with pytest.raises(Compacted):
        await _first_batch(member, 101)


class _Dropping(_Member):
    """A member whose first watch stream ends with INTERNAL, as streams re-opened on a real
    etcd member without a leader did, between "no leader" refusals."""

    def __init__(self) -> None:
        super().__init__(member=200, etcd=200)
        self.streams = 0

    async def Watch(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        self.streams += 1
        if self.streams == 1:
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error from Core")
        async for item in super().Watch(requests, context):
            yield item


async def test_a_watch_dropped_with_internal_is_resumed_not_ended() -> None:
    """Before, only UNAVAILABLE and DEADLINE_EXCEEDED resumed a watch: one ended with
    INTERNAL raised `StoreUnavailable`, and every mirror on it
    listed everything again."""
    member = _Dropping()
    assert await _first_batch(member, 150) == 150
    assert member.streams == 2
