"""From an assignment and its service spec to the container to run.

The agent needs the spec of the version a task was assigned with, which may be
older than the current one (while a rollout is under way): it is read from
`services/<name>` when the versions match, else from `history/<name>/<version>`,
and kept in memory (a version's spec never changes).
"""

from __future__ import annotations

from typing import Any

from node.domain import Assignment, ServiceRecord
from node.keys import Keys
from node.runtime.base import LABELS, ContainerSpec, PortBinding
from node.store import Store


class SpecNotFound(Exception):
    pass


class SpecSource:
    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys
        self._specs: dict[tuple[str, int], dict[str, Any]] = {}

    async def spec(self, service: str, version: int) -> dict[str, Any]:
        cached = self._specs.get((service, version))
        if cached is not None:
            return cached
        for key in (self.keys.history_version(service, version), self.keys.service(service)):
            kv = await self.store.get(key)
            if kv is None:
                continue
            record = ServiceRecord.from_json(kv.value)
            if record.version == version:
                self._specs[(service, version)] = record.spec
                return record.spec
        raise SpecNotFound(f"spec of {service} version {version} is not in etcd")

    def forget(self, service: str) -> None:
        for key in [k for k in self._specs if k[0] == service]:
            del self._specs[key]


def container_name(task: Assignment) -> str:
    return f"{task.service}.{task.slot}.{task.task_id}"


def container_spec(
    task: Assignment, spec: dict[str, Any], cluster: str, publish_address: str
) -> ContainerSpec:
    resources = spec.get("resources") or {}
    limits = resources.get("limits") or {}  # Docker enforces the limit, else the reservation
    command = spec.get("command")
    return ContainerSpec(
        name=container_name(task),
        image=spec["image"],
        labels={
            LABELS.CLUSTER: cluster,
            LABELS.NODE: task.node,
            LABELS.SERVICE: task.service,
            LABELS.SLOT: str(task.slot),
            LABELS.TASK: task.task_id,
            LABELS.EPOCH: str(task.epoch),
            LABELS.VERSION: str(task.version),
        },
        command=tuple(command) if command else None,
        env={**(spec.get("env") or {}), **(spec.get("secret_env") or {})},
        ports=tuple(PortBinding(int(p["container"])) for p in spec.get("ports") or []),
        publish_address=publish_address,
        cpu=limits.get("cpu") or resources.get("cpu"),
        memory=limits.get("memory") or resources.get("memory"),
        image_healthcheck=not spec.get("health"),  # the spec's own check replaces the image's
    )
