"""From an assignment and its service spec to the container to run.

The agent needs the spec of the version a task was assigned with, which may be
older than the current one (while a rollout is under way): it is read from
`services/<name>` when the versions match, else from `history/<name>/<version>`,
and kept in memory (a version's spec never changes).
"""

from __future__ import annotations

from node.domain import Assignment, ServiceRecord, UnreadableRecord
from node.keys import Keys
from node.runtime.base import LABELS, ContainerSpec, PortBinding
from node.spec import ServiceSpec
from node.store import Store


class SpecNotFound(Exception):
    pass


class SpecSource:
    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys
        self._specs: dict[tuple[str, int], ServiceSpec] = {}

    async def spec(self, service: str, version: int) -> ServiceSpec:
        cached = self._specs.get((service, version))
        if cached is not None:
            return cached
        for key in (self.keys.history_version(service, version), self.keys.service(service)):
            kv = await self.store.get(key)
            if kv is None:
                continue
            try:
                record = ServiceRecord.from_json(kv.value)
            except UnreadableRecord as exc:
                raise SpecNotFound(str(exc)) from None
            if record.version == version:
                self._specs[(service, version)] = record.spec
                return record.spec
        raise SpecNotFound(f"spec of {service} version {version} is not in etcd")

    def forget(self, service: str) -> None:
        for key in [k for k in self._specs if k[0] == service]:
            del self._specs[key]


def container_name(task: Assignment) -> str:
    return f"{task.service}.{task.slot}.{task.task_id}"


def container_spec(task: Assignment, spec: ServiceSpec, cluster: str, publish_address: str) -> ContainerSpec:
    resources = spec.resources
    limits = resources.limits if resources else None  # Docker enforces the limit, else the reservation
    return ContainerSpec(
        name=container_name(task),
        image=spec.image,
        labels={
            LABELS.CLUSTER: cluster,
            LABELS.NODE: task.node,
            LABELS.SERVICE: task.service,
            LABELS.SLOT: str(task.slot),
            LABELS.TASK: task.task_id,
            LABELS.EPOCH: str(task.epoch),
            LABELS.VERSION: str(task.version),
        },
        command=tuple(spec.command) if spec.command else None,
        env={**spec.env, **(spec.secret_env or {})},
        ports=tuple(PortBinding(p.container) for p in spec.ports),
        publish_address=publish_address,
        cpu=(limits and limits.cpu) or (resources and resources.cpu) or None,
        memory=(limits and limits.memory) or (resources and resources.memory) or None,
        image_healthcheck=spec.health is None,  # the spec's own check replaces the image's
    )
