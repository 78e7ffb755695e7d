"""From an assignment and its service spec to the container to run.

The agent needs the spec of the version a task was assigned with, which may be
older than the current one (while a rollout is under way): it is read from
`services/<name>` when the versions match, else from `history/<name>/<version>`,
and kept in memory (a version's spec never changes), by the service's incarnation
uid too (a service removed and created again restarts at version 1) and bounded
(`SPEC_CACHE`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

from node.model.domain import Assignment, ServiceRecord, UnreadableRecord
from node.model.images import parse_image
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.runtime.base import LABELS, ContainerSpec, PortBinding
from node.store import Store


class SpecNotFound(Exception):
    pass


SPEC_CACHE = 256
"""Specs an agent keeps at most (a version's spec never changes, so a hit saves a read);
beyond that the least recently used goes, and `retain` drops those of services no
longer assigned here at every pass."""


class SpecSource:
    """Specs by (service, uid, version): the uid (`ServiceRecord.uid`) tells a service
    from a namesake created after it was removed, whose versions start at 1 again; a
    task's spec is only ever the one of its own incarnation. A task without a uid was
    assigned by a leader older than uids (during an upgrade): it takes the version of
    whatever incarnation etcd holds, as before, and that spec is not cached; an upgraded
    leader replaces such a task when its service has a uid."""

    def __init__(self, store: Store, keys: Keys, size: int = SPEC_CACHE) -> None:
        self.store = store
        self.keys = keys
        self.size = size
        self._specs: OrderedDict[tuple[str, str, int], ServiceSpec] = OrderedDict()

    async def spec(self, service: str, version: int, uid: str = "") -> ServiceSpec:
        key = (service, uid, version)
        cached = self._specs.get(key)
        if cached is not None:
            self._specs.move_to_end(key)
            return cached
        other = False
        for k in (self.keys.history_version(service, version), self.keys.service(service)):
            kv = await self.store.get(k)
            if kv is None:
                continue
            try:
                record = ServiceRecord.from_json(kv.value)
            except UnreadableRecord as exc:
                raise SpecNotFound(str(exc)) from None
            if record.version != version:
                continue
            if uid and record.uid != uid:
                other = True  # the same name and version, of another incarnation
                continue
            if record.uid != uid:  # a task without uid (its leader predates them): not cached
                return record.spec
            self._specs[key] = record.spec
            while len(self._specs) > self.size:
                self._specs.popitem(last=False)
            return record.spec
        if other:
            raise SpecNotFound(
                f"spec of {service} version {version} is not in etcd: {service} was removed and "
                "created again; this task belongs to the removed one and is replaced"
            )
        raise SpecNotFound(f"spec of {service} version {version} is not in etcd")

    def retain(self, incarnations: Collection[tuple[str, str]]) -> None:
        """Keep only the specs of these (service, uid) pairs."""
        for key in [k for k in self._specs if (k[0], k[1]) not in incarnations]:
            del self._specs[key]

    def forget(self, service: str) -> None:
        for key in [k for k in self._specs if k[0] == service]:
            del self._specs[key]

    def __len__(self) -> int:
        return len(self._specs)


def run_image(spec: ServiceSpec) -> str:
    """What a node runs: `<registry>/<repository>@<digest>` when the spec was pinned at
    deploy (`image_digest`), else the image as written."""
    if not spec.image_digest:
        return spec.image
    return parse_image(spec.image).pinned(spec.image_digest)


def container_name(task: Assignment) -> str:
    return f"{task.service}.{task.slot}.{task.task_id}"


def container_spec(
    task: Assignment, spec: ServiceSpec, cluster: str, publish_address: str, dns: tuple[str, ...] = ()
) -> ContainerSpec:
    """`dns`: the node's name server (issue 13); a stack's containers then search `<stack>.shoal`."""
    resources = spec.resources
    limits = resources.limits if resources else None  # Docker enforces the limit, else the reservation
    return ContainerSpec(
        name=container_name(task),
        image=run_image(spec),  # the digest resolved at deploy, when there is one (issue 13)
        labels={
            **(spec.labels or {}),  # the user's (decision 73): never under io.shoal., so never one of ours
            LABELS.CLUSTER: cluster,
            LABELS.NODE: task.node,
            LABELS.SERVICE: task.service,
            LABELS.SLOT: str(task.slot),
            LABELS.TASK: task.task_id,
            LABELS.EPOCH: str(task.epoch),
            LABELS.VERSION: str(task.version),
            **({LABELS.UID: task.uid} if task.uid else {}),  # none on tasks made before uids
        },
        command=tuple(spec.command) if spec.command else None,
        env={**spec.env, **(spec.secret_env or {})},
        ports=tuple(PortBinding(p.container) for p in spec.ports),
        publish_address=publish_address,
        cpu=(limits and limits.cpu) or (resources and resources.cpu) or None,
        memory=(limits and limits.memory) or (resources and resources.memory) or None,
        image_healthcheck=spec.health is None,  # the spec's own check replaces the image's
        log_driver=spec.logging.driver if spec.logging else "",
        log_options=dict(spec.logging.options) if spec.logging else {},
        dns=dns,
        dns_search=(f"{spec.stack}.shoal",) if dns and spec.stack else (),
        entrypoint=tuple(spec.entrypoint) if spec.entrypoint else None,  # decision 70
        user=spec.user,
        working_dir=spec.working_dir,
        read_only=bool(spec.read_only),
    )
