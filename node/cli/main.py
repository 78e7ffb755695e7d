"""The `shoal` command: the group, its global options and its error handling.

Every failure a user can cause or meet (a node that does not answer, an unknown
service, an invalid spec, a missing file) ends the same way: exactly one line
`error: <message>` on stderr and exit status 1, never a traceback. Usage mistakes
keep click's usual message and status 2. Ctrl-C exits 130 without a word.
"""

from __future__ import annotations

from typing import Any

import click

from node.cli import Settings
from node.cli.cluster import cluster
from node.cli.dev import dev
from node.cli.events import events
from node.cli.nodes import node, resolve
from node.cli.service import service
from node.cli.tokens import token
from node.client import DEFAULT_ADDR, ShoalError
from node.rpc import DEFAULT_DEADLINE


class CliError(click.ClickException):
    """An error shown as one `error: …` line, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class ShoalGroup(click.Group):
    """A group that turns shoal and file errors into `CliError` and Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShoalError as err:
            raise CliError(str(err)) from None
        except click.FileError as err:
            raise CliError(f"cannot open '{err.ui_filename}': {err.message}") from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None


@click.group(cls=ShoalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--addr",
    envvar="SHOAL_ADDR",
    show_envvar=True,
    metavar="HOST:PORT",
    help=f"gRPC address of any shoal node [default: the context's endpoint, or {DEFAULT_ADDR}].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_DEADLINE,
    show_default=True,
    metavar="SECONDS",
    help="Deadline of each call (not of `events --follow`).",
)
@click.option(
    "--context",
    "context_name",
    envvar="SHOAL_CONTEXT",
    metavar="NAME",
    help="Which context of the context file (SHOAL_CONTEXT_FILE, ~/.config/shoal/context.json).",
)
@click.option(
    "--token",
    metavar="TOKEN",
    help="Client token; prefer SHOAL_TOKEN or the context file: process arguments are visible to all.",
)
@click.option("--ca", metavar="FILE", help="Cluster CA certificate (PEM) [SHOAL_CA, or the context].")
@click.option("--cert", metavar="FILE", help="Client certificate (PEM) [SHOAL_CERT, or the context].")
@click.option(
    "--key", metavar="FILE", help="Client certificate's key (PEM, 0600) [SHOAL_KEY, or the context]."
)
@click.version_option(package_name="shoal", prog_name="shoal")
@click.pass_context
def cli(
    ctx: click.Context,
    addr: str | None,
    timeout: float,
    context_name: str | None,
    token: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
) -> None:
    """shoal: run containers as services on your own hosts.

    Talks to any node of the cluster over gRPC (mutual TLS and a token); every node
    answers every command. Credentials come from the flags, SHOAL_TOKEN / SHOAL_CA /
    SHOAL_CERT / SHOAL_KEY, or the context file that `shoal cluster init` and
    `shoal dev` write.
    """
    ctx.obj = Settings(addr, timeout, token, ca, cert, key, context_name)


cli.add_command(service)
cli.add_command(node)
cli.add_command(resolve)
cli.add_command(events)
cli.add_command(dev)
cli.add_command(cluster)
cli.add_command(token)


def main() -> None:
    """Console-script entry point of `shoal`."""
    cli(prog_name="shoal")


if __name__ == "__main__":
    main()
