"""`shoal service …`: apply, ls, inspect, ps, scale, rm, rollback, history."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from node.cli import Settings, pass_settings
from node.cli.autoscale import autoscale_cmd, autoscale_dict, scaled_to_zero
from node.cli.files import MAX_SPEC, read_text
from node.cli.output import (
    emit,
    emit_data,
    emit_table,
    iso,
    output_option,
    ports_text,
    service_detail,
    service_dict,
    task_dict,
    version_dict,
)
from node.cli.rollout import follow
from node.cli.taskio import service_logs
from node.cli.usage import ps_columns, usage_by_task, usage_dict
from node.pb import api_pb2


def read_spec(path: str) -> tuple[str, str]:
    """The text of a spec file and the name to report it by; `-` is standard input."""
    return read_text(path, MAX_SPEC, "spec file"), "<stdin>" if path == "-" else path


@click.group()
def service() -> None:
    """Create, inspect, scale and remove services."""


service.add_command(service_logs)
service.add_command(autoscale_cmd)  # issue 15


def _follow_options(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--detach", "-d", is_flag=True, help="Return at once; do not follow the rollout.")(f)
    return click.option(
        "--wait",
        type=click.FloatRange(min=1),
        default=600,
        show_default=True,
        metavar="SECONDS",
        help="Follow the rollout at most this long.",
    )(f)


@service.command("apply")
@click.option(
    "-f", "--file", "path", required=True, metavar="FILE", help="Spec file (YAML or JSON); - for stdin."
)
@_follow_options
@pass_settings
def apply_cmd(settings: Settings, path: str, detach: bool, wait: float) -> None:
    """Create a service or update it to a new spec version.

    Then follow the rollout until the new version runs everywhere (exit 0), or it fails,
    pauses or is rolled back (exit 1); --detach returns at once.
    """
    text, source = read_spec(path)
    client = settings.client()
    result = client.apply(text, source=source)
    if result.changed:
        click.echo(f"service {result.name}: version {result.version} applied{_cause(result.cause)}")
    else:
        click.echo(f"service {result.name}: unchanged (version {result.version})")
    if result.changed and not detach:
        sys.exit(follow(client, result.name, result.version, wait))


def _cause(cause: str) -> str:
    """` (cause ID)`: what `shoal events --cause ID` shows (issue 14); nothing from an older node."""
    return f" (cause {cause})" if cause else ""


@service.command("rollback")
@click.argument("name")
@_follow_options
@pass_settings
def rollback_cmd(settings: Settings, name: str, detach: bool, wait: float) -> None:
    """Go back to the version before the current one, rolled out like an update."""
    client = settings.client()
    result = client.rollback(name)
    click.echo(f"service {result.name}: version {result.version} applied (a rollback){_cause(result.cause)}")
    if not detach:
        sys.exit(follow(client, result.name, result.version, wait))


HISTORY_COLUMNS = [
    ("VERSION", lambda v: f"{v.version}{' *' if v.current else ''}"),
    ("IMAGE", lambda v: v.image),
    ("WHEN", lambda v: iso(v.updated_at)),
    ("BY", lambda v: v.updated_by),
    ("ROLLS BACK", lambda v: v.rollback_of or ""),
    ("OUTCOME", lambda v: v.outcome or "-"),
]


@service.command("history")
@click.argument("name")
@output_option()
@pass_settings
def history_cmd(settings: Settings, name: str, fmt: str) -> None:
    """Every version of a service: when, by whom, how its rollout ended (* current)."""
    versions = list(settings.client().history(name).versions)
    emit(versions, version_dict, HISTORY_COLUMNS, fmt)


SERVICE_COLUMNS = [
    ("NAME", lambda s: s.name),
    ("VERSION", lambda s: s.version),
    ("IMAGE", lambda s: s.image),
    ("REPLICAS", lambda s: f"{s.running}/{s.replicas}" + (f" ({s.pending} pending)" if s.pending else "")),
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
    detail = service_detail(svc, client.list_tasks(name))
    if (autoscale := autoscale_dict(svc)) is not None:  # issue 15: shown before the spec
        spec, tasks = detail.pop("spec"), detail.pop("tasks")
        detail |= {"autoscale": autoscale, "spec": spec, "tasks": tasks}
    emit_data(detail, fmt)


def _short(container_id: str) -> str:
    return container_id[:12]


TASK_COLUMNS = [
    ("SLOT", lambda t: t.slot),
    ("TASK", lambda t: t.task_id),
    ("NODE", lambda t: t.node),
    ("DESIRED", lambda t: t.desired),
    ("STATE", lambda t: t.state),
    ("HEALTH", lambda t: _health(t)),
    ("CONTAINER", lambda t: _short(t.container_id)),
    ("ENDPOINT", lambda t: t.endpoint),
    ("RESTARTS", lambda t: t.restarts),
    ("EXIT", lambda t: t.exit_code if t.restarts or t.state in ("exited", "failed") else ""),
    ("MESSAGE", lambda t: _task_message(t)),
]


def _health(t: api_pb2.Task) -> str:
    """ "-" without a check; "unhealthy (4 failed)"; "healthy"; "starting"."""
    if not t.health:
        return "-"
    if t.health_failures and t.health != "healthy":
        return f"{t.health} ({t.health_failures} failed)"
    return t.health


def _task_message(t: api_pb2.Task) -> str:
    """The task's message, else the last check's result while the check does not pass."""
    text = t.message or (t.health_message if t.health in ("starting", "unhealthy") else "")
    return " ".join(text.split())


@service.command("ps")
@click.argument("name")
@click.option(
    "-a", "--all", "all_", is_flag=True, help="Also the replaced tasks whose exited containers are kept."
)
@output_option()
@pass_settings
def ps_cmd(settings: Settings, name: str, all_: bool, fmt: str) -> None:
    """List the tasks of a service: where each slot runs and in what state.

    A slot the scheduler found no node for shows as pending, with the reason (e.g.
    "0/3 nodes available: 3 lack memory (need 2.0 GiB, most free 1.5 GiB)").
    With --all, each slot's earlier tasks follow it (DESIRED shutdown, newest first):
    the exited containers their nodes keep (`task_history_limit`), which
    `shoal task logs ID` reads.
    """
    answer = settings.client().tasks(name, all=all_)
    tasks = sorted(
        [*answer.tasks, *pending_rows(name, answer)],
        key=lambda t: (t.slot, t.desired == "shutdown", -t.updated_at if t.desired == "shutdown" else 0),
    )
    by_task, notices = usage_by_task(settings, name)  # issue 14: usage columns
    if fmt == "table":
        emit_table(tasks, [*TASK_COLUMNS[:-1], *ps_columns(by_task), TASK_COLUMNS[-1]])
        for notice in notices:
            click.echo(f"note: {notice}")
    else:
        rows = []
        for t in tasks:
            row = task_dict(t)
            found = by_task.get(t.task_id)
            row["usage"] = usage_dict(found) if found is not None else None
            rows.append(row)
        emit_data(rows, fmt)
    if answer.silent_nodes:
        click.echo(
            f"note: node(s) {', '.join(answer.silent_nodes)} did not answer: their kept tasks are not listed",
            err=fmt != "table",
        )
    waiting = len(answer.pending_slots) + len(answer.pending_nodes)
    if fmt == "table" and waiting:
        click.echo(f"\n{waiting} replica(s) pending: {answer.pending_reason}")
    if fmt == "table" and not tasks and (zero := scaled_to_zero(settings.client().get_service(name))):
        click.echo(zero)  # issue 15


def pending_rows(service: str, answer: api_pb2.ListTasksResponse) -> list[api_pb2.Task]:
    """A row for each pending slot that has no task yet (a slot whose task waits to move
    keeps its row: that task still runs)."""
    have = {t.slot for t in answer.tasks}
    reason = f"no node: {answer.pending_reason}"
    return [
        api_pb2.Task(service=service, slot=slot, desired="running", state="pending", message=reason)
        for slot in answer.pending_slots
        if slot not in have
    ]


@service.command("scale")
@click.argument("name")
@click.argument("replicas", type=click.IntRange(min=0))
@pass_settings
def scale_cmd(settings: Settings, name: str, replicas: int) -> None:
    """Set the number of replicas of a service."""
    result = settings.client().scale(name, replicas)
    click.echo(
        f"service {result.name or name} scaled to {replicas} (version {result.version}){_cause(result.cause)}"
    )


@service.command("rm")
@click.argument("name")
@pass_settings
def rm_cmd(settings: Settings, name: str) -> None:
    """Remove a service and stop its tasks."""
    settings.client().delete_service(name)
    click.echo(f"service {name} removed")
