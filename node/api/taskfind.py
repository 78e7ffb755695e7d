"""Finding the tasks that logs and exec name (issue 14, decision 71): by service, by
SERVICE.SLOT, by task id, or by the first characters of a task id, across the nodes.

Where a task is looked for, in order:
1. `tasks/…` in etcd (assigned now, and the old task of a handoff) by its full id;
2. `status/<task>`: no longer assigned, but its node still reports it;
3. every node's containers (`Peer/FindTasks`, and this node's engine directly): a
   container's labels name its task, service, slot and node, so a task whose container
   a node keeps after it exited (`task_history_limit`, decision 71) is found though etcd
   has forgotten it, and so is a task named by a prefix of its id (as logs print it:
   12 characters). A prefix must have at least `MIN_PREFIX` characters and match one
   task; else the error lists what it matched.

The fan-out costs one call per node (each one list call to its engine), bounded by
`FIND_TIMEOUT`, and happens only for an id that is not in etcd. A node that does not
answer is named in the error when nothing else matched.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from node.api.checks import check_name, check_task_id
from node.model.domain import Assignment, NodeInfo, TaskStatus
from node.model.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from node.model.keys import Keys
from node.pb import peer_pb2
from node.runtime.base import LABELS, EngineError
from node.runtime.docker_logs import DockerStreams
from node.store import Store
from node.wire.peerstubs import PeerStubs

log = logging.getLogger(__name__)

MIN_PREFIX = 4  # characters of a task id that may name it
FIND_TIMEOUT = 5.0  # s a node may take to list its tasks by prefix
FIND_MAX = 50  # tasks one node sends at most for a prefix
HISTORY_MAX = 500  # tasks of one service one node sends at most for `service ps --all` (newest first)


@dataclass(frozen=True)
class Target:
    """A task to read or exec in, and the node that holds it."""

    task: str
    service: str
    slot: int
    node: str


class TaskFinder:
    """What finding needs: the store, this node, its engine streams (`local`: a
    `node.runtime.docker_logs.DockerStreams`, or None) and its peers (`PeerStubs`)."""

    store: Store
    keys: Keys
    node: str
    cluster: str = ""  # this node's cluster id: its containers carry it (set by the daemon)
    local: DockerStreams | None
    peers: PeerStubs

    async def _assignments(self, service: str = "") -> list[Assignment]:
        prefix = self.keys.service_tasks(service) if service else self.keys.tasks
        kvs, _ = await self.store.range(prefix)
        out: list[Assignment] = []
        for kv in kvs:
            a = Assignment.from_json(kv.value)
            out.append(a)
            old = a.handed_off()
            if old is not None:
                out.append(old)
        return sorted(out, key=lambda a: (a.slot, a.created_at))

    async def service_targets(self, service: str) -> list[Target]:
        if await self.store.get(self.keys.service(check_name(service, "service"))) is None:
            raise NotFound(f"service '{service}' not found; `shoal service ls` lists the services")
        return [Target(a.task_id, a.service, a.slot, a.node) for a in await self._assignments(service)]

    async def task_target(self, task_id: str) -> Target:
        check_task_id(task_id)  # before it is asked of every node
        assigned = await self._assignments()
        for a in assigned:
            if a.task_id == task_id:
                return Target(a.task_id, a.service, a.slot, a.node)
        kv = await self.store.get(self.keys.status(task_id))
        if kv is not None:  # no longer assigned, but its node still reports it
            s = TaskStatus.from_json(kv.value)
            return Target(s.task_id, s.service, s.slot, s.node)
        if len(task_id) < MIN_PREFIX:
            raise NotFound(
                f"task '{task_id}' not found; give its id, or at least its first {MIN_PREFIX} characters "
                "(`shoal service ps SERVICE` lists the tasks)"
            )
        found = {a.task_id: Target(a.task_id, a.service, a.slot, a.node) for a in assigned}
        found = {t: v for t, v in found.items() if t.startswith(task_id)}
        silent = []
        for node, targets in await self._ask_nodes(task_id):
            if targets is None:
                silent.append(node)
                continue
            for t in targets:
                found.setdefault(t.task, t)  # etcd's assignment first: it names the node to read
        if len(found) == 1:
            return next(iter(found.values()))
        if found:
            names = ", ".join(
                f"{t.task} ({t.service}.{t.slot} on {t.node})" for t in list(found.values())[:5]
            )
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            raise InvalidArgument(f"'{task_id}' names {len(found)} tasks: {names}{more}; give more of its id")
        why = f" (node(s) {', '.join(sorted(silent))} did not answer: it may be there)" if silent else ""
        raise NotFound(
            f"task '{task_id}' not found{why}; `shoal service ps SERVICE` lists the tasks, and a "
            "task that exited is kept only until its container is removed (`task_history_limit`)"
        )

    async def exec_target(self, text: str) -> Target:
        """A task id, SERVICE.SLOT, or SERVICE (its lowest slot whose task runs)."""
        name, dot, slot_text = text.partition(".")
        if dot:
            if not _digits(slot_text):
                raise InvalidArgument(f"{text!r}: write SERVICE.SLOT with a slot number, e.g. web.1")
            found = [t for t in await self.service_targets(name) if t.slot == int(slot_text)]
            if not found:
                raise NotFound(
                    f"service '{name}' has no task in slot {slot_text}; see `shoal service ps {name}`"
                )
            return found[-1]
        if await self.store.get(self.keys.service(text)) is None:
            return await self.task_target(text)
        targets = await self.service_targets(text)
        if not targets:
            raise FailedPrecondition(f"service '{text}' has no tasks now; see `shoal service ps {text}`")
        statuses = [await self.store.get(self.keys.status(t.task)) for t in targets]
        running = [
            t
            for t, kv in zip(targets, statuses, strict=True)
            if kv is not None and TaskStatus.from_json(kv.value).state == "running"
        ]
        return (running or targets)[0]

    async def address(self, node: str) -> str:
        kv = await self.store.get(self.keys.node(node))
        if kv is None:
            raise Unavailable(f"node {node} is not registered now (down, or left the cluster)")
        info = NodeInfo.from_json(kv.value)
        return f"{info.address}:{info.grpc_port}"

    # -- by the containers' labels, on every node ----------------------------------------

    async def local_find(self, prefix: str, service: str = "") -> peer_pb2.FindTasksResponse:
        """This node's tasks whose id starts with `prefix`, of `service` when given (the
        peer half of `FindTasks`). A prefix needs `MIN_PREFIX` characters, unless the
        service is named: then "" lists all its tasks here, up to `HISTORY_MAX`."""
        if len(prefix) < MIN_PREFIX and not service:
            raise InvalidArgument(f"give at least {MIN_PREFIX} characters of a task id")
        out = peer_pb2.FindTasksResponse(node=self.node)
        if self.local is None:
            return out
        labels = {LABELS.NODE: self.node, **({LABELS.CLUSTER: self.cluster} if self.cluster else {})}
        if service:
            labels[LABELS.SERVICE] = service
        try:
            found = [t for t in await self._engine_tasks(labels) if t["task"].startswith(prefix)]
        except EngineError as exc:
            raise Unavailable(f"node {self.node}: {exc}") from None
        cap = HISTORY_MAX if service else FIND_MAX
        if service:  # the newest first: a cap keeps the recent history
            found.sort(key=lambda t: float(t["created"] or 0), reverse=True)
        for t in found[:cap]:
            slot = int(t["slot"]) if _digits(t["slot"]) else 0
            out.tasks.add(
                task=t["task"],
                service=t["service"],
                slot=slot,
                state=t["state"],
                container=t["id"],
                status=t["status"],
                created=float(t["created"] or 0),
                uid=t.get("uid", ""),
            )
        out.truncated = len(found) > cap
        return out

    async def _engine_tasks(self, labels: dict[str, str]) -> list[dict[str, str]]:
        """The engine's tasks carrying `labels`: one listing for every caller that asks while
        it is under way (a thousand `ps --all` at once were a thousand Docker list calls on
        every node, which the agents wait behind)."""
        assert self.local is not None
        under_way: dict[tuple[tuple[str, str], ...], asyncio.Future[list[dict[str, str]]]]
        under_way = self.__dict__.setdefault("_listings", {})
        key = tuple(sorted(labels.items()))
        listing = under_way.get(key)
        if listing is None:
            listing = under_way[key] = asyncio.ensure_future(self.local.tasks("", labels))
            listing.add_done_callback(lambda f: _ended(under_way, key, f))
        return list(await asyncio.shield(listing))

    async def history(self, service: str) -> tuple[list[tuple[str, peer_pb2.FoundTask]], list[str]]:
        """Every node's tasks of `service` whose containers it has (running, or kept after
        they exited): (node, task) pairs, and the nodes that did not answer."""
        kvs, _ = await self.store.range(self.keys.nodes)
        nodes = {NodeInfo.from_json(kv.value).id: NodeInfo.from_json(kv.value) for kv in kvs}
        nodes.setdefault(self.node, NodeInfo(self.node, "", 0))
        replies = await asyncio.gather(*(self._ask_reply(info, "", service) for info in nodes.values()))
        found = [
            (reply.node or node, t)
            for node, reply in zip(nodes, replies, strict=True)
            if reply is not None
            for t in reply.tasks
        ]
        silent = sorted(node for node, reply in zip(nodes, replies, strict=True) if reply is None)
        return found, silent

    async def _ask_nodes(self, prefix: str) -> list[tuple[str, list[Target] | None]]:
        """(node, the tasks it has with this prefix, or None: it did not answer) per
        registered node, this one asked directly."""
        kvs, _ = await self.store.range(self.keys.nodes)
        nodes = {NodeInfo.from_json(kv.value).id: NodeInfo.from_json(kv.value) for kv in kvs}
        nodes.setdefault(self.node, NodeInfo(self.node, "", 0))
        answers = await asyncio.gather(*(self._ask(info, prefix) for info in nodes.values()))
        return list(zip(nodes, answers, strict=True))

    async def _ask(self, info: NodeInfo, prefix: str) -> list[Target] | None:
        reply = await self._ask_reply(info, prefix)
        if reply is None:
            return None
        return [Target(t.task, t.service, t.slot, reply.node or info.id) for t in reply.tasks]

    async def _ask_reply(
        self, info: NodeInfo, prefix: str, service: str = ""
    ) -> peer_pb2.FindTasksResponse | None:
        """One node's `FindTasks` answer (this node's asked directly), or None: it did not
        answer (a node of an older build refuses a service without a prefix: the same)."""
        try:
            if info.id == self.node:
                return await self.local_find(prefix, service)
            stub = self.peers.stub(f"{info.address}:{info.grpc_port}")
            request = peer_pb2.FindTasksRequest(task=prefix, service=service)
            reply: peer_pb2.FindTasksResponse = await stub.FindTasks(request, timeout=FIND_TIMEOUT)
            return reply
        except (grpc.RpcError, Unavailable, InvalidArgument) as exc:
            log.info(
                "tasks %s%s: node %s did not answer: %s", service and f"of {service} ", prefix, info.id, exc
            )
            return None


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() says yes to '²' (which int() refuses) and to other
    scripts' digits (which int() reads as a slot)."""
    return text.isascii() and text.isdigit()


def _ended(under_way: dict[Any, Any], key: Any, listing: asyncio.Future[Any]) -> None:
    """A listing is shared until it ends; its failure is read here as well, for when every
    caller gave up first (shield drops its reader), or asyncio logs it as never retrieved."""
    under_way.pop(key, None)
    if not listing.cancelled():
        listing.exception()
