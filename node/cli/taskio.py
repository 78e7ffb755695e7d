"""`shoal service logs`, `shoal task logs` and `shoal exec`: a task's container through any node.

Logs print one line per container line, `web.1.abc123def456@node2 | text` (the tag
coloured per replica on a terminal, plain in a pipe), in time order; with -f they come
as they are written until Ctrl-C (exit 130, the stream is cancelled on the node). A
word about one task's stream (its node cannot be reached, its container is gone) goes
to stderr as `warning: …`.

Exec passes stdin (-i), stdout and stderr through, with a terminal in raw mode (-t)
and its size sent on SIGWINCH, and exits with the command's exit code.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from node.cli import Settings, pass_settings
from node.pb import api_pb2
from node.runtime.logmerge import format_time, interleave, parse_since, prefix
from node.wire.client import ShoalClient, ShoalError

COLOURS = ("cyan", "green", "yellow", "magenta", "blue", "red")
LOGS_DEADLINE = 60.0  # s at least for a call that is not followed (many lines from many nodes)
STDIN_QUEUE = 64  # chunks of stdin waiting to be sent
EVENT_TAG = "\0event"  # the task field of an event printed among the lines (no task id has it)
EVENTS_QUEUE = 64  # batches of lines or events read ahead of the printing when following


def _since(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _logs_options(f: Any) -> Any:
    f = click.option("-t", "--timestamps", is_flag=True, help="Show each line's time (RFC 3339, UTC).")(f)
    f = click.option(
        "--since", metavar="DURATION|TIME", help="Only lines since then: 10m, 1h30m, 2026-12-05T20:00:00Z."
    )(f)
    f = click.option(
        "-n", "--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines of each task."
    )(f)
    return click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")(f)


def print_logs(
    client: ShoalClient,
    request: api_pb2.LogsRequest,
    timestamps: bool,
    colour: bool | None = None,
    events: bool = False,
) -> None:
    """Each line as `format_line` makes it (the tag coloured per task when `colour`), a
    batch in one write: the tag, its padding and colour are made once per task and width,
    not per line (a followed service prints hundreds of thousands of lines). With
    `events`, the service's events come among the lines as `event | KIND MESSAGE`."""
    colour = sys.stdout.isatty() if colour is None else colour
    timeout = None if request.follow else max(client.timeout, LOGS_DEADLINE)
    stream: Iterator[list[api_pb2.LogLine]] = (
        list(batch.lines) for batch in client._stream("ServiceLogs", request, timeout)
    )
    if events:
        stream = with_events(client, request, stream)
    width = 0
    tags: dict[str, str] = {EVENT_TAG: "event"}  # task -> its prefix (its service, slot, node never change)
    heads: dict[str, tuple[int, str]] = {}  # task -> (width, its printed tag and ` | `)
    order: dict[str, int] = {}  # task -> its colour's index
    out = sys.stdout
    for lines in stream:
        chunk: list[str] = []
        for line in lines:
            task = line.task
            tag = tags.get(task) or tags.setdefault(task, prefix(line.service, line.slot, task, line.node))
            if line.notice:
                if chunk:
                    out.write("\n".join(chunk) + "\n")
                    chunk = []
                out.flush()
                click.echo(f"warning: {tag}: {line.notice}", err=True)
                continue
            width = max(width, len(tag))
            made = heads.get(task)
            if made is None or made[0] != width:
                padded = tag.ljust(width)
                if colour and task != EVENT_TAG:
                    index = order.setdefault(task, len(order))
                    padded = click.style(padded, fg=COLOURS[index % len(COLOURS)])
                made = heads[task] = (width, padded + " | ")
            text = line.text.decode(errors="replace")
            if timestamps and line.time_ns:
                chunk.append(f"{made[1]}{format_time(line.time_ns)} {text}")
            else:
                chunk.append(made[1] + text)
        if chunk:
            out.write("\n".join(chunk) + "\n")
        out.flush()  # a batch is what was ready: a followed line shows at once


def event_line(event: api_pb2.Event) -> api_pb2.LogLine:
    """An event as a line to print among the logs: `event | KIND MESSAGE`."""
    text = f"{event.kind} {event.message}".encode()
    return api_pb2.LogLine(task=EVENT_TAG, service=event.service, time_ns=int(event.time * 1e9), text=text)


def with_events(
    client: ShoalClient, request: api_pb2.LogsRequest, lines: Iterator[list[api_pb2.LogLine]]
) -> Iterator[list[api_pb2.LogLine]]:
    """The batches of `lines` with the service's events among them: in time order when
    not following (`interleave`); as they come when following (two reader threads, one
    bounded queue; the streams are cancelled when the command ends)."""
    since = request.since
    if not request.follow:
        past = (event_line(e) for e in client.events(service=request.service, since=since))
        yield from interleave(lines, past, key=lambda line: line.time_ns)
        return
    events = client.events(service=request.service, follow=True, since=since)
    items: queue.Queue[tuple[str, object]] = queue.Queue(EVENTS_QUEUE)

    def read(name: str, source: Iterator[Any], make: Any) -> None:
        try:
            for item in source:
                items.put(("item", make(item)))
        except Exception as exc:  # a stream that fails ends the command with its error
            items.put(("error", exc))
        items.put(("end", name))

    threads = [
        threading.Thread(target=read, args=("logs", lines, lambda b: b), daemon=True),
        threading.Thread(target=read, args=("events", events, lambda e: [event_line(e)]), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "error":
                raise item  # type: ignore[misc]
            if kind == "end":
                if item == "logs":
                    return
                continue
            yield item  # type: ignore[misc]
    finally:
        with contextlib.suppress(Exception):
            events.close()  # type: ignore[attr-defined]


@click.command("logs")
@click.argument("name")
@_logs_options
@click.option("--events", "with_service_events", is_flag=True, help="Interleave the service's events.")
@pass_settings
def service_logs(
    settings: Settings,
    name: str,
    follow: bool,
    tail: int | None,
    since: str | None,
    timestamps: bool,
    with_service_events: bool,
) -> None:
    """Print the logs of every replica of a service, merged in time order."""
    request = api_pb2.LogsRequest(service=name, follow=follow, since=_since(since))
    if tail is not None:
        request.tail = tail
    print_logs(settings.client(), request, timestamps, events=with_service_events)


@click.group()
def task() -> None:
    """Inspect one task (one replica's container) of a service."""


@task.command("logs")
@click.argument("task_id", metavar="TASK_ID")
@_logs_options
@click.option(
    "-p",
    "--previous",
    type=click.IntRange(min=0),
    default=0,
    help="The run N restarts back (1: before the last restart), kept on its node.",
)
@pass_settings
def task_logs(
    settings: Settings,
    task_id: str,
    follow: bool,
    tail: int | None,
    since: str | None,
    timestamps: bool,
    previous: int,
) -> None:
    """Print the logs of one task (its id, or its first 4+ characters: `shoal service ps
    NAME` lists them), also of a replaced or exited one while its node keeps it."""
    request = api_pb2.LogsRequest(task=task_id, follow=follow, since=_since(since), previous=previous)
    if tail is not None:
        request.tail = tail
    print_logs(settings.client(), request, timestamps)


# ------------------------------------------------------------------------- exec


class _Inputs:
    """The request stream of an exec: the start, then stdin chunks and terminal sizes
    from a reader thread and SIGWINCH, until stdin ends or the command does."""

    def __init__(self, start: api_pb2.ExecStart, interactive: bool) -> None:
        self.start = start
        self.queue: queue.Queue[api_pb2.ExecInput | None] = queue.Queue(STDIN_QUEUE)
        self.done = threading.Event()
        if interactive:
            threading.Thread(target=self._read_stdin, name="exec-stdin", daemon=True).start()
        else:
            self.queue.put(None)

    def _read_stdin(self) -> None:
        fd = sys.stdin.fileno()
        while not self.done.is_set():
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                self._put(api_pb2.ExecInput(stdin_eof=True))
                self._put(None)
                return
            self._put(api_pb2.ExecInput(stdin=data))

    def _put(self, item: api_pb2.ExecInput | None) -> None:
        while not self.done.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def resize(self, width: int, height: int) -> None:
        with contextlib.suppress(queue.Full):  # the next SIGWINCH sends the size again
            self.queue.put_nowait(api_pb2.ExecInput(width=width, height=height))

    def __iter__(self) -> Iterator[api_pb2.ExecInput]:
        yield api_pb2.ExecInput(start=self.start)
        while not self.done.is_set():
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    def close(self) -> None:
        self.done.set()


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return 0, 0
    return size.columns, size.lines


def run_exec(client: ShoalClient, start: api_pb2.ExecStart, interactive: bool) -> int:
    """Run the exec; the command's exit code."""
    inputs = _Inputs(start, interactive)
    restore: Any = None
    if start.tty and interactive and sys.stdin.isatty():
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setraw(fd)
        restore = lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)  # noqa: E731
        signal.signal(signal.SIGWINCH, lambda *_: inputs.resize(*_size()))
    call = client._stub.Exec(iter(inputs))
    try:
        for out in call:
            if out.stdout:
                sys.stdout.buffer.write(out.stdout)
                sys.stdout.buffer.flush()
            if out.stderr:
                sys.stderr.buffer.write(out.stderr)
                sys.stderr.buffer.flush()
            if out.exited:
                return out.exit_code
    except Exception as err:
        import grpc

        if isinstance(err, grpc.RpcError):
            raise client._error(err) from None
        raise
    finally:
        inputs.close()
        call.cancel()
        if restore is not None:
            restore()
    raise ShoalError("the exec ended without the command's exit code (its node went away?)")


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Send this terminal's stdin to the command.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (raw mode here, resized).")
@click.argument("target", metavar="TASK_ID|SERVICE[.SLOT]")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_settings
def exec_cmd(settings: Settings, interactive: bool, tty: bool, target: str, command: tuple[str, ...]) -> None:
    """Run a command in a task's container; exit with its exit code (deployer or admin).

    `shoal exec web -- ps aux`, `shoal exec -it web.2 -- sh`. SERVICE picks its lowest
    running slot. The command is recorded as a `task.exec` event, its output is not.
    """
    if command[:1] == ("--",):  # options end at TARGET, so a `--` after it is still here
        command = command[1:]
    if not command:
        raise click.UsageError("give the command to run after `--`, e.g. `shoal exec web -- ps aux`")
    width, height = _size() if tty else (0, 0)
    start = api_pb2.ExecStart(
        target=target, command=list(command), tty=tty, stdin=interactive, width=width, height=height
    )
    sys.exit(run_exec(settings.client(), start, interactive))
