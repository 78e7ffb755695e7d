"""`shoal dev --detach` (node.cli.dev): the VIP range the command claims is the one its
background supervisor uses, and so gives back when it stops. Before, the command and
the supervisor each claimed a /24, and the command's stayed a local route on the host
after `make stop`, one per `make demo`. No process is started here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from node.cli import dev
from node.dev import vipranges

RANGE = "10.212.250.0/24"


class Supervisor:
    """Stands for the background `shoal dev`: records its arguments; exits at once when
    `fails`, or else writes its pid file as a started supervisor does."""

    fails = False
    args: list[str] = []

    def __init__(self, args: list[str], **_: Any) -> None:
        Supervisor.args = args
        self.pid = 4242
        if not self.fails:
            data_dir = Path(args[args.index("--data-dir") + 1])
            (data_dir / "dev.pid").write_text(f"{self.pid}\n")

    def poll(self) -> int | None:
        return 1 if self.fails else None

    def terminate(self) -> None:
        pass


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out: list[str] = []
    monkeypatch.setattr(vipranges, "free_vip_range", lambda seed: RANGE)
    monkeypatch.setattr(vipranges, "release", out.append)
    monkeypatch.setattr(dev.subprocess, "Popen", Supervisor)
    return out


def test_the_supervisor_gets_the_range_claimed_here(tmp_path: Path, released: list[str]) -> None:
    Supervisor.fails = False
    result = CliRunner().invoke(dev.dev, ["--detach", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    args = Supervisor.args
    assert args[args.index("--vip-range") + 1] == RANGE
    assert released == []  # the supervisor's now: it gives it back when it stops


def test_a_supervisor_that_exits_at_once_leaves_no_range(tmp_path: Path, released: list[str]) -> None:
    Supervisor.fails = True
    result = CliRunner().invoke(dev.dev, ["--detach", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code != 0 and "did not start" in result.output
    assert released == [RANGE]


@pytest.mark.parametrize(
    ("value", "says"),
    [("nope", "not an IPv4 network"), ("10.212.7.0/30", "/8 to /26"), ("10.212.7.1/24", "host")],
)
def test_a_bad_vip_range_is_refused_before_anything_starts(
    tmp_path: Path, released: list[str], value: str, says: str
) -> None:
    result = CliRunner().invoke(dev.dev, ["--vip-range", value, "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and says in result.output, result.output
    assert not (tmp_path / "d").exists()
