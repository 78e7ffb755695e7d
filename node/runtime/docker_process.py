"""Options of Docker's container create beyond `node.runtime.docker`'s own: the image's
HEALTHCHECK turned off, and the process of decision 70 (entrypoint, user, working_dir,
read-only root filesystem)."""

from __future__ import annotations

from typing import Any

from node.runtime.base import ContainerSpec


def create_options(spec: ContainerSpec, host_config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of `create_container`; `host_config` gains ReadonlyRootfs."""
    extra: dict[str, Any] = {} if spec.image_healthcheck else {"healthcheck": {"test": ["NONE"]}}
    if spec.entrypoint is not None:
        extra["entrypoint"] = list(spec.entrypoint)
    if spec.user is not None:
        extra["user"] = spec.user
    if spec.working_dir is not None:
        extra["working_dir"] = spec.working_dir
    if spec.read_only:
        host_config["ReadonlyRootfs"] = True
    return extra
