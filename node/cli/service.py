"""`shoal service …`: apply, ls, inspect, ps, scale, rm."""

from __future__ import annotations

import sys

import click

from node.cli import Settings, pass_settings
from node.cli.output import (
    emit,
    emit_data,
    output_option,
    ports_text,
    service_detail,
    service_dict,
    task_dict,
)
from node.client import ShoalError
from node.pb import api_pb2


def read_spec(path: str) -> tuple[str, str]:
    """The text of a spec file and the name to report it by; `-` is standard input."""
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except OSError as err:
        raise ShoalError(f"cannot read spec file '{path}': {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ShoalError(f"cannot read spec file '{path}': not UTF-8 text") from None


@click.group()
def service() -> None:
    """Create, inspect, scale and remove services."""


@service.command("apply")
@click.option(
    "-f", "--file", "path", required=True, metavar="FILE", help="Spec file (YAML or JSON); - for stdin."
)
@pass_settings
def apply_cmd(settings: Settings, path: str) -> None:
    """Create a service or update it to a new spec version."""
    text, source = read_spec(path)
    result = settings.client().apply(text, source=source)
    if result.changed:
        click.echo(f"service {result.name}: version {result.version} applied")
    else:
        click.echo(f"service {result.name}: unchanged (version {result.version})")


SERVICE_COLUMNS = [
    ("NAME", lambda s: s.name),
    ("VERSION", lambda s: s.version),
    ("IMAGE", lambda s: s.image),
    ("REPLICAS", lambda s: f"{s.running}/{s.replicas}"),
    ("PORTS", lambda s: ports_text(s.ports)),
]


@service.command("ls")
@output_option()
@pass_settings
def ls_cmd(settings: Settings, fmt: str) -> None:
    """List services."""
    services = sorted(settings.client().list_services(), key=lambda s: s.name)
    emit(services, service_dict, SERVICE_COLUMNS, fmt)


@service.command("inspect")
@click.argument("name")
@output_option(default="yaml", formats=("yaml", "json"))
@pass_settings
def inspect_cmd(settings: Settings, name: str, fmt: str) -> None:
    """Show a service: version, replicas, its full spec and its tasks."""
    client = settings.client()
    svc = client.get_service(name)
    emit_data(service_detail(svc, client.list_tasks(name)), fmt)


def _short(container_id: str) -> str:
    return container_id[:12]


TASK_COLUMNS = [
    ("SLOT", lambda t: t.slot),
    ("TASK", lambda t: t.task_id),
    ("NODE", lambda t: t.node),
    ("DESIRED", lambda t: t.desired),
    ("STATE", lambda t: t.state),
    ("CONTAINER", lambda t: _short(t.container_id)),
    ("ENDPOINT", lambda t: t.endpoint),
    ("RESTARTS", lambda t: t.restarts),
    ("MESSAGE", lambda t: " ".join(t.message.split())),
]


@service.command("ps")
@click.argument("name")
@output_option()
@pass_settings
def ps_cmd(settings: Settings, name: str, fmt: str) -> None:
    """List the tasks of a service: where each slot runs and in what state."""
    tasks: list[api_pb2.Task] = sorted(settings.client().list_tasks(name), key=lambda t: t.slot)
    emit(tasks, task_dict, TASK_COLUMNS, fmt)


@service.command("scale")
@click.argument("name")
@click.argument("replicas", type=click.IntRange(min=0))
@pass_settings
def scale_cmd(settings: Settings, name: str, replicas: int) -> None:
    """Set the number of replicas of a service."""
    result = settings.client().scale(name, replicas)
    click.echo(f"service {result.name or name} scaled to {replicas} (version {result.version})")


@service.command("rm")
@click.argument("name")
@pass_settings
def rm_cmd(settings: Settings, name: str) -> None:
    """Remove a service and stop its tasks."""
    settings.client().delete_service(name)
    click.echo(f"service {name} removed")
