"""`shoal secret …` and `shoal config …`: named values that services mount as files
(admin). A value is read from a file or stdin (`-f -`) and sent once; no command ever
prints it back. See docs/secrets.md.
"""

from __future__ import annotations

from typing import Any

import click

from node.cli import Settings, pass_settings
from node.cli.files import read_bounded
from node.cli.output import emit, output_option
from node.security.objects import MAX_BYTES


def object_dict(o: Any) -> dict[str, Any]:
    return {
        "name": o.name,
        "revision": o.revision,
        "version": o.version,
        "size": o.size,
        "created": o.created,
        "updated": o.updated,
        "services": list(o.services),
        "stack": o.stack,
    }


COLUMNS = [
    ("NAME", lambda o: o.name),
    ("VERSION", lambda o: o.version),
    ("SIZE", lambda o: o.size),
    ("UPDATED", lambda o: o.updated),
    ("SERVICES", lambda o: ", ".join(o.services) or "-"),
    ("STACK", lambda o: o.stack or "-"),  # decision 72: `stack rm` removes it with the stack
]


def _read(path: str) -> bytes:
    return read_bounded(path, MAX_BYTES, "the value's file")


def _group(kind: str, help_text: str) -> click.Group:
    @click.group(kind, help=help_text)
    def group() -> None:
        pass

    def put(settings: Settings, name: str, file: str, update: bool) -> None:
        answer = settings.client().put_object(kind, name, _read(file), update)
        if not answer.changed:
            click.echo(f"{kind} {name} unchanged ({answer.info.revision})")
        else:
            verb = "updated" if update else "created"
            click.echo(f"{kind} {name} {verb} ({answer.info.size} bytes, revision {answer.info.revision})")
        if answer.rolled:
            click.echo(f"rolling: {', '.join(answer.rolled)} (`shoal service ps NAME` shows the progress)")

    file_option = click.option(
        "-f", "--file", "file", required=True, metavar="FILE", help="Read the value from FILE ('-': stdin)."
    )

    @group.command("create")
    @click.argument("name")
    @file_option
    @pass_settings
    def create_cmd(settings: Settings, name: str, file: str) -> None:
        """Create it from FILE (or stdin with `-f -`)."""
        put(settings, name, file, False)

    create_cmd.help = f"Create a {kind} from FILE (or stdin with `-f -`)."

    @group.command("update")
    @click.argument("name")
    @file_option
    @pass_settings
    def update_cmd(settings: Settings, name: str, file: str) -> None:
        """Replace its value; the services that use it roll."""
        put(settings, name, file, True)

    update_cmd.help = f"Replace a {kind}'s value; every service that uses it rolls to it."

    @group.command("ls")
    @output_option()
    @pass_settings
    def ls_cmd(settings: Settings, fmt: str) -> None:
        """List them (never their values)."""
        emit(settings.client().list_objects(kind), object_dict, COLUMNS, fmt)

    ls_cmd.help = f"List the {kind}s and the services using each (never a value)."

    @group.command("rm")
    @click.argument("names", nargs=-1, required=True, metavar="NAME...")
    @pass_settings
    def rm_cmd(settings: Settings, names: tuple[str, ...]) -> None:
        """Remove them; refused while a service uses one."""
        for name in names:
            settings.client().remove_object(kind, name)
            click.echo(f"{kind} {name} removed")

    rm_cmd.help = f"Remove {kind}s; refused, naming the services, while a service uses one."
    return group


secret = _group("secret", "Secrets: create, update, list, remove (admin); mounted at /run/secrets/NAME.")
config = _group("config", "Configs: create, update, list, remove (admin); mounted read-only.")
