"""`shoal.v1.Volumes`: list volume claims and remove them (issue 13, item 5).

Admin only (`shoal.v1.Volumes` is in no role's table; `node.security.tokens` fails
closed). A claim (`volumes/<service>/<slot>/<name>`, `node.model.domain.VolumeClaim`) is
written by the leader; here it is only read, marked for removal or deleted:

- `remove` is refused while a task of the slot is assigned (naming it and what to do);
  else, in one transaction that compares the claim's revision and the task key's absence
  (so a slot placed meanwhile makes it retry, then refuse), the claim is marked
  `removing`: the holding node's agent removes the Docker volume and then the claim
  (`node.agent.volumes`). A holding node that is not in the cluster (no `nodes/` key)
  cannot do that: the claim is deleted at once and the answer says the data stays there
  (one restarting, its `restarting/` mark present, counts as in the cluster; both absences
  are compared in the transaction). A claim already marked `removing` whose node has left
  the cluster since is deleted the same way by another `volume rm` (else its slot, a
  namesake service's too, would wait for good). A claim that does not read (written
  around the leader) is deleted by its key, named by service, slot and volume, when no task
  holds the slot; the answer says its Docker volume, on a node unknown, stays.
- `service rm` and `stack rm` delete their claims with the service (`node.api.services`);
  the Docker volumes stay on their nodes (see docs/volumes.md).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import grpc

from node.api.admin import _caller
from node.api.server import handle
from node.model.domain import Assignment, UnreadableRecord, VolumeClaim, read_claim
from node.model.errors import FailedPrecondition, InvalidArgument, NotFound
from node.model.keys import Keys
from node.model.spec_lifecycle import SERVICE_NAME_PATTERN
from node.model.spec_volumes import VOLUME_NAME
from node.pb import volumes_pb2, volumes_pb2_grpc
from node.store import Compare, Delete, Put, Store
from node.store.retry import compare_and_swap
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)


def volume_name(c: VolumeClaim) -> str:
    return f"{c.service}.{c.slot}.{c.name}"


def parse_name(name: str) -> tuple[str, int, str]:
    m = re.fullmatch(
        rf"(?P<svc>{SERVICE_NAME_PATTERN})\.(?P<slot>[1-9][0-9]{{0,5}})\.(?P<vol>{VOLUME_NAME})", name
    )
    if m is None:
        raise InvalidArgument(
            f"{name[:120]!r} is not a volume name: expected <service>.<slot>.<volume>, e.g. redis.1.data "
            "(`shoal volume ls` lists them)"
        )
    return m["svc"], int(m["slot"]), m["vol"]


def info(c: VolumeClaim, in_use: bool) -> volumes_pb2.VolumeInfo:
    return volumes_pb2.VolumeInfo(
        name=volume_name(c),
        service=c.service,
        slot=c.slot,
        volume=c.name,
        node=c.node,
        docker_name=c.docker_name,
        in_use=in_use,
        removing=c.removing,
        since=c.since,
    )


class VolumeClaims:
    def __init__(self, store: Store, keys: Keys) -> None:
        self.store, self.keys = store, keys

    async def user(self, c: VolumeClaim) -> Assignment | None:
        """The task holding the claim's slot, if any. One whose record cannot be read holds
        it all the same (a task key is there): named by its key, its node unknown."""
        kv = await self.store.get(self.keys.task(c.service, c.slot))
        if kv is None:
            return None
        try:
            return Assignment.from_json(kv.value)
        except (ValueError, KeyError, TypeError) as exc:  # one bad record fails no `volume ls`
            log.warning("%s cannot be read (%s); its slot counts as in use", kv.key, exc)
            return Assignment(f"{c.service}-{c.slot}", c.service, c.slot, "an unknown node", 0, 0)

    async def list(self, service: str = "") -> list[tuple[VolumeClaim, bool]]:
        """Every claim ("": the documented way to ask for all), or those of `service`, which
        must be a service name: one with '/' or '..' was a key prefix that listed a slot
        of another service, or nothing, answered as if it were that service's volumes."""
        if service and (len(service) > 63 or not re.fullmatch(SERVICE_NAME_PATTERN, service)):
            raise InvalidArgument(
                f"service: {service[:80]!r} is not a service name (lowercase letters, digits and '-', "
                "<stack>_<service> for a stack's); leave it out to list every volume"
            )
        prefix = self.keys.service_volumes(service) if service else self.keys.volumes
        kvs, _ = await self.store.range(prefix)
        readable = []
        for kv in kvs:
            try:
                readable.append(read_claim(kv.value))
            except UnreadableRecord as exc:  # the others are still listed
                log.warning("%s left out of the volume list: %s", kv.key, exc)
        claims = sorted(readable, key=lambda c: (c.service, c.slot, c.name))
        return [(c, await self.user(c) is not None) for c in claims]

    async def remove(self, name: str) -> tuple[VolumeClaim, str]:
        service, slot, volume = parse_name(name)
        key, task_key = self.keys.volume(service, slot, volume), self.keys.task(service, slot)

        async def attempt() -> tuple[VolumeClaim, str] | None:
            kv = await self.store.get(key)
            if kv is None:
                raise NotFound(f"volume {name} not found; `shoal volume ls` lists the volumes")
            try:
                c = read_claim(kv.value)
            except UnreadableRecord as exc:
                return await self._remove_unreadable(name, kv.mod_revision, str(exc))
            task = await self.user(c)
            if task is not None:
                raise FailedPrecondition(
                    f"volume {name} is in use by task {task.task_id} of {service} on {task.node}: "
                    f"scale {service} below {slot} replicas or remove the service first"
                )
            compares = [Compare(key, "mod", "==", kv.mod_revision), Compare(task_key, "version", "==", 0)]
            node_key, restarting = self.keys.node(c.node), self.keys.restarting(c.node)
            # gone: not registered, and not a daemon restarting (its lease lapsed, its mark
            # says it comes back). Compared in the transaction: a node that registers
            # meanwhile makes it decide again, and then it marks the claim for that node.
            # Asked of a claim already marked too: its node may have left since, and then
            # no agent ever deletes it (the slot, even of a namesake service, waits for good)
            gone = await self.store.get(node_key) is None and await self.store.get(restarting) is None
            if c.removing and not gone:
                return c, f"volume {name} is already being removed from node {c.node}"
            if gone:
                message = (
                    f"volume {name} removed; its node {c.node} is not in the cluster, so its data stays "
                    f"there (Docker volume {c.docker_name})"
                )
                compares += [Compare(node_key, "version", "==", 0), Compare(restarting, "version", "==", 0)]
                ops: list[Put | Delete] = [Delete(key)]
            else:
                message = f"volume {name} is being removed: node {c.node} deletes {c.docker_name}"
                c = replace(c, removing=True)
                ops = [Put(key, c.to_json())]
            return (c, message) if (await self.store.txn(compares, ops)).succeeded else None

        return await compare_and_swap(attempt, f"volume {name} is being changed concurrently; try again")

    async def _remove_unreadable(self, name: str, mod: int, why: str) -> tuple[VolumeClaim, str] | None:
        """Delete a claim that does not read by its key (service, slot and volume are its
        key's), unless a task holds the slot: its node is unknown, so no agent could be
        asked, and left there it held its slot back until etcd was edited by hand. None:
        the claim or the task key changed meanwhile (try again)."""
        service, slot, volume = parse_name(name)
        key, task_key = self.keys.volume(service, slot, volume), self.keys.task(service, slot)
        if await self.store.get(task_key) is not None:
            raise FailedPrecondition(
                f"volume {name}: its claim cannot be read ({why}) and a task of {service} holds slot "
                f"{slot}: scale {service} below {slot} replicas or remove the service first"
            )
        compares = [Compare(key, "mod", "==", mod), Compare(task_key, "version", "==", 0)]
        if not (await self.store.txn(compares, [Delete(key)])).succeeded:
            return None
        message = (
            f"volume {name} removed: its claim could not be read ({why}), so its node is unknown and "
            "its Docker volume, if any, stays there (`docker volume ls` on the nodes finds it)"
        )
        return VolumeClaim(service, slot, volume, node="", claim=""), message


class VolumesServicer(volumes_pb2_grpc.VolumesServicer):
    def __init__(self, store: Store, keys: Keys, events: EventLog | None = None) -> None:
        self.claims = VolumeClaims(store, keys)
        self.events = events

    @handle
    async def ListVolumes(
        self, request: volumes_pb2.ListVolumesRequest, context: grpc.aio.ServicerContext
    ) -> volumes_pb2.ListVolumesResponse:
        listed = await self.claims.list(request.service)
        return volumes_pb2.ListVolumesResponse(volumes=[info(c, used) for c, used in listed])

    @handle
    async def RemoveVolume(
        self, request: volumes_pb2.RemoveVolumeRequest, context: grpc.aio.ServicerContext
    ) -> volumes_pb2.RemoveVolumeResponse:
        claim, message = await self.claims.remove(request.name)
        log.info("%s (by %s)", message, _caller())
        if self.events is not None:
            self.events.emit("volume.removed", message, service=claim.service)
        return volumes_pb2.RemoveVolumeResponse(volume=info(claim, False), message=message)
