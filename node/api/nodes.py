"""Node listing and the membership stream for the client API.

A node's `status` is the cluster's verdict: `down` when the leader marked it down
(gossip declared it dead) or when its registry entry is gone; `not-ready` when the node
says it cannot run tasks (`NodeInfo.not_ready`: its container engine does not answer);
`starting` while its proxy does not serve the published ports yet (`NodeInfo.starting`:
its workers have not taken the first route table; tasks are placed there meanwhile);
`ready` otherwise.
`member_state`, `incarnation` and `state_age` are the *answering* node's own gossip
view, which may lead the verdict by the leader's grace period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from node.api import convert
from node.gossip.member import GONE, Member, MemberEvent
from node.model.domain import (
    Assignment,
    EndpointRecord,
    NodeInfo,
    NodeSpec,
    NodeStatus,
    readable_endpoints,
    routable_endpoints,
    serving,
)
from node.model.keys import Keys
from node.pb import api_pb2
from node.store import Store


class MemberView(Protocol):
    def members(self) -> list[Member]: ...
    def watch(self) -> asyncio.Queue[MemberEvent]: ...
    def unwatch(self, queue: asyncio.Queue[MemberEvent]) -> None: ...


def _gossip(pb: api_pb2.Node, member: Member | None, now: float) -> api_pb2.Node:
    if member is not None:
        pb.member_state = member.state.value
        pb.incarnation = member.incarnation
        pb.state_age = max(0.0, now - member.since)
    return pb


async def list_nodes(store: Store, keys: Keys, view: MemberView | None) -> api_pb2.ListNodesResponse:
    kvs, _ = await store.range(keys.nodes)
    tasks, _ = await store.range(keys.tasks)
    down = {keys.tail(kv.key, keys.down_all) for kv in (await store.range(keys.down_all))[0]}
    specs = {
        keys.tail(kv.key, keys.nodespecs): NodeSpec.from_json(kv.value)
        for kv in (await store.range(keys.nodespecs))[0]
    }
    counts: dict[str, int] = {}
    reserved: dict[str, tuple[float, int]] = {}
    for kv in tasks:
        task = Assignment.from_json(kv.value)
        counts[task.node] = counts.get(task.node, 0) + 1
        cpu, memory = reserved.get(task.node, (0.0, 0))
        reserved[task.node] = (cpu + task.cpu, memory + task.memory)
    leader_node, epoch = convert.leader(await store.get(keys.leader))
    members = {m.node: m for m in view.members()} if view is not None else {}
    now = time.monotonic()
    out = []
    for info in sorted((NodeInfo.from_json(kv.value) for kv in kvs), key=lambda n: n.id):
        pb = convert.node(
            info,
            info.id == leader_node,
            counts.get(info.id, 0),
            reserved.get(info.id, (0.0, 0)),
            specs.get(info.id),
        )
        if info.id in down:
            pb.status = NodeStatus.DOWN.value
        elif info.not_ready:
            pb.status = NodeStatus.NOT_READY.value
        elif info.starting:  # decision 76: ready once its proxy serves the published ports
            pb.status = NodeStatus.STARTING.value
        out.append(_gossip(pb, members.get(info.id), now))
    registered = {n.id for n in out}
    for node in sorted((set(counts) | set(members) | down) - registered):
        pb = convert.down_node(node, counts.get(node, 0))
        pb.reserved_cpu, pb.reserved_memory = reserved.get(node, (0.0, 0))
        spec = specs.get(node)
        if spec is not None:
            pb.availability = spec.availability
        member = members.get(node)
        if member is not None:
            pb.address = member.address.rpartition(":")[0]
        out.append(_gossip(pb, member, now))
    return api_pb2.ListNodesResponse(nodes=out, epoch=epoch)


async def routable(
    store: Store, keys: Keys, service: str, view: MemberView | None, uid: str | None = None
) -> list[EndpointRecord]:
    """The endpoints traffic may go to, by the proxy's rule (`node.model.domain.routable_endpoints`):
    the task is still assigned there (for incarnation `uid` of the service, when given), and
    its node is neither marked down nor dead (or left) in this node's gossip view, which
    leads the leader's verdict by its grace period."""
    return (await routable_at(store, keys, service, view, uid))[0]


async def routable_at(
    store: Store, keys: Keys, service: str, view: MemberView | None, uid: str | None = None
) -> tuple[list[EndpointRecord], int]:
    """`routable`, and the newest revision among the records it was read from (what a
    reader of the same keys must have seen to agree: `node.api.resolve`)."""
    kvs, _ = await store.range(keys.endpoints(service))
    tasks, _ = await store.range(keys.service_tasks(service))
    uids = {service: uid} if uid is not None else None
    assigned = serving((Assignment.from_json(kv.value) for kv in tasks), uids)
    endpoints = routable_endpoints(
        readable_endpoints(kv.value for kv in kvs), assigned, await gone(store, keys, view)
    )
    return endpoints, max((kv.mod_revision for kv in (*kvs, *tasks)), default=0)


async def gone(store: Store, keys: Keys, view: MemberView | None) -> set[str]:
    """Nodes not to send traffic to: marked down by the leader, or dead or left in this
    node's gossip view (which leads the leader's verdict by its grace period)."""
    out = {keys.tail(kv.key, keys.down_all) for kv in (await store.range(keys.down_all))[0]}
    if view is not None:
        out |= {m.node for m in view.members() if m.state in GONE}
    return out


def member_pb(m: Member | MemberEvent, previous: str = "", age: float = 0.0) -> api_pb2.Member:
    return api_pb2.Member(
        node=m.node,
        address=m.address,
        state=m.state.value,
        incarnation=m.incarnation,
        previous=previous,
        time=time.time(),
        state_age=age,
    )


async def watch_members(view: MemberView) -> AsyncIterator[api_pb2.Member]:
    queue = view.watch()
    try:
        now = time.monotonic()
        for m in view.members():
            yield member_pb(m, age=max(0.0, now - m.since))
        while True:
            ev = await queue.get()
            yield member_pb(ev, previous=ev.previous.value if ev.previous else "")
    finally:
        view.unwatch(queue)
