"""`shoal pool apply -f`: a YAML value JSON has no form for is refused at its field, and
nothing is sent (against the fake client API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import node.cli.pools as cli_pools
from tests.unit.fake_shoal import fails

pytestmark = pytest.mark.usefixtures("credentials")

POOLS = """\
pools:
  burst:
    provider: {command: [true]}
    max: 2
    node:
      cpu: 2
      memory: 4Gi
      labels:
        tier: {value}
"""


@pytest.mark.parametrize(
    ("value", "kind"),
    [("2024-01-01", "date"), ("2024-01-01T10:00:00Z", "date"), ("!!binary aGVsbG8=", "bytes")],
)
def test_a_yaml_value_json_cannot_hold_is_an_error_at_its_field(
    addr: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, kind: str
) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(cli_pools, "apply_pools", lambda client, doc: sent.append(doc))
    path = tmp_path / "pools.yaml"
    path.write_text(POOLS.replace("{value}", value))
    error = fails(addr, "pool", "apply", "-f", str(path))
    assert error.startswith(f"{path}:9:15: pools.burst.node.labels.tier: a value must be a string")
    assert f"read as a YAML {kind}: quote it" in error
    assert sent == []  # nothing applied


def test_a_date_as_a_key_is_an_error_too(addr: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(cli_pools, "apply_pools", lambda client, doc: sent.append(doc))
    path = tmp_path / "pools.yaml"
    path.write_text("pools:\n  2024-01-01: {}\n")
    error = fails(addr, "pool", "apply", "-f", str(path))
    assert error.startswith(f"{path}:2:3: pools: a key must be a string") and "'2024-01-01'" in error
    assert sent == []


def test_plain_values_pass_through() -> None:
    from node.model.spec import load_yaml

    doc = cli_pools.plain(load_yaml(POOLS.replace("{value}", "'2024-01-01'"), "f"), "f")
    assert doc["pools"]["burst"]["node"] == {"cpu": 2, "memory": "4Gi", "labels": {"tier": "2024-01-01"}}
    assert doc["pools"]["burst"]["provider"] == {"command": [True]}
    assert type(doc["pools"]["burst"]["node"]["cpu"]) is int
