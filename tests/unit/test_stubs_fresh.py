"""The checked-in gRPC stubs in node/pb are what protoc makes of proto/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.pb import generate

REPO = Path(__file__).resolve().parents[2]


def on_disk() -> dict[str, str]:
    return {p.name: p.read_text() for p in generate.OUT_DIR.glob("*_pb2*.py*")}


def test_generate_check_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node.pb.generate", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rendered_stubs_equal_the_files_and_an_edit_is_noticed() -> None:
    fresh = generate.render()
    assert set(fresh) == {
        f"{m}{ext}"
        for m in ("api", "jobs", "peer", "pools", "secrets", "volumes")
        for ext in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    }
    assert fresh == on_disk()
    assert "from node.pb import api_pb2" in fresh["api_pb2_grpc.py"]
    assert "from shoal.v1 import" not in "".join(fresh.values())

    edited = dict(fresh)
    edited["api_pb2_grpc.py"] = edited["api_pb2_grpc.py"].replace(
        "from node.pb import", "from shoal.v1 import", 1
    )
    assert edited != on_disk()
    stale = {name for name, _ in set(edited.items()) ^ set(on_disk().items())}
    assert stale == {"api_pb2_grpc.py"}, "the check's comparison names exactly the edited stub"


def test_check_fails_when_a_stub_is_stale(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = generate.render()
    monkeypatch.setattr(
        generate, "render", lambda: {**fresh, "peer_pb2.pyi": fresh["peer_pb2.pyi"] + "# edit\n"}
    )
    assert generate.main(["--check"]) == 1
    assert "stale stubs in node/pb: peer_pb2.pyi" in capsys.readouterr().out
    assert on_disk() == fresh, "--check writes nothing"
