"""`shoal registry login HOST` / `shoal registry logout HOST` (admin): a registry's
credentials kept as the secret `registry-<host>` (`node.model.images.login_secret_name`),
a Docker config JSON naming that host alone. `apply` and the nodes use it for every
image of that registry whose service names no `image_pull_secret`. See docs/images.md.
"""

from __future__ import annotations

import json
import sys

import click

from node.cli import Settings, pass_settings
from node.model.images import ImageRefError, login_secret_name, parse_image
from node.wire.client import Conflict, ShoalError


@click.group("registry")
def registry() -> None:
    """Registry credentials: login, logout (admin); used for that registry's images."""


def _host(host: str) -> str:
    try:
        named = parse_image(f"{host}/x").registry
    except ImageRefError:
        named = ""
    if named != host:
        raise ShoalError(
            f"'{host}' is not a registry host: write it as in image references, e.g. "
            "registry.example:5000 or 127.0.0.1:5000 (a '.' or ':' in it, or localhost)"
        )
    return host


@registry.command("login")
@click.argument("host")
@click.option("-u", "--username", required=True, help="The registry user.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (else it is prompted).")
@pass_settings
def login_cmd(settings: Settings, host: str, username: str, password_stdin: bool) -> None:
    """Keep HOST's credentials (a sealed secret); sent to HOST only."""
    host = _host(host)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True)
    if not password:
        raise ShoalError("the password is empty")
    value = json.dumps({"auths": {host: {"username": username, "password": password}}}).encode()
    name = login_secret_name(host)
    client = settings.client()
    try:
        client.put_object("secret", name, value, False)
    except Conflict:
        client.put_object("secret", name, value, True)
    click.echo(f"credentials for {host} kept as secret {name}; used for its images without image_pull_secret")


@registry.command("logout")
@click.argument("host")
@pass_settings
def logout_cmd(settings: Settings, host: str) -> None:
    """Forget HOST's credentials (its next pulls and deploys go without)."""
    name = login_secret_name(_host(host))
    settings.client().remove_object("secret", name)
    click.echo(f"credentials for {host} removed (secret {name})")
