"""`shoal.v1.Secrets`: create, update, list and remove secrets and configs (issue 13).

Admin only: `shoal.v1.Secrets` is in no role's table (`node.security.tokens` fails
closed), so only an admin token reaches these handlers, never a node certificate. A
value goes in and never comes out: no answer, log line, event or error carries it.
"""

from __future__ import annotations

import contextlib
import logging

import grpc

from node.api.admin import _caller
from node.api.objects import Objects, check_object_name
from node.api.server import handle
from node.api.services import ServiceWriter
from node.model.domain import new_cause
from node.model.errors import NotFound
from node.pb import secrets_pb2, secrets_pb2_grpc
from node.security.objects import ObjectRecord
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)


def info(r: ObjectRecord, services: list[str]) -> secrets_pb2.ObjectInfo:
    return secrets_pb2.ObjectInfo(
        kind=r.kind,
        name=r.name,
        revision=r.revision,
        version=r.version,
        size=r.size,
        created=r.created,
        updated=r.updated,
        services=sorted(services),
        stack=r.stack,
    )


class SecretsServicer(secrets_pb2_grpc.SecretsServicer):
    def __init__(self, writer: ServiceWriter, events: EventLog | None = None) -> None:
        self.writer = writer
        self.events = events

    @property
    def objects(self) -> Objects:
        return self.writer.objects

    @handle
    async def PutObject(
        self, request: secrets_pb2.PutObjectRequest, context: grpc.aio.ServicerContext
    ) -> secrets_pb2.PutObjectResponse:
        name = check_object_name(request.kind, request.name)
        before = None
        if request.update:
            with contextlib.suppress(NotFound):  # `put` says what to do then
                before = (await self.objects.get(request.kind, name)).revision
        cause = new_cause()  # issue 14: the rolled versions' and this event's
        record, rolled = await self.objects.put(
            request.kind, name, request.value, request.update, self.writer, cause
        )
        changed = record.revision != before
        verb = "updated" if request.update else "created"
        if changed:
            log.info("%s %s %s by %s (%s)", request.kind, name, verb, _caller(), record.revision)
            if self.events is not None:
                rolls = ", ".join(rolled) or "none"
                message = f"{request.kind} {name} {verb} ({record.size} bytes); rolls: {rolls}"
                self.events.emit(f"{request.kind}.{verb}", message, cause=cause)
        return secrets_pb2.PutObjectResponse(info=info(record, []), rolled=rolled, changed=changed)

    @handle
    async def ListObjects(
        self, request: secrets_pb2.ListObjectsRequest, context: grpc.aio.ServicerContext
    ) -> secrets_pb2.ListObjectsResponse:
        records, users = await self.objects.all(request.kind)
        return secrets_pb2.ListObjectsResponse(objects=[info(r, users.get(r.name, [])) for r in records])

    @handle
    async def RemoveObject(
        self, request: secrets_pb2.RemoveObjectRequest, context: grpc.aio.ServicerContext
    ) -> secrets_pb2.RemoveObjectResponse:
        name = check_object_name(request.kind, request.name)
        await self.objects.remove(request.kind, name)
        log.info("%s %s removed by %s", request.kind, name, _caller())
        if self.events is not None:
            self.events.emit(f"{request.kind}.removed", f"{request.kind} {name} removed")
        return secrets_pb2.RemoveObjectResponse()
