"""Files named on the command line are read with a bound (`node.cli.files`): what is not
a regular file, what is over the bound and what is not UTF-8 is refused by name, before
anything reaches the cluster. Before, `/dev/zero` or a FIFO hung the CLI or filled its
memory, a several-GB file was read whole, and a non-UTF-8 `.env` or spec on standard
input ended in a traceback."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.cli.files import read_bounded, read_text
from node.cli.main import cli
from node.wire.client import ShoalError


def test_a_regular_file_within_the_bound_is_read(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_bytes(b"name: web\n")
    assert read_text(f, 100, "spec file") == "name: web\n"


def test_over_the_bound_is_refused_naming_it(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"x" * (600 * 1024))
    with pytest.raises(
        ShoalError, match=r"cannot read the value's file '.*big': over 500 KiB, too big to send"
    ):
        read_bounded(f, 500 * 1024, "the value's file")


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "dir"])
def test_what_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path: Path, special: str) -> None:
    path = Path(special) if special.startswith("/") else tmp_path / special
    if special == "fifo":
        os.mkfifo(path)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # a writer, so opening it does not block
    elif special == "dir":
        path.mkdir()
    try:
        with pytest.raises(ShoalError, match=r"not a regular file|Is a directory"):
            read_bounded(path, 1024, "spec file")
    finally:
        if special == "fifo":
            os.close(fd)


def test_not_utf8_is_refused_with_where(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_bytes(b"name: w\xffb\n")
    with pytest.raises(ShoalError, match=r"not UTF-8 text \(byte 7\)"):
        read_text(f, 100, "spec file")


def test_standard_input_is_bounded_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"x" * 2000)))
    with pytest.raises(ShoalError, match="cannot read spec file standard input: over 1 KiB"):
        read_bounded("-", 1024, "spec file")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe")))
    with pytest.raises(ShoalError, match="standard input: not UTF-8"):
        read_text("-", 1024, "spec file")


def test_a_compose_dotenv_that_is_not_utf8_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: x:1\n")
    (tmp_path / ".env").write_bytes(b"TAG=\xff\n")
    result = CliRunner().invoke(cli, ["stack", "deploy", "-c", str(tmp_path / "compose.yaml"), "app"])
    assert result.exit_code != 0
    assert "environment file" in result.output and "not UTF-8" in result.output, result.output
    assert "Traceback" not in result.output
