"""`shoal volume …`: the named volumes of services' slots (admin). See docs/volumes.md."""

from __future__ import annotations

import time
from typing import Any

import click

from node.cli import Settings, pass_settings
from node.cli.output import emit, output_option


def volume_dict(v: Any) -> dict[str, Any]:
    return {
        "name": v.name,
        "service": v.service,
        "slot": v.slot,
        "volume": v.volume,
        "node": v.node,
        "docker_name": v.docker_name,
        "in_use": v.in_use,
        "removing": v.removing,
        "since": v.since,
    }


def _state(v: Any) -> str:
    return "removing" if v.removing else "in use" if v.in_use else "unused"


def _age(v: Any) -> str:
    seconds = max(0, int(time.time() - v.since)) if v.since else 0
    return (
        f"{seconds // 3600}h" if seconds >= 3600 else f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"
    )


COLUMNS = [
    ("NAME", lambda v: v.name),
    ("NODE", lambda v: v.node),
    ("STATE", _state),
    ("AGE", _age),
    ("DOCKER VOLUME", lambda v: v.docker_name),
]


@click.group("volume")
def volume() -> None:
    """Named volumes of service slots: list them and remove them (admin)."""


@volume.command("ls")
@click.option("--service", default="", metavar="SERVICE", help="Only the volumes of SERVICE.")
@output_option()
@pass_settings
def ls_cmd(settings: Settings, service: str, fmt: str) -> None:
    """List the volumes (<service>.<slot>.<volume>), the node that holds each, and whether it is in use."""
    emit(settings.client().list_volumes(service), volume_dict, COLUMNS, fmt)


@volume.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@pass_settings
def rm_cmd(settings: Settings, names: tuple[str, ...]) -> None:
    """Remove volumes and their data; refused while a task of the slot is assigned."""
    for name in names:
        click.echo(settings.client().remove_volume(name).message)
