"""`shoal stack deploy | ls | ps | rm`: several services deployed together (docs/stacks.md).

`deploy -f FILE [NAME]` sends shoal's own stack file as it is (the server checks it and
reports line:col); `deploy -c compose.yaml NAME` translates a Compose file here, where
its env_file and `.env` are (`node.compose.translate`): warnings go to stderr, refusals
end the command before anything is sent. The file's own secrets and configs go with the
stack, written in its transaction (decision 72).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from node.cli import Settings, pass_settings
from node.cli.files import MAX_SPEC, read_limited, read_text
from node.cli.output import emit, ports_text
from node.cli.service import read_spec
from node.pb import api_pb2
from node.security.objects import MAX_BYTES
from node.wire.client import ShoalError


@click.group()
def stack() -> None:
    """Deploy, list, inspect and remove stacks of services."""


def _dotenv(directory: Path) -> dict[str, str]:
    path = directory / ".env"
    out: dict[str, str] = {}
    if path.is_file():
        for line in read_text(path, MAX_SPEC, "environment file").splitlines():
            key, eq, value = line.strip().removeprefix("export ").partition("=")
            if eq and key and not key.startswith("#"):
                out[key.strip()] = value.strip().strip("'\"")
    return out


def compose_document(path: str, name: str) -> tuple[str, str, str, list[Any]]:
    """A Compose file -> (stack name, stack document as JSON, source, the secrets and
    configs its `file:` / `environment:` sources make, decision 70); warnings on stderr."""
    from node.compose.translate import ComposeError, translate

    text, source = read_spec(path)
    base = Path(path).resolve().parent if path != "-" else Path.cwd()

    def read(rel: str) -> str:  # surrogateescape: a secret's bytes come back whole (node.compose.full)
        return read_limited(base / rel, MAX_BYTES).decode("utf-8", "surrogateescape")  # OSError: said where

    try:
        result = translate(text, source, name, {**_dotenv(base), **os.environ}, read)
    except ComposeError as exc:
        raise ShoalError(f"{source} cannot be deployed:\n{exc}") from None
    for w in result.warnings:
        click.echo(f"warning: {w.render(source)}", err=True)
    return result.name, json.dumps(result.document), f"{source} (translated from Compose)", result.objects


def deploy_compose(
    settings: Settings, name: str, text: str, source: str, writes: list[Any]
) -> api_pb2.DeployStackResponse:
    """The stack and its own secrets and configs in one transaction (decision 72). A node of
    an older shoal answers UNIMPLEMENTED: then the objects are written first, as before."""
    client = settings.client()
    if not writes:
        return client.deploy_stack(name, text, source)
    try:
        return client.deploy_stack(name, text, source, [(w.kind, w.name, w.value) for w in writes])
    except ShoalError as exc:
        if getattr(exc.code, "name", "") != "UNIMPLEMENTED":
            raise
    click.echo(
        f"warning: {client.addr} runs an older shoal: the secrets and configs are written before the "
        "stack, not in its transaction (a stack it refuses leaves them written)",
        err=True,
    )
    write_objects(settings, writes)
    return client.deploy_stack(name, text, source)


def write_objects(settings: Settings, writes: list[Any]) -> None:
    """Create or update each secret and config of the stack (`shoal secret create`'s API:
    sealed at rest), for a node without DeployStackWithObjects; a changed value rolls the
    services that use it. Values never printed."""
    if not writes:
        return
    client = settings.client()
    have = {k: {o.name for o in client.list_objects(k)} for k in {w.kind for w in writes}}
    for w in writes:
        answer = client.put_object(w.kind, w.name, w.value, w.name in have[w.kind])
        verb = "unchanged" if not answer.changed else "updated" if w.name in have[w.kind] else "created"
        click.echo(f"{w.kind} {w.name}: {verb} ({answer.info.size} bytes, revision {answer.info.revision})")


@stack.command("deploy")
@click.option("-f", "--file", "path", metavar="FILE", help="shoal stack file (a `services:` map of specs).")
@click.option("-c", "--compose-file", "compose", metavar="FILE", help="Compose file (compose.yaml).")
@click.argument("name", required=False, default="")
@pass_settings
def deploy_cmd(settings: Settings, path: str | None, compose: str | None, name: str) -> None:
    """Create or update every service of a stack in one step; services the file no longer
    has are removed. Services are named <stack>_<service>."""
    if bool(path) == bool(compose):
        raise click.UsageError("give exactly one of -f FILE (shoal stack file) or -c FILE (Compose file)")
    if compose:
        name, text, source, writes = compose_document(compose, name)
        result = deploy_compose(settings, name, text, source, writes)
    else:
        text, source = read_spec(path or "-")
        result = settings.client().deploy_stack(name, text, source)
    for o in result.objects:
        click.echo(_object_line(o))
    for c in result.changes:
        version = f" (version {c.version})" if c.version else ""
        click.echo(f"service {c.service}: {c.action}{version}")
    click.echo(f"stack {result.name}: deployed" + (f" (cause {result.cause})" if result.cause else ""))


def _object_line(o: api_pb2.StackObjectChange) -> str:
    if o.action in ("removed", "kept"):
        why = " (the stack's own)" if o.action == "removed" else " (a service outside the stack uses it)"
        return f"{o.kind} {o.name}: {o.action}{why}"
    return f"{o.kind} {o.name}: {o.action} ({o.size} bytes, revision {o.revision})"


@stack.command("ls")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table")
@pass_settings
def ls_cmd(settings: Settings, fmt: str) -> None:
    """List the stacks: their services and replicas."""
    stacks = settings.client().list_stacks()
    columns = [
        ("NAME", lambda s: s.name),
        ("SERVICES", lambda s: len(s.services)),
        ("REPLICAS", lambda s: f"{sum(x.running for x in s.services)}/{sum(x.replicas for x in s.services)}"),
    ]
    emit(stacks, lambda s: {"name": s.name, "services": [x.name for x in s.services]}, columns, fmt)


def _dep_states(services: list[api_pb2.Service], tasks: dict[str, list[api_pb2.Task]]) -> dict[str, object]:
    from node.compose.depends import DepState

    out: dict[str, object] = {}
    for s in services:
        run = [t for t in tasks.get(s.name, []) if t.state == "running"]
        healthy = [t for t in run if t.health in ("", "healthy")]
        ended = tasks.get(s.name, [])
        done = bool(ended) and all(t.state == "exited" and t.exit_code == 0 for t in ended)  # a job's
        out[s.name] = DepState(True, len(run), len(healthy), done)
    return out


@stack.command("ps")
@click.argument("name")
@pass_settings
def ps_cmd(settings: Settings, name: str) -> None:
    """The stack's services and tasks, what each service waits for (depends_on), and any
    dependency that no longer meets its condition (shown only: nothing is stopped for it)."""
    from node.compose.depends import unmet

    client = settings.client()
    found = client.list_stacks(name)
    services = list(found[0].services) if found else []
    tasks = {s.name: list(client.tasks(s.name).tasks) for s in services}
    states = _dep_states(services, tasks)
    rows = []
    for s in services:
        spec = json.loads(s.spec_json or "{}")
        deps = spec.get("depends_on") or {}
        if s.pending_reason:
            note = s.pending_reason
        elif deps and (missing := unmet(deps, states, name)):  # type: ignore[arg-type]
            note = "dependency not met now: " + ", ".join(missing) + " (running on)"
        else:
            note = ""
        rows.append((s.name, "", "", f"{s.running}/{s.replicas}", ports_text(s.ports), note))
        for t in tasks[s.name]:
            state = t.state + (f" ({t.health})" if t.health else "")
            rows.append((f"  {s.name}.{t.slot}", t.node, state, "", "", t.message))
    widths = [
        max(len(str(r[i])) for r in [("NAME", "NODE", "STATE", "REPLICAS", "PORTS", "NOTE"), *rows])
        for i in range(6)
    ]
    for r in [("NAME", "NODE", "STATE", "REPLICAS", "PORTS", "NOTE"), *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    sys.stdout.flush()


@stack.command("rm")
@click.argument("name")
@pass_settings
def rm_cmd(settings: Settings, name: str) -> None:
    """Remove every service of the stack, and the secrets and configs it created, in one
    step (not `external:` ones, not `shoal secret create`d ones)."""
    result = settings.client().remove_stack(name)
    for service in result.services:
        click.echo(f"service {service}: removed")
    for o in result.objects:
        click.echo(_object_line(o))
    click.echo(f"stack {result.name}: removed")
