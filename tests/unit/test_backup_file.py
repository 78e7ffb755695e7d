"""`shoal cluster backup/restore`'s file handling: the hash trailer, the atomic write,
the refusals. The snapshot and etcdctl themselves are tested on a real etcd
(tests/integration/test_backup.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cli import backup


def snapshot(body: bytes) -> list[bytes]:
    data = body + hashlib.sha256(body).digest()
    return [data[i : i + 7] for i in range(0, len(data), 7)]  # chunks that cut the trailer too


def test_a_whole_snapshot_is_written_checked_and_private(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    assert backup.write(snapshot(b"x" * 1000), path) == 1000
    assert backup.verify(path) == 1000
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["b.db"]


def test_a_damaged_stream_leaves_no_file_and_keeps_the_old_backup(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    backup.write(snapshot(b"old"), path)
    chunks = snapshot(b"y" * 100)
    chunks[3] = b"z" * len(chunks[3])
    with pytest.raises(backup.BackupError, match="SHA-256 does not match"):
        backup.write(chunks, path)
    assert backup.verify(path) == 3, "the old backup is still there, whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db"]


def test_a_stream_cut_off_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    def cut() -> Iterator[bytes]:
        yield b"some bytes"
        raise ConnectionError("the node went away")

    with pytest.raises(ConnectionError):
        backup.write(cut(), tmp_path / "b.db")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"short", b"n" * 64])
def test_what_is_not_a_snapshot_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(backup.BackupError, match="not an etcd snapshot"):
        backup.verify(path)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(backup.BackupError, match="cannot read"):
        backup.verify(tmp_path / "nope")


def test_restore_refuses_a_data_dir_that_holds_anything(tmp_path: Path) -> None:
    (tmp_path / "member").mkdir(parents=True)
    args = backup.restore_args(tmp_path / "b.db", tmp_path, "m1", "https://10.0.0.1:2380", "", "t")
    with pytest.raises(backup.BackupError, match="not empty"):
        backup.restore(args, tmp_path)
    assert (tmp_path / "member").is_dir(), "nothing removed"


def test_restore_args_name_the_member_and_default_to_a_one_member_cluster(tmp_path: Path) -> None:
    args = backup.restore_args(Path("b.db"), tmp_path / "d", "m1", "https://10.0.0.1:2380", "", "tok")
    assert args[:4] == ["etcdctl", "snapshot", "restore", "b.db"]
    flags = dict(zip(args[4::2], args[5::2], strict=True))
    assert flags == {
        "--name": "m1",
        "--data-dir": str(tmp_path / "d"),
        "--initial-cluster": "m1=https://10.0.0.1:2380",
        "--initial-advertise-peer-urls": "https://10.0.0.1:2380",
        "--initial-cluster-token": "tok",
    }
