"""Named local volumes in a service spec (issue 13, item 5).

    volumes:
      - {name: data, target: /var/lib/redis}          # read_only: false by default
    reschedule: false                                  # default: the slot waits for its node

Each slot of the service gets its own Docker volume per entry, on the node where the
slot was first placed; the slot then stays on that node (the leader's scheduler pins it,
`leader.placement.volumes`). Volumes are for replicated services: a global service has
one task per node already and its slot numbers are not stable across nodes, so it is
refused here.

Checks (each error names the field and what to do): a volume name is a DNS label (it
becomes part of the Docker volume's name), a target is an absolute directory path, not
`/`, not under `/run/secrets` (where secrets are mounted), names and targets are
distinct, no target is also a config's target, and a service with volumes does not ask
for `update.order: start-first` (the new container may only start on the volume once the
old one has stopped).

Pure: imports no grpc, docker or etcd.
"""

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
VOLUME_NAME = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"
SECRETS_DIR = "/run/secrets"


def _fail(message: str, at: tuple[Any, ...] = ()) -> PydanticCustomError:
    return PydanticCustomError("spec", "{msg}", {"msg": message, "at": at})


def _name(v: str) -> str:
    if not re.fullmatch(VOLUME_NAME, v) or len(v) > 63:
        raise _fail(
            "must be a volume name: 1 to 63 lowercase letters, digits and '-', not at either end; "
            f"got {v!r:.80}"
        )
    return v


def _target(v: str) -> str:
    parts = v.split("/")
    # "." and ".." both: /etc/./x is /etc/x, so two mounts (or the secrets rule) compared apart
    if not v.startswith("/") or v == "/" or {".", ".."} & set(parts) or "" in parts[1:] or len(v) > 1024:
        raise _fail(
            "must be an absolute directory path such as /var/lib/redis (not /, no '.' or '..' "
            f"segment, no '//'), got {v!r:.80}"
        )
    if v == SECRETS_DIR or v.startswith(SECRETS_DIR + "/"):
        raise _fail(f"{SECRETS_DIR} is where secrets are mounted: choose another path for a volume")
    return v


class VolumeMount(BaseModel):
    """One named volume of every slot, mounted at `target`."""

    model_config = _STRICT
    name: Annotated[str, AfterValidator(_name)]
    target: Annotated[str, AfterValidator(_target)]
    read_only: bool = False


def distinct_volumes(mounts: list[VolumeMount]) -> list[VolumeMount]:
    names: dict[str, int] = {}
    targets: dict[str, int] = {}
    for i, m in enumerate(mounts):
        if m.name in names:
            raise _fail(f"volume name {m.name!r} is already used by volumes[{names[m.name]}]", (i, "name"))
        if m.target in targets:
            raise _fail(f"target {m.target!r} is already used by volumes[{targets[m.target]}]", (i, "target"))
        names[m.name], targets[m.target] = i, i
    return mounts


def volumes_fit(spec: Any) -> Any:
    """The checks across fields of a `ServiceSpec` with volumes (raised as spec errors); the
    spec itself when they pass (it is the model's "after" validator)."""
    if not spec.volumes:
        if spec.reschedule is not None:
            raise _fail(
                "reschedule is only for a service with volumes: remove it or add volumes", ("reschedule",)
            )
        return spec
    if spec.mode == "global":
        raise _fail(
            "volumes are for replicated services (a global service's slots are not tied to nodes): "
            "remove mode: global or the volumes",
            ("volumes",),
        )
    update = spec.update
    if update is not None and "order" in update.model_fields_set and update.order == "start-first":
        raise _fail(
            "a service with volumes updates stop-first (the new container starts on the volume only "
            "once the old one has stopped): set order: stop-first or leave it out",
            ("update", "order"),
        )
    configs = {c.target: i for i, c in enumerate(spec.configs or [])}
    for i, m in enumerate(spec.volumes):
        if m.target in configs:
            raise _fail(
                f"target {m.target!r} is also configs[{configs[m.target]}]'s target", ("volumes", i, "target")
            )
    return spec


Volumes = Annotated[list[VolumeMount], Field(max_length=32), AfterValidator(distinct_volumes)]


def docker_volume_name(service: str, slot: int, name: str, claim: str) -> str:
    """The Docker volume of one slot's volume: `<service>.<slot>.<name>.<claim>`, where `claim`
    is the id of the claim (the task id that first took it). A service removed and created
    again, or a slot rescheduled elsewhere, gets a new claim and so a new, empty volume."""
    return f"{service}.{slot}.{name}.{claim}"
