"""`shoal events`: the cluster's event ring, one line per event, optionally followed."""

from __future__ import annotations

import json

import click

from node.cli import Settings, pass_settings
from node.cli.output import event_dict, event_line, output_option


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--service", default="", metavar="NAME", help="Only this service's events.")
@click.option(
    "-n", "--limit", type=click.IntRange(min=0), default=0, help="At most N past events (0: all kept)."
)
@output_option(formats=("table", "json"))
@pass_settings
def events(settings: Settings, fmt: str, follow: bool, service: str, limit: int) -> None:
    """Print cluster events, oldest first (JSON: one object per line)."""
    for event in settings.client().events(service=service, follow=follow, limit=limit):
        if fmt == "json":
            click.echo(json.dumps(event_dict(event), ensure_ascii=False))
        else:
            click.echo(event_line(event))
