"""The `shoal` command: the group, its global options and its error handling.

Every failure a user can cause or meet (a node that does not answer, an unknown
service, an invalid spec, a missing file) ends the same way: exactly one line
`error: <message>` on stderr and exit status 1, never a traceback. Usage mistakes
keep click's usual message and status 2. Ctrl-C exits 130 without a word.

Fast to start: this module imports click and nothing heavy. Each command group lives
in its own module, imported only when that command runs (`LazyGroup`), so `shoal
--version` and `shoal --help` cost about what starting Python costs, and a call
imports grpc and the stubs but not the spec models, the CA code or the daemon
(`bench/cli.py` measures it). The global options may also follow the subcommand
(`shoal service ls --addr 127.0.0.2:7070`): `hoist_global_options` moves them first.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click

from node import __version__
from node.cli import Settings
from node.wire.defaults import DEFAULT_ADDR, DEFAULT_DEADLINE

# name -> (module, attribute, the one-line help `shoal --help` shows without importing it).
# tests/unit/test_cli_lazy.py checks each line against the command's own docstring.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "service": ("node.cli.service", "service", "Create, inspect, scale and remove services."),
    "stack": ("node.cli.stack", "stack", "Deploy, list, inspect and remove stacks of services."),
    "node": (
        "node.cli.nodes",
        "node",
        "Inspect the nodes (hosts) of the cluster; drain, pause, activate and label them.",
    ),
    "resolve": (
        "node.cli.nodes",
        "resolve",
        "List the healthy, routable replicas of a service (what the proxy uses) and its mesh "
        "addresses: every alive node's address with each published port.",
    ),
    "events": (
        "node.cli.events",
        "events",
        "Print cluster events, oldest first (JSON: one object per line).",
    ),
    "dev": ("node.cli.dev", "dev", "Run a local cluster: embedded etcd and N daemons, node i on 127.0.0.i."),
    "cluster": (
        "node.cli.cluster",
        "cluster",
        "Set up a secured cluster; show or rotate its join token; back it up and restore it.",
    ),
    "token": ("node.cli.tokens", "token", "Client tokens: create, list, revoke (admin)."),
    "context": ("node.cli.contexts", "context", "List the clusters this CLI knows (contexts) and pick one."),
    "secret": (
        "node.cli.secrets",
        "secret",
        "Secrets: create, update, list, remove (admin); mounted at /run/secrets/NAME.",
    ),
    "config": (
        "node.cli.secrets",
        "config",
        "Configs: create, update, list, remove (admin); mounted read-only.",
    ),
    "volume": (
        "node.cli.volumes",
        "volume",
        "Named volumes of service slots: list them and remove them (admin).",
    ),
    "registry": (
        "node.cli.registry",
        "registry",
        "Registry credentials: login, logout (admin); used for that registry's images.",
    ),
    "completion": (
        "node.cli.completion",
        "completion",
        "Print the shell completion script for bash, zsh or fish.",
    ),
    "task": ("node.cli.jobs", "task", "Inspect one task (one replica's container) of a service."),
    "top": (
        "node.cli.usage",
        "top",
        "Show CPU, memory, network and block I/O of every task, refreshed live.",
    ),
    "job": (
        "node.cli.jobs",
        "job",
        "Batch jobs (`kind: job` services): list them and show their progress per index.",
    ),
    "run": (
        "node.cli.jobs",
        "run",
        "Run a one-off task of IMAGE (or --from SERVICE); print its output, exit with its code.",
    ),
    "exec": (
        "node.cli.taskio",
        "exec_cmd",
        "Run a command in a task's container; exit with its exit code (deployer or admin).",
    ),
    "pool": (
        "node.cli.pools",
        "pool",
        "Node pools: capacity a provider adds when replicas wait, and takes back when idle (admin).",
    ),  # issue 15
}

# The group's options that take a value; they may also be written after the subcommand.
GLOBAL_OPTIONS = ("--addr", "--timeout", "--context", "--token", "--ca", "--cert", "--key")


class CliError(click.ClickException):
    """An error shown as one `error: …` line, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _is_shoal_error(err: BaseException) -> bool:
    errors = sys.modules.get("node.model.errors")  # never imported: the error cannot be one of its
    return errors is not None and isinstance(err, errors.ShoalError)


class LazyGroup(click.Group):
    """A group whose subcommands are imported when used; turns shoal and file errors into
    `CliError` and Ctrl-C into exit 130."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*COMMANDS, *self.commands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attr)
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `shoal --help`, from `COMMANDS`: no command module imported."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [
            (name, click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit))
            for name in sorted(COMMANDS)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.FileError as err:
            raise CliError(f"cannot open '{err.ui_filename}': {err.message}") from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except Exception as err:
            if _is_shoal_error(err):
                raise CliError(str(err)) from None
            raise


ShoalGroup = LazyGroup  # the name the tests and older code know


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--addr",
    envvar="SHOAL_ADDR",
    show_envvar=True,
    metavar="HOST:PORT",
    help=f"gRPC address of any shoal node [default: the context's endpoints, or {DEFAULT_ADDR}].",
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
@click.version_option(__version__, prog_name="shoal")  # not from package metadata: 20 ms
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
    `shoal dev` write. The options may also follow the subcommand.
    """
    ctx.obj = Settings(addr, timeout, token, ca, cert, key, context_name)


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """`service ls --addr X` -> `--addr X service ls`: the group's value options found after
    the subcommand move in front of it (`--opt value` and `--opt=value`). Nothing after a
    `--` moves (a command's own arguments); a value that is missing is a usage error."""
    args = list(args)
    front: list[str] = []
    rest: list[str] = []
    seen_command = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        name = arg.split("=", 1)[0]
        if seen_command and name in GLOBAL_OPTIONS:
            if "=" in arg:
                front.append(arg)
            elif i + 1 < len(args):
                front += [arg, args[i + 1]]
                i += 1
            else:
                raise click.UsageError(f"Option '{arg}' requires an argument.")
        elif not seen_command and name in GLOBAL_OPTIONS and "=" not in arg and i + 1 < len(args):
            front += [arg, args[i + 1]]  # before the command: keep it with its value
            i += 1
        else:
            seen_command = seen_command or not arg.startswith("-")
            (rest if seen_command else front).append(arg)
        i += 1
    return front + rest


def main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point of `shoal`."""
    cli(args=None if args is None else list(args), prog_name="shoal")


if __name__ == "__main__":
    main()
