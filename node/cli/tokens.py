"""`shoal token …`: client tokens, who may call the cluster and with which role (admin).

`create` makes a token and a client certificate for it (the key is made here and
never leaves this host but in the file) and writes a ready context file for the
token's user, mode 0600: the token is shown nowhere else, and never again.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import click

from node.cli import Settings, pass_settings
from node.cli.cluster import own_cluster
from node.cli.output import emit, output_option
from node.pb import api_pb2
from node.security import ca, context
from node.security.ca import Identity, Kind
from node.wire.client import ShoalError

_DURATION = re.compile(r"(\d{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """`90`, `90s`, `15m`, `12h`, `30d` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 3600, 15m, 12h, 30d)")
    return int(match[1]) * _UNITS[match[2]]


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return slug or "client"


def token_dict(t: api_pb2.TokenInfo) -> dict[str, str]:
    return {
        "id": t.id,
        "role": t.role,
        "description": t.description,
        "created": t.created,
        "expires": t.expires,
        "revoked": t.revoked,
    }


@click.group()
def token() -> None:
    """Client tokens: create, list, revoke (admin)."""


@token.command("create")
@click.option(
    "--role", type=click.Choice(["viewer", "deployer", "admin"]), required=True, help="What it may do."
)
@click.option("--description", default="", help="Who or what it is for (shown in `token ls`).")
@click.option("--expires-in", metavar="DURATION", help="e.g. 12h, 30d [never]")
@click.option("--name", help="Name in its client certificate [from the description, or 'client'].")
@click.option(
    "-f",
    "--file",
    "out",
    metavar="FILE",
    help="Where to write its context file [shoal-<id>.json]; '-' prints it on stdout.",
)
@pass_settings
def create_cmd(
    settings: Settings, role: str, description: str, expires_in: str | None, name: str | None, out: str | None
) -> None:
    """Create a token and the context file its user calls the cluster with."""
    found = settings.credentials()
    cluster = own_cluster(found)
    key = ca.new_private_key()
    try:
        csr = ca.make_csr(key, Identity(cluster, Kind.CLIENT, _slug(name or description)))
    except ca.CertError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    seconds = parse_duration(expires_in) if expires_in else 0
    answer = settings.client().create_token(role, description, seconds, csr)
    made = context.Context(
        found.endpoint,
        answer.ca_certificate.decode(),
        answer.client_certificate.decode(),
        ca.private_key_pem(key).decode(),
        answer.token,
    )
    if out == "-":
        click.echo(json.dumps({"current": cluster, "contexts": {cluster: asdict(made)}}, indent=2))
        return
    path = Path(out or f"shoal-{answer.info.id}.json")
    if path.exists():
        raise ShoalError(
            f"{path} exists; choose another --file (token {answer.info.id} was created: revoke it)"
        )
    context.save_context(cluster, made, path)
    click.echo(
        f"token {answer.info.id} created (role {answer.info.role}); its credentials are in {path} "
        f"(mode 0600, keep it secret). Its user runs: SHOAL_CONTEXT_FILE={path} shoal service ls"
    )


TOKEN_COLUMNS = [
    ("ID", lambda t: t.id),
    ("ROLE", lambda t: t.role),
    ("CREATED", lambda t: t.created),
    ("EXPIRES", lambda t: t.expires or "never"),
    ("REVOKED", lambda t: t.revoked or "-"),
    ("DESCRIPTION", lambda t: t.description),
]


@token.command("ls")
@output_option()
@pass_settings
def ls_cmd(settings: Settings, fmt: str) -> None:
    """List tokens (never their secrets), revoked ones too."""
    emit(settings.client().list_tokens(), token_dict, TOKEN_COLUMNS, fmt)


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@pass_settings
def revoke_cmd(settings: Settings, token_id: str) -> None:
    """Revoke a token: every later call with it fails."""
    info = settings.client().revoke_token(token_id)
    click.echo(f"token {info.id} ({info.role}) revoked")
