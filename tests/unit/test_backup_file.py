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


def test_a_file_planted_under_the_old_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    """The temporary name was `.<name>.partial`, opened without O_EXCL: a symlink left
    there by another user in a shared directory got the snapshot (sealed CA key, token
    hashes) written into its target."""
    target = tmp_path / "theirs"
    target.write_bytes(b"untouched")
    (tmp_path / ".b.db.partial").symlink_to(target)
    assert backup.write(snapshot(b"x" * 100), tmp_path / "b.db") == 100
    assert target.read_bytes() == b"untouched"
    assert (tmp_path / "b.db").stat().st_mode & 0o777 == 0o600


def test_the_default_cluster_token_is_the_files_own_whatever_its_times(tmp_path: Path) -> None:
    """Every member must restore with the same token; it was the file's mtime, which a copy
    (scp, cp, a download) changes: the members then refused each other."""
    import os

    from click.testing import CliRunner

    from node.cli.main import cli

    one, two = tmp_path / "one.db", tmp_path / "two.db"
    backup.write(snapshot(b"state" * 100), one)
    two.write_bytes(one.read_bytes())
    os.utime(two, (1_000_000, 1_000_000))
    assert (
        backup.fingerprint(one) == backup.fingerprint(two) == hashlib.sha256(b"state" * 100).hexdigest()[:16]
    )
    seen: list[list[str]] = []
    original = backup.restore
    backup.restore = lambda args, data_dir: seen.append(list(args))  # type: ignore[assignment]
    try:
        for i, f in enumerate((one, two)):
            runner = CliRunner()
            result = runner.invoke(
                cli,
                ["cluster", "restore", str(f), "--data-dir", str(tmp_path / f"d{i}"), "--name", f"m{i}",
                 "--peer-url", f"https://10.0.0.{i}:2380"],
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            assert "valid again" in result.output
    finally:
        backup.restore = original  # type: ignore[assignment]
    tokens = [args[args.index("--initial-cluster-token") + 1] for args in seen]
    assert tokens[0] == tokens[1] == f"shoal-restored-{backup.fingerprint(one)}"
