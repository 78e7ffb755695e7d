"""`node.proxy.migrate.ensure` on a file standing for the sysctl."""

from __future__ import annotations

from pathlib import Path

from node.proxy import migrate


def test_sets_it_when_off(tmp_path: Path) -> None:
    knob = tmp_path / "tcp_migrate_req"
    knob.write_text("0\n")
    assert migrate.ensure(knob) == ""
    assert knob.read_text() == "1\n"


def test_leaves_it_alone_when_on(tmp_path: Path) -> None:
    knob = tmp_path / "tcp_migrate_req"
    knob.write_text("1")  # without the newline a write would add
    assert migrate.ensure(knob) == ""
    assert knob.read_text() == "1"


def test_an_old_kernel_is_named(tmp_path: Path) -> None:
    why = migrate.ensure(tmp_path / "missing")
    assert "does not exist" in why and "5.14" in why
    assert "sysctl -w net.ipv4.tcp_migrate_req=1" in migrate.warning(why)


def test_a_refused_write_says_why(tmp_path: Path) -> None:
    knob = tmp_path / "tcp_migrate_req"
    knob.mkdir()  # reading or writing a directory fails for root too
    why = migrate.ensure(knob)
    assert why.startswith(f"cannot set {knob}")
