"""Container runtimes behind one small Protocol (`base.Runtime`): Docker for real
(`docker`, `docker_pull`), an in-memory fake for unit tests (`fake`), and a simulated
engine for `shoal dev --simulate` and benches (`sim`)."""

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
