"""The client API (`shoal.v1.Shoal`): any node answers, from etcd.

Handlers are thin: they validate the request, call the store or `ServiceWriter`,
and convert records to messages (`node.api.convert`). Errors are raised as
`node.model.errors` types and mapped to status codes by `node.api.server.handle`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator, Callable

import grpc

from node.api import convert, nodes, resolve
from node.api.admin import AdminHandlers, check_text
from node.api.checks import check_name
from node.api.nodespecs import NodeSpecWriter, check_node
from node.api.server import handle, handle_stream
from node.api.services import ServiceWriter
from node.api.stack_objects import ObjectChange, StackObject
from node.api.stacks import StackWriter
from node.api.taskio import LogsExecHandlers
from node.api.usage import UsageHandlers
from node.api.usage_report import UsageReportHandlers  # issue 15: metering
from node.model import readable
from node.model.domain import (
    Assignment,
    Desired,
    PendingRecord,
    RolloutRecord,
    ServiceRecord,
    TaskStatus,
    UnreadableRecord,
    readable_services,
    template_hash,
)
from node.model.errors import FailedPrecondition, InvalidArgument, NotFound
from node.model.keys import Keys
from node.model.spec import MAX_SPEC_BYTES
from node.pb import api_pb2, api_pb2_grpc
from node.security.auth import current_caller
from node.store import Store
from node.telemetry.events import Filter, decode

_KIND = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*\.?")
_CAUSE = re.compile(r"c[0-9a-f]{12}")


def event_filter(request: api_pb2.StreamEventsRequest) -> Filter:
    """The request's filters, checked: a bad one is refused, naming what to fix."""
    if request.service:
        check_name(request.service, "service")
    if request.kind and (len(request.kind) > 64 or not _KIND.fullmatch(request.kind)):
        raise InvalidArgument(
            f"kind: {request.kind[:80]!r} is not an event kind "
            "(e.g. task.started, or task. for every task.* kind)"
        )
    if request.cause and not _CAUSE.fullmatch(request.cause):
        raise InvalidArgument(
            f"cause: {request.cause[:80]!r} is not a cause id ('c' and 12 hex digits, as `apply` prints)"
        )
    if not math.isfinite(request.since) or request.since < 0:  # NaN passed `< 0`: "everything"
        raise InvalidArgument(f"since: {request.since:g} must be a time (unix seconds), not negative")
    return Filter(request.since, request.service, request.kind, request.cause)


def _who() -> str:
    """The caller, for an event (`task.exec` says it the same way)."""
    caller = current_caller()
    return str(caller) if caller is not None else "an unauthenticated caller"


log = logging.getLogger(__name__)


def _object_change(o: ObjectChange) -> api_pb2.StackObjectChange:
    """What became of one of a stack's objects: names, size, revision; never the value."""
    return api_pb2.StackObjectChange(
        kind=o.kind, name=o.name, action=o.action, size=o.size, revision=o.revision
    )


class ShoalServicer(
    AdminHandlers, LogsExecHandlers, UsageHandlers, UsageReportHandlers, api_pb2_grpc.ShoalServicer
):
    def __init__(self, store: Store, keys: Keys, node: str, members: nodes.MemberView | None = None) -> None:
        self.store = store
        self.keys = keys
        self.members = members
        self.writer = ServiceWriter(store, keys, node)
        self.nodespecs = NodeSpecWriter(store, keys, node)
        self.stacks = StackWriter(self.writer)
        self.emit: Callable[..., None] = lambda *a, **k: None  # the daemon's EventLog.emit (issue 14)
        self.settled: resolve.Settled | None = None  # the mesh's `settled` (decision 76): lookups wait

    def _changed(self, kind: str, record: ServiceRecord, what: str) -> None:
        """The event of an API call that made a new version: who, what, and its cause id."""
        message = f"{record.name} version {record.version}: {what} by {_who()}"
        self.emit(kind, message, record.name, cause=record.cause)

    async def _pending(self, service: str) -> PendingRecord | None:
        """Why some replicas of `service` have no node (the leader's `pending/<service>`);
        None for one that cannot be read too (the leader writes it anew)."""
        kv = await self.store.get(self.keys.pending(service))
        return _pending_of(self.keys.tail(kv.key, self.keys.pendings), kv.value) if kv is not None else None

    async def _pendings(self) -> dict[str, PendingRecord]:
        """Every readable `pending/` record, by service: one that cannot be read (written
        around the leader, which writes it anew) is left out, not a failed `ls`."""
        kvs, _ = await self.store.range(self.keys.pendings)
        out = {}
        for kv in kvs:
            name = self.keys.tail(kv.key, self.keys.pendings)
            if (record := _pending_of(name, kv.value)) is not None:
                out[name] = record
        return out

    async def _tasks(self, service: str = "") -> dict[str, list[tuple[Assignment, TaskStatus | None]]]:
        """Tasks with their observed status, by service (one service, or all)."""
        prefix = self.keys.service_tasks(service) if service else self.keys.tasks
        kvs, _ = await self.store.range(prefix)
        tasks = sorted((Assignment.from_json(kv.value) for kv in kvs), key=lambda t: (t.service, t.slot))
        statuses, _ = await self.store.range(self.keys.status_all)
        by_task = {s.task_id: s for s in (TaskStatus.from_json(kv.value) for kv in statuses)}
        out: dict[str, list[tuple[Assignment, TaskStatus | None]]] = {}
        for t in tasks:
            out.setdefault(t.service, []).append((t, by_task.get(t.task_id)))
        return out

    @handle
    async def ApplyService(
        self, request: api_pb2.ApplyServiceRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ApplyServiceResponse:
        if len(request.spec.encode()) > MAX_SPEC_BYTES:
            raise InvalidArgument(f"spec: larger than {MAX_SPEC_BYTES // 1024} KiB")
        check_text(request.source, "source", 1024)
        record, changed = await self.writer.apply(request.spec, request.source)
        if changed:
            self._changed("service.applied", record, f"applied ({record.spec.replicas} replica(s))")
        return api_pb2.ApplyServiceResponse(
            name=record.name, version=record.version, changed=changed, cause=record.cause
        )

    @handle
    async def GetService(
        self, request: api_pb2.GetServiceRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.Service:
        record, _ = await self.writer.read(check_name(request.name))
        tasks = _of(record, (await self._tasks(record.name)).get(record.name, []))
        out = convert.service(record, tasks)
        pending = await self._pending(record.name)
        if pending is not None and pending.of(record.uid):
            out.pending, out.pending_reason = pending.count, pending.reason
        binds, _ = await self.store.range(self.keys.binds(record.name))
        out.proxy_errors.extend(convert.proxy_errors(binds))
        rollout = await self.store.get(self.keys.rollout(record.name))
        current = RolloutRecord.from_json(rollout.value) if rollout is not None else None
        if current is not None and current.uid and current.uid != record.uid:
            current = None  # a removed namesake's (a pass that raced its `rm` wrote it): not this one's
        if current is not None:
            out.rollout.CopyFrom(convert.rollout(current))
        if current is None or current.to_version != record.version:
            out.update_pending = update_pending(record, [t for t, _ in tasks])
        out.autoscale_json = convert.autoscale_json(
            record, await self.store.get(self.keys.autoscale(record.name))
        )
        return out

    @handle
    async def RollbackService(
        self, request: api_pb2.RollbackServiceRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ApplyServiceResponse:
        record = await self.writer.rollback(check_name(request.name))
        self._changed("service.rolled-back", record, f"rollback of version {record.rollback_of}")
        return api_pb2.ApplyServiceResponse(
            name=record.name, version=record.version, changed=True, cause=record.cause
        )

    @handle
    async def ServiceHistory(
        self, request: api_pb2.ServiceHistoryRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ServiceHistoryResponse:
        current, versions = await self.writer.history(check_name(request.name))
        return api_pb2.ServiceHistoryResponse(
            name=current.name, versions=[convert.version(v, current.version) for v in versions]
        )

    @handle
    async def ListServices(
        self, request: api_pb2.ListServicesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListServicesResponse:
        kvs, _ = await self.store.range(self.keys.services)
        tasks = await self._tasks()
        records = readable_services(kv.value for kv in kvs)
        pending = await self._pendings()
        services = []
        for r in records:
            out = convert.service(r, _of(r, tasks.get(r.name, [])))
            if r.name in pending and pending[r.name].of(r.uid):
                out.pending, out.pending_reason = pending[r.name].count, pending[r.name].reason
            services.append(out)
        return api_pb2.ListServicesResponse(services=services)

    @handle
    async def DeleteService(
        self, request: api_pb2.DeleteServiceRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.DeleteServiceResponse:
        await self.writer.remove(check_name(request.name))
        return api_pb2.DeleteServiceResponse(name=request.name)

    @handle
    async def ScaleService(
        self, request: api_pb2.ScaleServiceRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ScaleServiceResponse:
        before = await self.writer.read(check_name(request.name))
        record = await self.writer.scale(request.name, request.replicas)
        if record.version != before[0].version:
            self._changed("service.scaled", record, f"scaled to {record.replicas} replica(s)")
        return api_pb2.ScaleServiceResponse(
            name=record.name, version=record.version, replicas=record.replicas, cause=record.cause
        )

    @handle
    async def ListTasks(
        self, request: api_pb2.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListTasksResponse:
        name = check_name(request.service, "service")
        record, _ = await self.writer.read(name)
        tasks = _of(record, (await self._tasks(name)).get(name, []))
        out = api_pb2.ListTasksResponse(tasks=[convert.task(t, s) for t, s in tasks])
        if request.all:  # and the kept ones, from every node's engine (decision 71)
            assigned = {t.task_id for t in out.tasks}
            found, silent = await self._taskio().history(name)
            out.tasks.extend(
                convert.kept_task(node, t)
                for node, t in found
                if t.task not in assigned and t.uid in ("", record.uid)  # not a removed namesake's
            )
            out.silent_nodes.extend(silent)
        pending = await self._pending(name)
        if pending is not None and pending.of(record.uid):
            out.pending_slots.extend(pending.slots)
            out.pending_nodes.extend(pending.nodes)
            out.pending_reason = pending.reason
        return out

    @handle
    async def ListNodes(
        self, request: api_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListNodesResponse:
        return await nodes.list_nodes(self.store, self.keys, self.members)

    @handle
    async def SetNodeAvailability(
        self, request: api_pb2.SetNodeAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.UpdateNodeResponse:
        node = check_node(request.node)
        spec, labels, changed = await self.nodespecs.set_availability(node, request.availability)
        return api_pb2.UpdateNodeResponse(
            node=node, availability=spec.availability, labels=labels, changed=changed
        )

    @handle
    async def LabelNode(
        self, request: api_pb2.LabelNodeRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.UpdateNodeResponse:
        node = check_node(request.node)
        spec, labels, changed = await self.nodespecs.label(node, dict(request.set), list(request.remove))
        return api_pb2.UpdateNodeResponse(
            node=node, availability=spec.availability, labels=labels, changed=changed
        )

    @handle_stream
    async def WatchMembers(
        self, request: api_pb2.WatchMembersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.Member]:
        if self.members is None:
            raise FailedPrecondition("this node runs no gossip membership")
        async for member in nodes.watch_members(self.members):
            yield member

    @handle
    async def Resolve(
        self, request: api_pb2.ResolveRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ResolveResponse:
        name = check_name(request.name)
        service, networks = await resolve.target(self.store, self.keys, name)
        answer = await resolve.resolve(self.store, self.keys, service, self.members, self.settled)
        return resolve.as_alias(answer, name, networks)

    @handle_stream
    async def WatchResolve(
        self, request: api_pb2.ResolveRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ResolveResponse]:
        name = check_name(request.name)
        service, networks = await resolve.target(self.store, self.keys, name)
        async for answer in resolve.watch(self.store, self.keys, service, self.members, self.settled):
            yield resolve.as_alias(answer, name, networks)

    @handle_stream
    async def StreamEvents(
        self, request: api_pb2.StreamEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.Event]:
        want = event_filter(request)
        kvs, revision = await self.store.range(self.keys.events)
        past = decode(kvs, want)
        if request.limit:
            past = past[-request.limit :]
        for _, event in past:
            yield convert.event(event)
        if not request.follow:
            return
        async for batch in self.store.watch(self.keys.events, revision + 1):
            puts = [ev.kv for ev in batch.events if ev.kind == "put"]
            for _, event in decode(puts, want):
                yield convert.event(event)
            await asyncio.sleep(0)

    @handle_stream
    async def Backup(
        self, request: api_pb2.BackupRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.BackupChunk]:
        """etcd's snapshot, passed on chunk by chunk (never held whole in memory)."""
        log.info("backup: streaming etcd's snapshot to %s", context.peer())
        async for chunk in self.store.snapshot():
            yield api_pb2.BackupChunk(data=chunk)

    @handle
    async def DeployStack(
        self, request: api_pb2.DeployStackRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.DeployStackResponse:
        if request.objects:
            raise InvalidArgument(
                "objects: DeployStack takes no secrets or configs; DeployStackWithObjects (admin) does"
            )
        return await self._deploy_stack(request, [])

    @handle
    async def DeployStackWithObjects(
        self, request: api_pb2.DeployStackRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.DeployStackResponse:
        """Admin only (in no role's table, as PutObject): it writes secret values."""
        objects = [StackObject(o.kind, o.name, o.value) for o in request.objects]
        return await self._deploy_stack(request, objects)

    async def _deploy_stack(
        self, request: api_pb2.DeployStackRequest, objects: list[StackObject]
    ) -> api_pb2.DeployStackResponse:
        if len(request.spec.encode()) > MAX_SPEC_BYTES:
            raise InvalidArgument(f"spec: larger than {MAX_SPEC_BYTES // 1024} KiB")
        check_text(request.source, "source", 1024)
        name, changes, done = await self.stacks.deploy_with_objects(
            request.spec, request.source, request.name, objects
        )
        cause = next((c.cause for c in changes if c.cause), "")
        made = [f"{c.service} {c.action}" for c in changes if c.action != "unchanged"]
        made += [f"{o.kind} {o.name} {o.action} ({o.size} bytes)" for o in done if o.action != "unchanged"]
        if made:  # names and sizes only, never a value (decision 72)
            log.info("stack %s deployed by %s: %s", name, _who(), ", ".join(made))
            self.emit("stack.deployed", f"stack {name} by {_who()}: {', '.join(made)}", cause=cause)
        return api_pb2.DeployStackResponse(
            cause=cause,
            name=name,
            changes=[
                api_pb2.StackChange(service=c.service, version=c.version, action=c.action) for c in changes
            ],
            objects=[_object_change(o) for o in done],
        )

    @handle
    async def RemoveStack(
        self, request: api_pb2.RemoveStackRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RemoveStackResponse:
        removed, objects = await self.stacks.remove_with_objects(request.name)
        gone = [f"{o.kind} {o.name}" for o in objects if o.action == "removed"]
        if gone:
            log.info("stack %s removed by %s, with %s", request.name, _who(), ", ".join(gone))
        return api_pb2.RemoveStackResponse(
            name=request.name, services=removed, objects=[_object_change(o) for o in objects]
        )

    @handle
    async def ListStacks(
        self, request: api_pb2.ListStacksRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListStacksResponse:
        members = await self.stacks.members(request.name)
        if request.name and not members:
            raise NotFound(f"stack '{request.name[:80]}' not found; `shoal stack ls` lists the stacks")
        tasks = await self._tasks() if members else {}
        pending = await self._pendings()
        stacks = []
        for name, records in sorted(members.items()):
            services = []
            for record, _ in sorted(records, key=lambda m: m[0].name):
                out = convert.service(record, _of(record, tasks.get(record.name, [])))
                if (p := pending.get(record.name)) is not None and p.of(record.uid):
                    out.pending, out.pending_reason = p.count, p.reason
                services.append(out)
            stacks.append(api_pb2.Stack(name=name, services=services))
        return api_pb2.ListStacksResponse(stacks=stacks)


__all__ = ["NotFound", "ShoalServicer", "check_name"]


def update_pending(record: ServiceRecord, tasks: list[Assignment]) -> bool:
    """A task the service keeps is not on its spec's template (the CLI waits for it). A
    replicated service keeps slots 1..replicas; a global one every task meant to run, one
    per node, whose slot numbers are any (`replicas` says nothing of them)."""
    target = template_hash(record.spec)
    if record.spec.mode == "global":
        kept = [t for t in tasks if t.desired == Desired.RUNNING.value]
    else:
        kept = [t for t in tasks if t.slot <= record.replicas]
    return any(t.template != target for t in kept)


def _pending_of(name: str, raw: bytes) -> PendingRecord | None:
    try:
        return readable.pending(name, raw)
    except UnreadableRecord as exc:
        log.warning("%s; left out of the answer", exc)
        return None


def _of(
    record: ServiceRecord, tasks: list[tuple[Assignment, TaskStatus | None]]
) -> list[tuple[Assignment, TaskStatus | None]]:
    """The tasks of `record`'s incarnation: a service re-created with the same name before
    the leader unassigned the removed one's tasks showed them as its own (ps, inspect, ls)."""
    return [(t, s) for t, s in tasks if not t.uid or not record.uid or t.uid == record.uid]
