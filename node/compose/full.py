"""The Compose keys of decision 70 that `node.compose.translate` hands over: top-level and
per-service `secrets:` / `configs:` (`node.compose.objects`), and entrypoint, user,
working_dir, read_only and logging (`node.compose.process`).

`extra_keys` runs inside `translate`, before shoal's spec check, so an error here is
reported with the others at its line:col, and the secrets and configs to write come back
only in a translation without any error: a bad file anywhere writes nothing.

Pure: no grpc, docker or etcd; files are read through the translator's `read` callable,
whose text is taken back to bytes with surrogateescape (the CLI reads files that way, so a
binary secret keeps its bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.compose import objects, process

_Where = tuple[int | None, int | None]


def extra_keys(
    run: Any,
    data: Any,
    stack: str,
    services: dict[str, dict[str, Any]],
    lines: dict[str, dict[str, _Where]],
    _at: Callable[[Any, Any], _Where],
) -> list[objects.ObjectWrite]:
    """Fills the translated `services` (and `lines`, where each field came from); returns
    the secrets and configs to create or update before the stack is deployed. `run` is the
    translator's `translate._Run` (error, warn, env, read); `_at(node, key)` a key's line:col."""

    def report(node: Any, key: Any, path: str, message: str) -> None:
        run.error(_at(node, key), path, message)

    def read_bytes(path: str) -> bytes:
        return run.read(path).encode("utf-8", "surrogateescape")

    tops = {t: objects.declared(data, t, stack, run.env, read_bytes, report) for t in objects.KINDS}
    for short, spec in services.items():
        body = data["services"][short]
        path = f"services.{short}"

        def error(node: Any, key: Any, sub: str, message: str, path: str = path) -> None:
            run.error(_at(node, key), f"{path}.{sub}", message)

        def warn(node: Any, key: Any, sub: str, message: str, path: str = path) -> None:
            run.warn(_at(node, key), f"{path}.{sub}", message)

        for top, declared in tops.items():
            if body.get(top) is not None:
                spec[top] = objects.service_refs(body, top, declared.names, error)
        process.service_keys(body, spec, error, warn)
        for name, key in process.COMPOSE_KEY.items():
            if name in spec and key in body:
                lines[short].setdefault(name, _at(body, key))
    return [w for d in tops.values() for w in d.writes]
