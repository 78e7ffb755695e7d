"""`shoal run`, `shoal job ls|status` and `shoal task ls|rm` (issue 18).

`shoal run IMAGE [-- CMD...]` stores a one-off job (`kind: job`, one completion, no
retry) named `run-<8 hex>` (or `--name`, a name no service has yet), waits for its
task, prints the container's output as it comes (stdout to stdout, stderr to stderr,
through the logs relay of any node: `node.api.taskio`) and exits with the container's
exit code; 125 when the task cannot start (the image cannot be pulled, the command does
not exist), as `docker run`.
With `-d` it prints the task id and returns at once. `--from SERVICE` starts from that
service's image, command, env, secrets, configs, resources and placement.

The run stays (`shoal task ls` lists it, `shoal task logs ID` prints its output again)
until `shoal task rm` removes it, or `--rm` removes it once it ended.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from typing import Any

import click

from node.cli import Settings, pass_settings
from node.cli.output import Column, emit, emit_data, iso, output_option
from node.cli.taskio import task
from node.pb import api_pb2, jobs_pb2
from node.wire.client import NotFound, ShoalClient, ShoalError

PLACE_DEADLINE = 60.0  # s for the run's task to be placed and started
POLL = 0.25  # s between looks at the task's state
DRAIN = 5.0  # s for the last lines once the container ended
CANNOT_START = 125  # `docker run`'s status when the container cannot be started
_FROM_FIELDS = ("image", "command", "env", "secrets", "configs", "resources", "placement", "stop_grace")


@click.group("job")
def job() -> None:
    """Batch jobs (`kind: job` services): list them and show their progress per index."""


def _job_dict(j: jobs_pb2.JobInfo) -> dict[str, Any]:
    return {
        "name": j.name,
        "state": j.state,
        "succeeded": j.succeeded,
        "completions": j.completions,
        "running": j.running,
        "parallelism": j.parallelism,
        "failures": j.failures,
        "retries": j.retries,
        "started": iso(j.started_at) if j.started_at else "",
        "finished": iso(j.finished_at) if j.finished_at else "",
        "message": j.message,
        "schedule": j.schedule,
        "next_tick": iso(j.next_tick) if j.next_tick else "",
        "indexes": [
            {
                "index": i.index,
                "state": i.state,
                "attempts": i.attempts,
                "task": i.task_id,
                "node": i.node,
                "exit_code": i.exit_code,
                "message": i.message,
            }
            for i in j.indexes
        ],
    }


JOB_COLUMNS: list[Column] = [
    ("NAME", lambda j: j.name),
    ("STATE", lambda j: j.state),
    ("COMPLETIONS", lambda j: f"{j.succeeded}/{j.completions}"),
    ("RUNNING", lambda j: j.running),
    ("FAILURES", lambda j: f"{j.failures}/{j.retries}"),
    ("STARTED", lambda j: iso(j.started_at) if j.started_at else ""),
    ("MESSAGE", lambda j: j.message),
]
INDEX_COLUMNS: list[Column] = [
    ("INDEX", lambda i: i.index),
    ("STATE", lambda i: i.state),
    ("ATTEMPTS", lambda i: i.attempts),
    ("TASK", lambda i: i.task_id),
    ("NODE", lambda i: i.node),
    ("EXIT", lambda i: i.exit_code if i.attempts else ""),
    ("MESSAGE", lambda i: i.message),
]


@job.command("ls")
@output_option()
@pass_settings
def job_ls(settings: Settings, fmt: str) -> None:
    """List the jobs with their state and completions."""
    emit(settings.client().list_jobs(), _job_dict, JOB_COLUMNS, fmt)


@job.command("status")
@click.argument("name")
@output_option()
@pass_settings
def job_status(settings: Settings, name: str, fmt: str) -> None:
    """A job's state, and each index's: succeeded, failed, running, pending, backoff."""
    j = settings.client().get_job(name)
    if fmt != "table":
        emit_data(_job_dict(j), fmt)
        return
    click.echo(f"{j.name}: {j.state}, {j.succeeded}/{j.completions} succeeded, {j.running} running")
    click.echo(f"failures {j.failures} (retries {j.retries}){': ' + j.message if j.message else ''}")
    if j.schedule:
        click.echo(
            f"schedule {j.schedule}, next tick {iso(j.next_tick)}; `shoal job runs {j.name}` lists runs"
        )
    emit(list(j.indexes), _job_dict, INDEX_COLUMNS, fmt)


def _duration(r: jobs_pb2.JobRun) -> str:
    if not r.finished_at or r.outcome in ("missed", "skipped"):
        return ""
    return f"{max(0.0, r.finished_at - r.fired_at):.1f}s"


RUN_COLUMNS: list[Column] = [
    ("TICK", lambda r: iso(r.tick)),
    ("OUTCOME", lambda r: r.outcome),
    ("DURATION", _duration),
    ("TASKS", lambda r: ",".join(r.task_ids)),
    ("MESSAGE", lambda r: r.message),
]


def _run_dict(r: jobs_pb2.JobRun) -> dict[str, Any]:
    return {
        "tick": iso(r.tick),
        "outcome": r.outcome,
        "fired": iso(r.fired_at),
        "finished": iso(r.finished_at),
        "duration": _duration(r),
        "tasks": list(r.task_ids),
        "message": r.message,
    }


@job.command("runs")
@click.argument("name")
@output_option()
@pass_settings
def job_runs(settings: Settings, name: str, fmt: str) -> None:
    """A scheduled job's runs, oldest first: tick, outcome, duration, tasks (`shoal task logs ID`)."""
    runs = settings.client()._jobs("ListRuns", jobs_pb2.ListRunsRequest(name=name)).runs
    emit(list(runs), _run_dict, RUN_COLUMNS, fmt)


def _spec(
    client: ShoalClient, name: str, image: str | None, command: tuple[str, ...], source: str | None
) -> str:
    spec: dict[str, Any] = {}
    if source:
        stored = json.loads(client.get_service(source).spec_json)
        spec = {k: v for k, v in stored.items() if k in _FROM_FIELDS}
        if stored.get("secret_env"):
            click.echo(
                f"warning: {source}'s secret_env is not copied (its values are never read back)", err=True
            )
    elif not image:
        raise click.UsageError("give an IMAGE, or --from SERVICE")
    if image:
        spec["image"] = image
    if command:
        spec["command"] = list(command)
    spec |= {"name": name, "kind": "job", "job": {"completions": 1, "retries": 0}}
    return json.dumps(spec)


def _check_free(client: ShoalClient, name: str) -> None:
    """`--name` must be new: applying the run over an existing service would replace that
    service's spec with a one-off job (and `--rm` then remove it), and over an ended run of
    that name would show the old run's output and exit code, not start a new one."""
    try:
        client.get_service(name)
    except NotFound:
        return
    raise ShoalError(
        f"a service named {name!r} exists; give the run another --name "
        f"(`shoal task rm {name}` removes an ended run of that name)"
    )


def _task(client: ShoalClient, name: str) -> api_pb2.Task | None:
    tasks = client.list_tasks(name)
    return tasks[0] if tasks else None


def _relay(client: ShoalClient, task_id: str) -> None:
    """Print the task's output as it comes, each line to the stream it was written to."""
    request = api_pb2.LogsRequest(task=task_id, follow=True)
    for batch in client._stream("ServiceLogs", request, None):
        for line in batch.lines:
            if line.notice:
                continue
            out = sys.stderr if line.stream == "stderr" else sys.stdout
            out.buffer.write(line.text + b"\n")
            out.flush()


def _ended(t: api_pb2.Task) -> bool:
    return t.terminal and t.state in ("exited", "failed")


def _wait_started(client: ShoalClient, name: str) -> api_pb2.Task:
    deadline = time.monotonic() + PLACE_DEADLINE
    while True:
        t = _task(client, name)
        if t is not None and (t.container_id or _ended(t)):
            return t
        if t is not None and t.state == "failed":
            raise _CannotStart(t.message)
        if time.monotonic() > deadline:
            why = client.tasks(name).pending_reason or (t.message if t else "") or "not placed"
            raise _CannotStart(
                f"not started after {PLACE_DEADLINE:g}s ({why}); `shoal task rm {name}` removes it"
            )
        time.sleep(POLL)


class _CannotStart(Exception):
    pass


@click.command("run")
@click.argument("image", required=False)
@click.argument("command", nargs=-1)
@click.option(
    "--from", "source", metavar="SERVICE", help="Start from this service's image, env, secrets, ..."
)
@click.option("--name", help="The run's name (default run-<8 hex>).")
@click.option("-d", "--detach", is_flag=True, help="Print the task id and return at once.")
@click.option("--rm", "remove", is_flag=True, help="Remove the run once it ended.")
@pass_settings
def run(
    settings: Settings,
    image: str | None,
    command: tuple[str, ...],
    source: str | None,
    name: str | None,
    detach: bool,
    remove: bool,
) -> None:
    """Run a one-off task of IMAGE (or --from SERVICE); print its output, exit with its code."""
    client = settings.client()
    if source and image:  # `shoal run --from web -- sh -c ...`: every word is the command
        command, image = (image, *command), None
    name = name or f"run-{secrets.token_hex(4)}"
    _check_free(client, name)
    client.apply(_spec(client, name, image, command, source), source=f"shoal run {name}")
    try:
        t = _wait_started(client, name)
    except _CannotStart as exc:
        click.echo(f"error: {name}: cannot start: {exc}", err=True)
        raise SystemExit(CANNOT_START) from None
    if detach:
        click.echo(t.task_id)
        return
    relay = threading.Thread(target=_relay, args=(client, t.task_id), daemon=True)
    relay.start()
    while not _ended(t):
        time.sleep(POLL)
        t = _task(client, name) or t
    relay.join(DRAIN)
    if remove:
        client.delete_service(name)
    raise SystemExit(t.exit_code if t.state == "exited" or t.exit_code else CANNOT_START)


@task.command("ls")
@output_option()
@pass_settings
def task_ls(settings: Settings, fmt: str) -> None:
    """List the tasks of every job (one-off runs included) with their state and exit code."""
    client = settings.client()
    rows = [(j, t) for j in client.list_jobs() for t in client.list_tasks(j.name)]
    columns: list[Column] = [
        ("TASK", lambda r: r[1].task_id),
        ("JOB", lambda r: f"{r[0].name}.{r[1].slot}"),
        ("NODE", lambda r: r[1].node),
        ("STATE", lambda r: r[1].state),
        ("EXIT", lambda r: r[1].exit_code if _ended(r[1]) else ""),
        ("JOB STATE", lambda r: r[0].state),
    ]

    def as_dict(r: Any) -> dict[str, Any]:
        return {col.lower().replace(" ", "_"): value(r) for col, value in columns}

    emit(rows, as_dict, columns, fmt)


@task.command("rm")
@click.argument("targets", nargs=-1, required=True, metavar="TASK_ID|RUN...")
@pass_settings
def task_rm(settings: Settings, targets: tuple[str, ...]) -> None:
    """Remove one-off runs (`shoal run`), by task id or run name; their containers go."""
    client = settings.client()
    jobs = client.list_jobs()
    for target in targets:
        owner = next((j for j in jobs if j.name == target), None)
        owner = owner or next((j for j in jobs if any(i.task_id == target for i in j.indexes)), None)
        if owner is None:
            raise ShoalError(f"no task or run {target!r}: `shoal task ls` lists them")
        if owner.schedule:
            raise ShoalError(
                f"{target!r} is a run of scheduled job {owner.name}; "
                f"remove the schedule: shoal service rm {owner.name}"
            )
        if owner.completions != 1:
            raise ShoalError(
                f"{target!r} is a task of job {owner.name}; remove the job: shoal service rm {owner.name}"
            )
        client.delete_service(owner.name)
        click.echo(f"{owner.name} removed")
