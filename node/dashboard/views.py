"""The dashboard's JSON views: the client API's own answers, called in process.

Each view runs the `shoal.v1.Shoal` handler that the CLI's command would reach
(`ListNodes`, `ListServices`, `StreamEvents`, `ServiceLogs`, `TaskUsage`, …) on this
daemon's servicer, with a `LocalContext` in place of gRPC's, and turns the messages into
JSON. The traffic view is the cluster's proxies' counts (`node.dashboard.cluster`).
So the page shows what `shoal node ls`, `service ls`, `events` and `service logs` show,
through the same validation and errors, and nothing a client could not read: spec JSON
(where `secret_env` lives, masked) is not passed on at all. `METHODS` names the method
each view stands for; `node.dashboard.gate` checks the role against it.

Reads are bounded: at most `MAX_EVENTS` events, `MAX_TAIL` lines per task of one
service, `MAX_TASKS` tasks, each view within `rpc.HANDLER_TIMEOUT` like any call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from google.protobuf.message import Message  # type: ignore[import-untyped]

from node.api import convert
from node.api.checks import check_name
from node.api.servicer import ShoalServicer
from node.model.domain import Assignment, RolloutRecord, TaskStatus
from node.model.errors import InvalidArgument
from node.pb import api_pb2
from node.wire import rpc

MAX_EVENTS = 200
MAX_TAIL = 200
MAX_TASKS = 2000

METHODS = {
    "overview": ("ListNodes", "ListServices", "ListTasks", "StreamEvents", "TaskUsage"),
    "nodes": ("ListNodes",),
    "services": ("ListServices",),
    "tasks": ("ListTasks",),
    "events": ("StreamEvents",),
    "logs": ("ServiceLogs",),
    "traffic": ("ListServices",),
    "usage": ("TaskUsage",),
}


class ViewError(Exception):
    """A handler refused (bad argument, not found, store down); `code` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LocalContext:
    """Enough of `grpc.aio.ServicerContext` for handlers called in process."""

    async def abort(self, code: Any, details: str = "", *_: Any) -> None:
        raise ViewError(getattr(code, "name", str(code)), details)

    def peer(self) -> str:
        return "dashboard"

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


def as_json(message: Message) -> dict[str, Any]:
    return MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


class Views:
    def __init__(
        self,
        servicer: ShoalServicer,
        node: str,
        traffic: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.servicer = servicer
        self.node = node
        self.traffic_series = traffic  # `node.dashboard.cluster.ClusterTraffic.series`
        self.context = LocalContext()

    async def _call(self, pending: Awaitable[Any]) -> Any:
        async with asyncio.timeout(rpc.HANDLER_TIMEOUT):
            return await pending

    async def _collect(self, stream: AsyncIterator[Any], limit: int) -> list[Any]:
        out: list[Any] = []
        async with asyncio.timeout(rpc.HANDLER_TIMEOUT):
            async for item in stream:
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    async def nodes(self) -> dict[str, Any]:
        answer = await self._call(self.servicer.ListNodes(api_pb2.ListNodesRequest(), self.context))
        nodes = [as_json(n) for n in answer.nodes]
        leader = next((n["id"] for n in nodes if n["leader"]), "")
        return {"nodes": nodes, "leader": leader, "answered_by": self.node}

    async def services(self) -> dict[str, Any]:
        answer = await self._call(self.servicer.ListServices(api_pb2.ListServicesRequest(), self.context))
        store, keys = self.servicer.store, self.servicer.keys
        rollouts = {
            r.service: r
            for r in (RolloutRecord.from_json(kv.value) for kv in (await store.range(keys.rollouts))[0])
        }
        services = []
        for s in answer.services:
            s.ClearField("spec_json")  # the masked spec: not needed here, and not passed on at all
            view = as_json(s)
            view.pop("spec_json", None)
            record = rollouts.get(s.name)
            view["rollout"] = as_json(convert.rollout(record)) if record is not None else None
            services.append(view)
        return {"services": services}

    async def tasks(self, service: str = "") -> dict[str, Any]:
        store, keys = self.servicer.store, self.servicer.keys
        if service:
            check_name(service, "service")
        kvs, _ = await store.range(keys.service_tasks(service) if service else keys.tasks)
        statuses, _ = await store.range(keys.status_all)
        by_task = {s.task_id: s for s in (TaskStatus.from_json(kv.value) for kv in statuses)}
        tasks = sorted((Assignment.from_json(kv.value) for kv in kvs), key=lambda t: (t.service, t.slot))
        return {"tasks": [as_json(convert.task(t, by_task.get(t.task_id))) for t in tasks[:MAX_TASKS]]}

    async def events(self, limit: int = 50, service: str = "") -> dict[str, Any]:
        limit = _bounded(limit, "limit", MAX_EVENTS)
        request = api_pb2.StreamEventsRequest(service=service, limit=limit)
        events = await self._collect(self.servicer.StreamEvents(request, self.context), limit)
        return {"events": [as_json(e) for e in reversed(events)]}  # newest first

    async def logs(self, service: str, tail: int = 50) -> dict[str, Any]:
        check_name(service, "service")
        request = api_pb2.LogsRequest(service=service, tail=_bounded(tail, "tail", MAX_TAIL))
        lines: list[dict[str, Any]] = []
        for batch in await self._collect(self.servicer.ServiceLogs(request, self.context), MAX_TASKS):
            for line in batch.lines:
                lines.append(
                    {
                        "time_ns": line.time_ns,
                        "task": line.task,
                        "slot": line.slot,
                        "node": line.node,
                        "stream": line.stream,
                        "text": line.text.decode("utf-8", "replace"),
                        "notice": line.notice,
                    }
                )
        return {"service": service, "lines": lines}

    async def traffic(self) -> dict[str, Any]:
        """Requests/s, errors/s and mean latency per service, counted by the proxies of
        every node that answered (`node.dashboard.cluster`)."""
        if self.traffic_series is None:
            return {"node": self.node, "services": {}, "nodes": [], "notices": ["no traffic figures here"]}
        async with asyncio.timeout(rpc.HANDLER_TIMEOUT):
            return {"node": self.node, **await self.traffic_series()}

    async def usage(self, service: str = "") -> dict[str, Any]:
        """`shoal service ps`'s figures per task (`Shoal/TaskUsage`: every node's samples)."""
        if service:
            check_name(service, "service")
        if self.servicer.usage is None:
            return {"usage": [], "usage_notices": [f"node {self.node} serves no usage figures"]}
        request = api_pb2.UsageRequest(service=service)
        answer = await self._call(self.servicer.TaskUsage(request, self.context))
        rows = [
            {
                "task_id": t.task_id,
                "service": t.service,
                "slot": t.slot,
                "node": t.node,
                "cpu_percent": round(t.cpu_percent, 2),
                "memory_bytes": t.memory_bytes,
                "memory_limit": t.memory_limit,
                "restarts": t.restarts,
                "at": t.at,
            }
            for t in answer.tasks[:MAX_TASKS]
        ]
        return {"usage": rows, "usage_notices": list(answer.notices)}

    async def overview(self) -> dict[str, Any]:
        nodes, services, tasks, events, usage, traffic = await asyncio.gather(
            self.nodes(), self.services(), self.tasks(), self.events(), self.usage(), self.traffic()
        )
        return {**nodes, **services, **tasks, **events, **usage, "traffic": traffic}


def _bounded(value: int, what: str, most: int) -> int:
    if not 1 <= value <= most:
        raise InvalidArgument(f"{what}: {value} must be between 1 and {most}")
    return value
