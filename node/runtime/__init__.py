"""Container runtimes behind one small Protocol: Docker for real, a fake for unit tests."""

from node.runtime.base import (
    LABELS,
    Container,
    ContainerSpec,
    DockerHealth,
    EngineError,
    ExecResult,
    ImageError,
    PortBinding,
    Runtime,
    RuntimeUnavailable,
)

__all__ = [
    "LABELS",
    "Container",
    "ContainerSpec",
    "DockerHealth",
    "EngineError",
    "ExecResult",
    "ImageError",
    "PortBinding",
    "Runtime",
    "RuntimeUnavailable",
]
