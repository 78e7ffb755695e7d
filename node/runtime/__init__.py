"""Container runtimes behind one small Protocol: Docker for real, a fake for unit tests."""

from node.runtime.base import (
    LABELS,
    Container,
    ContainerSpec,
    DockerHealth,
    ExecResult,
    ImageError,
    PortBinding,
    Runtime,
    RuntimeError_,
    RuntimeUnavailable,
)

__all__ = [
    "LABELS",
    "Container",
    "ContainerSpec",
    "DockerHealth",
    "ExecResult",
    "ImageError",
    "PortBinding",
    "Runtime",
    "RuntimeError_",
    "RuntimeUnavailable",
]
