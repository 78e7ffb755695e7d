"""`shoal context ls | use NAME`: the clusters this CLI knows, from the context file.

The file (SHOAL_CONTEXT_FILE, else ~/.config/shoal/context.json) is written by `shoal
cluster init`, `shoal token create` and `shoal dev`; each context names a cluster's
endpoints and the credentials to call it with. Neither command contacts a node, and no
secret is printed.
"""

from __future__ import annotations

import click

from node.cli import Settings, pass_settings
from node.cli.output import emit, output_option
from node.security import context as credentials


@click.group()
def context() -> None:
    """List the clusters this CLI knows (contexts) and pick one."""


@context.command("ls")
@output_option()
@pass_settings
def context_ls(settings: Settings, fmt: str) -> None:
    """List the contexts of the file; CURRENT marks the one used by default (*)."""
    path = credentials.context_path()
    try:
        current, contexts = credentials.load_contexts(path)
    except credentials.MissingCredentials as exc:
        raise click.ClickException(str(exc)) from None
    chosen = settings.context_name or current
    rows = [
        {
            "name": name,
            "current": name == chosen,
            "endpoints": [e.strip() for e in str(ctx.get("endpoint", "")).split(",") if e.strip()],
            "token": "set" if ctx.get("token") else "missing",
        }
        for name, ctx in sorted(contexts.items())
    ]
    if not rows and fmt == "table":
        click.echo(f"no contexts in {path} (shoal cluster init, shoal token create and shoal dev write them)")
        return
    columns = [
        ("CURRENT", lambda r: "*" if r["current"] else ""),
        ("NAME", lambda r: r["name"]),
        ("ENDPOINTS", lambda r: ",".join(r["endpoints"])),
        ("TOKEN", lambda r: r["token"]),
    ]
    emit(rows, dict, columns, fmt)


@context.command("use")
@click.argument("name")
def context_use(name: str) -> None:
    """Make NAME the context used when neither --context nor SHOAL_CONTEXT names one."""
    try:
        path = credentials.use_context(name)
    except credentials.MissingCredentials as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"context {name} is now current ({path})")
