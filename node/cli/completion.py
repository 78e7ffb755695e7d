"""`shoal completion bash|zsh|fish`: the shell completion script, from click's own.

Install it once, e.g. `shoal completion bash > /etc/bash_completion.d/shoal`, or
`eval "$(shoal completion zsh)"` in ~/.zshrc. Completion runs `shoal` with
`_SHOAL_COMPLETE` set, which lists the commands, subcommands and options without
contacting any node.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish."""
    from node.cli.main import cli

    comp_cls = get_completion_class(shell)
    if comp_cls is None:  # click knows all three; a future click may not
        raise click.ClickException(f"no completion for {shell}")
    click.echo(comp_cls(cli, {}, "shoal", "_SHOAL_COMPLETE").source())
