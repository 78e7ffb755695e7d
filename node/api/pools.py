"""`shoal.v1.Pools` (issue 15): declare the cluster's node pools, and see what they asked for.

`ApplyPools` validates the whole document (`node.model.pools.parse_pools`) and replaces
the `pools` key with its normalized form in one put: nothing is stored when any pool is
wrong. The leader reads it on its next pass (`leader.pools`). `ListPools` reads the
pools and every `poolnodes/` record, with whether each node is registered now (a record
that cannot be read is listed in state `unreadable`, with why); a stored `pools` value
that does not read is refused with FAILED_PRECONDITION naming the key and `pool apply`.
"""

from __future__ import annotations

import json

import grpc

from node.api.server import handle
from node.model.errors import FailedPrecondition, InvalidArgument
from node.model.keys import Keys
from node.model.pools import PoolNode, PoolSpec, parse_pools, pools_to_doc
from node.pb import pools_pb2, pools_pb2_grpc
from node.store import Put, Store
from node.telemetry.events import EventLog

MAX_DOCUMENT = 256 * 1024


def stored_pools(key: str, raw: bytes) -> dict[str, PoolSpec]:
    """The pools stored under `key`; a value that does not read (a hand edit: `ApplyPools`
    stores only checked documents; the leader then acts on no pool, `leader.pools`) is
    refused naming the key and the fix, not an internal error."""
    try:
        return parse_pools(json.loads(raw))
    except (InvalidArgument, ValueError, RecursionError) as exc:
        raise FailedPrecondition(
            f"the stored pools ({key}) cannot be read ({str(exc)[:200]}), so no pool acts; "
            "`shoal pool apply -f pools.yaml` replaces them"
        ) from None


class PoolsServicer(pools_pb2_grpc.PoolsServicer):
    def __init__(self, store: Store, keys: Keys, events: EventLog) -> None:
        self.store, self.keys, self.events = store, keys, events

    @handle
    async def ApplyPools(
        self, request: pools_pb2.ApplyPoolsRequest, context: grpc.aio.ServicerContext
    ) -> pools_pb2.ApplyPoolsResponse:
        if len(request.document_json) > MAX_DOCUMENT:
            raise InvalidArgument(f"the pools document is over {MAX_DOCUMENT // 1024} KiB")
        try:
            doc = json.loads(request.document_json or "{}")
        except ValueError as exc:
            raise InvalidArgument(f"the pools document is not JSON: {exc}") from None
        except RecursionError:  # a deeply nested document (a pools file is a few levels deep)
            raise InvalidArgument("the pools document is nested too deeply to be a pools file") from None
        pools = parse_pools(doc)
        stored = json.dumps(pools_to_doc(pools), sort_keys=True).encode()
        result = await self.store.txn([], [Put(self.keys.pools, stored)])
        names = sorted(pools)
        self.events.emit("pools.applied", f"node pools: {', '.join(names) or 'none'}")
        return pools_pb2.ApplyPoolsResponse(pools=names, revision=result.revision)

    @handle
    async def ListPools(
        self, request: pools_pb2.ListPoolsRequest, context: grpc.aio.ServicerContext
    ) -> pools_pb2.ListPoolsResponse:
        kv = await self.store.get(self.keys.pools)
        pools = stored_pools(self.keys.pools, kv.value) if kv is not None else {}
        kvs, _ = await self.store.range(self.keys.poolnodes)
        registered, _ = await self.store.range(self.keys.nodes)
        alive = {self.keys.tail(r.key, self.keys.nodes) for r in registered}
        out = pools_pb2.ListPoolsResponse()
        for p in pools.values():
            out.pools.append(
                pools_pb2.PoolInfo(
                    name=p.name,
                    min=p.min,
                    max=p.max,
                    cpu=p.node_cpu,
                    memory=p.node_memory,
                    labels=p.labels,
                    idle_timeout=p.idle_timeout,
                    command=list(p.command),
                )
            )
        records = []
        for kv in kvs:
            try:
                records.append(PoolNode.from_json(kv.value))
            except ValueError as exc:  # shown for what it is: one bad record failed the whole list
                pool, _, node = self.keys.tail(kv.key, self.keys.poolnodes).partition("/")
                records.append(PoolNode(pool, node, "unreadable", message=f"record cannot be read: {exc}"))
        for r in sorted(records, key=lambda r: (r.pool, r.node)):
            out.nodes.append(
                pools_pb2.PoolNodeInfo(
                    pool=r.pool,
                    node=r.node,
                    state=r.state,
                    requested_at=r.requested_at,
                    changed_at=r.changed_at,
                    provider_id=r.provider_id,
                    address=r.address,
                    message=r.message,
                    registered=r.node in alive,
                    dedicated=r.dedicated,
                    cpu=r.cpu,
                    memory=r.memory,
                )
            )
        return out
