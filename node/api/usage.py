"""Usage per task through any node (issue 14): `Shoal/TaskUsage` and its peer half
`Peer/NodeUsage`.

Each node samples its own containers (`node.runtime.docker_stats.UsageSampler`, a
thread of its own) and keeps their last samples in memory; nothing goes to etcd. The
node the client calls answers with its own samples and asks every other registered
node for theirs over the peer API, all at once, each within `PEER_TIMEOUT`: a node that
does not answer becomes a notice, the others' tasks still come. Restarts are the
agent's count for the task (its `TaskStatus`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

import grpc
import grpc.aio

from node.api.checks import check_name
from node.api.server import handle
from node.api.taskio import PeerStubs
from node.model.domain import NodeInfo
from node.model.errors import FailedPrecondition, NotFound
from node.model.keys import Keys
from node.pb import api_pb2
from node.runtime.docker_stats import Usage, UsageSampler, cpu_percent
from node.store import Store

log = logging.getLogger(__name__)

PEER_TIMEOUT = 3.0  # s a node may take to send its samples


def task_usage(history: tuple[Usage, ...], node: str, restarts: int, with_history: bool) -> api_pb2.TaskUsage:
    """One task's answer from its samples (oldest first, at least one)."""
    last = history[-1]
    out = api_pb2.TaskUsage(
        task_id=last.task_id,
        service=last.service,
        slot=last.slot,
        node=node,
        cpu_percent=cpu_percent(history[-2], last) if len(history) > 1 else 0.0,
        memory_bytes=last.memory_bytes,
        memory_limit=last.memory_limit,
        rx_bytes=last.rx_bytes,
        tx_bytes=last.tx_bytes,
        block_read=last.block_read,
        block_write=last.block_write,
        restarts=restarts,
        at=last.at,
    )
    if with_history:
        for before, after in itertools.pairwise(history):
            out.history.add(
                at=after.at, cpu_percent=cpu_percent(before, after), memory_bytes=after.memory_bytes
            )
    return out


class UsageBook:
    """What the handlers need: this node's sampler, its agent's restart counts, the peers."""

    def __init__(
        self,
        node: str,
        sampler: UsageSampler | None,
        restarts: Callable[[str], int],
        store: Store,
        keys: Keys,
        peers: PeerStubs,
    ) -> None:
        self.node, self.sampler, self.restarts, self.peers = node, sampler, restarts, peers
        self.store, self.keys = store, keys

    async def nodes(self) -> list[NodeInfo]:
        kvs, _ = await self.store.range(self.keys.nodes)
        return [NodeInfo.from_json(kv.value) for kv in kvs]

    def local(self, request: api_pb2.UsageRequest) -> api_pb2.UsageResponse:
        out = api_pb2.UsageResponse()
        if self.sampler is None:
            out.notices.append(f"node {self.node}: usage is not sampled here (its /metrics is off)")
            return out
        for history in list(self.sampler.history.values()):
            last = history[-1]
            if request.service and last.service != request.service:
                continue
            out.tasks.append(task_usage(history, self.node, self.restarts(last.task_id), request.history))
        return out

    async def gather(self, request: api_pb2.UsageRequest) -> api_pb2.UsageResponse:
        if (
            request.service
            and await self.store.get(self.keys.service(check_name(request.service, "service"))) is None
        ):
            raise NotFound(f"service '{request.service}' not found; `shoal service ls` lists the services")
        out = self.local(request)
        others = [n for n in await self.nodes() if n.id != self.node and not n.simulated]
        answers = await asyncio.gather(*(self._ask(n, request) for n in others))
        for answer in answers:
            out.tasks.extend(answer.tasks)
            out.notices.extend(answer.notices)
        ordered = sorted(out.tasks, key=lambda t: (t.service, t.slot, t.node, t.task_id))
        del out.tasks[:]
        out.tasks.extend(ordered)
        return out

    async def _ask(self, node: NodeInfo, request: api_pb2.UsageRequest) -> api_pb2.UsageResponse:
        stub = self.peers.stub(f"{node.address}:{node.grpc_port}")
        try:
            answer: api_pb2.UsageResponse = await stub.NodeUsage(request, timeout=PEER_TIMEOUT)
            return answer
        except grpc.aio.AioRpcError as exc:
            why = exc.details() or exc.code().name
            return api_pb2.UsageResponse(notices=[f"node {node.id}: no usage figures: {why}"])


class _UsageHolder:
    usage: UsageBook | None = None

    def _usage(self) -> UsageBook:
        if self.usage is None:
            raise FailedPrecondition("this node serves no usage figures")
        return self.usage


class UsageHandlers(_UsageHolder):
    """`Shoal/TaskUsage`, mixed into `ShoalServicer` (set `usage`)."""

    @handle
    async def TaskUsage(
        self, request: api_pb2.UsageRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.UsageResponse:
        return await self._usage().gather(request)


class PeerUsageHandlers(_UsageHolder):
    """`Peer/NodeUsage`, mixed into `PeerServicer` (set `usage`)."""

    @handle
    async def NodeUsage(
        self, request: api_pb2.UsageRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.UsageResponse:
        return self._usage().local(request)
