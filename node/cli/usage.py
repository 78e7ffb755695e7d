"""`shoal top` and the usage columns of `shoal service ps` (issue 14).

The figures come from `Shoal/TaskUsage`: every node samples its own containers every
few seconds (Docker stats, from the cgroups) and keeps their last samples in memory;
the node asked gathers them. CPU % is over the last sampling interval, 100 = one core
busy (as `docker stats`); "-" where a task has no sample yet (just started, or its
node did not answer).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from node.cli import Settings, pass_settings
from node.cli.output import Column, Row, emit_data, emit_table, human_bytes, output_option

if TYPE_CHECKING:
    from node.pb import api_pb2

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen (as `docker stats` redraws)


def cpu_text(u: api_pb2.TaskUsage | None) -> str:
    return f"{u.cpu_percent:.1f}%" if u is not None else "-"


def mem_text(u: api_pb2.TaskUsage | None) -> str:
    return f"{human_bytes(u.memory_bytes)} / {human_bytes(u.memory_limit)}" if u is not None else "-"


def io_text(a: int, b: int, u: api_pb2.TaskUsage | None) -> str:
    return f"{human_bytes(a)} / {human_bytes(b)}" if u is not None else "-"


def usage_dict(u: api_pb2.TaskUsage) -> Row:
    return {
        "service": u.service,
        "slot": u.slot,
        "task": u.task_id,
        "node": u.node,
        "cpu_percent": round(u.cpu_percent, 2),
        "memory_bytes": u.memory_bytes,
        "memory_limit": u.memory_limit,
        "rx_bytes": u.rx_bytes,
        "tx_bytes": u.tx_bytes,
        "block_read": u.block_read,
        "block_write": u.block_write,
        "restarts": u.restarts,
        "at": u.at,
        "history": [
            {"at": p.at, "cpu_percent": round(p.cpu_percent, 2), "memory_bytes": p.memory_bytes}
            for p in u.history
        ],
    }


def ps_columns(by_task: dict[str, api_pb2.TaskUsage]) -> list[Column]:
    """The columns `service ps` adds (before MESSAGE), each over a row's `task_id`."""
    return [
        ("CPU %", lambda t: cpu_text(by_task.get(t.task_id))),
        ("MEM USAGE / LIMIT", lambda t: mem_text(by_task.get(t.task_id))),
        ("NET I/O", lambda t: _io(by_task.get(t.task_id), "net")),
        ("BLOCK I/O", lambda t: _io(by_task.get(t.task_id), "block")),
    ]


def _io(u: api_pb2.TaskUsage | None, kind: str) -> str:
    if u is None:
        return "-"
    return io_text(u.rx_bytes, u.tx_bytes, u) if kind == "net" else io_text(u.block_read, u.block_write, u)


def usage_by_task(settings: Settings, service: str) -> tuple[dict[str, api_pb2.TaskUsage], list[str]]:
    """Usage of the service's tasks, and the notices; never fails `ps` (a daemon without
    `TaskUsage`, or none answering, gives no figures and one notice)."""
    try:
        answer = settings.client().usage(service)
    except Exception as exc:  # ps lists the tasks even when no figure can be had
        return {}, [f"no usage figures: {exc}"]
    return {u.task_id: u for u in answer.tasks}, list(answer.notices)


TOP_COLUMNS: Sequence[Column] = [
    ("SERVICE", lambda u: u.service),
    ("SLOT", lambda u: u.slot),
    ("TASK", lambda u: u.task_id),
    ("NODE", lambda u: u.node),
    ("CPU %", lambda u: cpu_text(u)),
    ("MEM USAGE / LIMIT", lambda u: mem_text(u)),
    ("MEM %", lambda u: f"{100 * u.memory_bytes / u.memory_limit:.1f}%" if u.memory_limit else "-"),
    ("NET I/O", lambda u: io_text(u.rx_bytes, u.tx_bytes, u)),
    ("BLOCK I/O", lambda u: io_text(u.block_read, u.block_write, u)),
    ("RESTARTS", lambda u: u.restarts),
]


def _show(answer: api_pb2.UsageResponse, fmt: str) -> None:
    if fmt != "table":
        emit_data({"tasks": [usage_dict(u) for u in answer.tasks], "notices": list(answer.notices)}, fmt)
        return
    emit_table(answer.tasks, TOP_COLUMNS)
    for notice in answer.notices:
        click.echo(f"note: {notice}")


@click.command("top")
@click.argument("service", required=False, default="")
@click.option("--once", is_flag=True, help="Print one table and exit (for scripts and tests).")
@click.option(
    "--interval",
    type=click.FloatRange(min=1.0),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--history", is_flag=True, help="With each task's recent samples (-o json/yaml only).")
@output_option()
@pass_settings
def top(settings: Settings, service: str, once: bool, interval: float, history: bool, fmt: str) -> None:
    """Show CPU, memory, network and block I/O of every task, refreshed live.

    Like `docker stats`, over the whole cluster (or one SERVICE): every node samples its
    tasks from the cgroups and keeps a short history in memory. Ctrl-C stops it.
    """
    client = settings.client()
    redraw = fmt == "table" and sys.stdout.isatty()  # in a pipe: one table after another
    while True:
        answer: Any = client.usage(service, history=history)
        if redraw and not once:
            click.echo(CLEAR, nl=False)
        _show(answer, fmt)
        if once:
            return
        time.sleep(interval)
