"""`shoal events`: the cluster's event log, one line per event, optionally followed.

Filters (`--since`, `--service`, `--kind`, `--cause`) are applied by the node that
answers, before anything is sent; `-f` keeps the stream open (a watch on the log).
"""

from __future__ import annotations

import json
import time

import click

from node.cli import Settings, pass_settings
from node.cli.output import event_dict, event_line, output_option
from node.runtime.logmerge import parse_since


def _since(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--service", default="", metavar="NAME", help="Only this service's events.")
@click.option(
    "--since", metavar="DURATION|TIME", help="Only events since then: 10m, 1h30m, 2026-12-05T20:00:00Z."
)
@click.option("--kind", default="", metavar="KIND", help="Only this kind (task.started); task. for task.*.")
@click.option("--cause", default="", metavar="ID", help="Only what one apply, scale or rollback led to.")
@click.option(
    "-n", "--limit", type=click.IntRange(min=0), default=0, help="At most N past events (0: all kept)."
)
@output_option(formats=("table", "json"))
@pass_settings
def events(
    settings: Settings,
    fmt: str,
    follow: bool,
    service: str,
    since: str | None,
    kind: str,
    cause: str,
    limit: int,
) -> None:
    """Print cluster events, oldest first (JSON: one object per line)."""
    stream = settings.client().events(
        service=service, follow=follow, limit=limit, since=_since(since), kind=kind, cause=cause
    )
    for event in stream:
        if fmt == "json":
            click.echo(json.dumps(event_dict(event), ensure_ascii=False))
        else:
            click.echo(event_line(event))
