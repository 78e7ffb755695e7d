"""The CLI starts fast (lazy imports), takes its global options anywhere, fails over to
the next endpoint, completes in shells and lists its contexts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from node import __version__
from node.cli import main as cli_main
from node.cli.output import cell_width, emit_table
from node.security import context
from node.wire.client import ShoalClient, Unavailable
from tests.unit.fake_shoal import FakeShoal, free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("credentials")
HEAVY = (
    "grpc",
    "rich",
    "pydantic",
    "cryptography",
    "ruamel",
    "docker",
    "etcd3aio",
    "node.model.spec",
    "node.model.config",
)


def imported(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """The top-level modules and shoal modules `shoal ARGS` imports (python -X importtime)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "node.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name)
    return names


def heavy_in(names: set[str]) -> list[str]:
    return sorted(h for h in HEAVY if h in names)


def test_version_and_help_import_nothing_heavy() -> None:
    assert heavy_in(imported("--version")) == []
    assert heavy_in(imported("--help")) == []
    assert heavy_in(imported("service", "--help")) == ["grpc"]  # the command module needs the stubs


def test_a_listing_imports_no_spec_models_ca_or_daemon(addr: str, context_file: Path) -> None:
    names = imported("service", "ls", "--addr", addr, env={"SHOAL_CONTEXT_FILE": str(context_file)})
    assert "grpc" in names
    for absent in (
        "rich",
        "pydantic",
        "cryptography",
        "node.model.spec",
        "node.model.config",
        "docker",
        "etcd3aio",
    ):
        assert absent not in names, absent


def test_version_is_the_package_version() -> None:
    from importlib.metadata import version

    assert __version__ == version("shoal")
    result = CliRunner().invoke(cli_main.cli, ["--version"])
    assert result.output.strip() == f"shoal, version {__version__}"


def test_help_lines_match_the_commands_own() -> None:
    group = cli_main.cli
    assert isinstance(group, click.Group)
    ctx = click.Context(group)
    for name, (_module, _attr, short) in cli_main.COMMANDS.items():
        command = group.get_command(ctx, name)
        assert command is not None, name
        first = " ".join((command.help or "").split("\n\n")[0].split())
        assert first == short, f"COMMANDS[{name!r}] says {short!r}; the command says {first!r}"
    assert group.get_command(ctx, "nope") is None


@pytest.mark.parametrize(
    ("given", "hoisted"),
    [
        (["service", "ls", "--addr", "h:1"], ["--addr", "h:1", "service", "ls"]),
        (["service", "ls", "--addr=h:1", "-o", "json"], ["--addr=h:1", "service", "ls", "-o", "json"]),
        (["--timeout", "3", "node", "ls", "--token", "t"], ["--timeout", "3", "--token", "t", "node", "ls"]),
        (
            ["service", "scale", "web", "5", "--timeout", "2"],
            ["--timeout", "2", "service", "scale", "web", "5"],
        ),
        # nothing after `--` moves
        (["run", "img", "--", "cmd", "--addr", "x"], ["run", "img", "--", "cmd", "--addr", "x"]),
        (["--addr", "service", "ls"], ["--addr", "service", "ls"]),  # the value of --addr is 'service'
        ([], []),
    ],
)
def test_hoist_global_options(given: list[str], hoisted: list[str]) -> None:
    assert cli_main.hoist_global_options(given) == hoisted


def test_global_options_after_the_subcommand(addr: str, fake: FakeShoal) -> None:
    result = CliRunner().invoke(
        cli_main.cli, ["service", "ls", "-o", "json", "--addr", addr, "--timeout", "5"]
    )
    assert result.exit_code == 0, result.output
    assert [s["name"] for s in json.loads(result.stdout)] == ["db", "web"]


def test_a_missing_option_value_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli_main.cli, ["service", "ls", "--addr"])
    assert result.exit_code == 2 and "requires an argument" in result.stderr


def test_client_fails_over_to_the_next_endpoint(addr: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with ShoalClient(f"{dead}, {addr}", timeout=5) as client:
        assert client.addr == dead
        assert [s.name for s in client.list_services()] == ["db", "web"]
        assert client.addr == addr, "moved to the node that answers"
        assert client.get_service("web").version == 3, "and stays there"
    with ShoalClient(f"{dead},{addr}", timeout=5) as client:
        assert [e.kind for e in client.events(limit=2)], "a stream fails over too"


def test_every_endpoint_down_names_them_all() -> None:
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with ShoalClient(f"{a},{b}", timeout=5) as client, pytest.raises(Unavailable) as err:
        client.list_services()
    assert f"no shoal node answers at {a}, {b}: connection refused" in str(err.value)


def test_a_node_that_answers_an_error_is_not_skipped(addr: str) -> None:
    """Only calls that reached no node move on: an answer (NOT_FOUND) is the answer."""
    dead = f"127.0.0.1:{free_port()}"
    with ShoalClient(f"{addr},{dead}", timeout=5) as client:
        with pytest.raises(Exception, match="not found"):
            client.get_service("nope")
        assert client.addr == addr


def test_cli_uses_every_endpoint_of_the_context(addr: str, context_file: Path, tmp_path: Path) -> None:
    _, contexts = context.load_contexts(context_file)
    multi = tmp_path / "multi.json"
    dead = f"127.0.0.1:{free_port()}"
    stored = context.Context(**{**contexts["unit"], "endpoint": f"{dead},{addr}"})
    context.save_context("two", stored, multi)
    result = CliRunner(env={"SHOAL_CONTEXT_FILE": str(multi)}).invoke(
        cli_main.cli, ["node", "ls", "-o", "json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["id"] == "n1"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    result = CliRunner().invoke(cli_main.cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert "_SHOAL_COMPLETE" in result.stdout


def test_completion_lists_the_lazy_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node.cli.main"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "_SHOAL_COMPLETE": "bash_complete", "COMP_WORDS": "shoal ser", "COMP_CWORD": "1"},
        timeout=60,
    )
    assert "plain,service" in done.stdout, done.stdout + done.stderr


def test_context_ls_and_use(context_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "ctx.json"
    _, contexts = context.load_contexts(context_file)
    base = context.Context(**contexts["unit"])
    context.save_context(
        "prod", context.Context(**{**contexts["unit"], "endpoint": "10.0.0.1:7070,10.0.0.2:7070"}), path
    )
    context.save_context("dev", base, path)
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(path)})
    listed = runner.invoke(cli_main.cli, ["context", "ls", "-o", "json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["dev"]["current"] and not rows["prod"]["current"]
    assert rows["prod"]["endpoints"] == ["10.0.0.1:7070", "10.0.0.2:7070"]
    assert "BEGIN" not in listed.stdout and base.token not in listed.stdout, "no secret shown"
    used = runner.invoke(cli_main.cli, ["context", "use", "prod"])
    assert used.exit_code == 0 and "prod is now current" in used.stdout
    assert context.load_contexts(path)[0] == "prod"
    table = runner.invoke(cli_main.cli, ["context", "ls"])
    assert table.stdout.splitlines()[1].split()[:2] == ["*", "prod"] or "* " in table.stdout


def test_context_use_unknown_changes_nothing(tmp_path: Path, context_file: Path) -> None:
    before = context_file.read_bytes()
    result = CliRunner(env={"SHOAL_CONTEXT_FILE": str(context_file)}).invoke(
        cli_main.cli, ["context", "use", "nope"]
    )
    assert result.exit_code == 1 and "no context 'nope'" in result.stderr and "known: unit" in result.stderr
    assert context_file.read_bytes() == before


def test_table_columns_align_with_wide_characters(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [("web", "日本語", "[bold]x[/]"), ("a-much-longer-name", "e\u0301", "")]
    emit_table(rows, [("NAME", lambda r: r[0]), ("NOTE", lambda r: r[1]), ("RAW", lambda r: r[2])])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "NAME                NOTE    RAW"
    assert lines[1] == "web                 日本語  [bold]x[/]", "wide characters take two columns; no markup"
    assert lines[2] == "a-much-longer-name  e\u0301", "a combining mark takes none; trailing blanks cut"
    assert cell_width("日本語") == 6 and cell_width("e\u0301") == 1
