"""The agent's secrets folder (`node.agent.secretfiles`) under a world-writable /dev/shm:
a level a local user made or swapped is refused, and nothing outside it is touched."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from node.agent import secretfiles
from node.agent.secretfiles import SecretFiles, default_root
from node.model.keys import Keys
from node.runtime.base import EngineError
from node.store.memory import MemoryStore

OTHER_UID = 4242  # the tests run as root: a level chowned to it is a local user's


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /dev/shm: mode 1777, root's."""
    shm = tmp_path / "shm"
    shm.mkdir()
    shm.chmod(0o1777)
    monkeypatch.setattr(secretfiles, "SHM", shm)
    return shm


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    (victim / "task-gone").mkdir(parents=True)
    (victim / "task-gone" / "data").write_bytes(b"precious")
    victim.chmod(0o755)
    return victim


def files_at(root: Path) -> SecretFiles:
    return SecretFiles(MemoryStore(), Keys(), root)


def untouched(victim: Path) -> bool:
    return (
        (victim / "task-gone" / "data").read_bytes() == b"precious"
        and sorted(p.name for p in victim.rglob("*")) == ["data", "task-gone"]
        and victim.stat().st_mode & 0o777 == 0o755
    )


def test_a_symlinked_node_folder_is_refused_and_its_target_is_untouched(
    shm: Path, victim: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A local user made /dev/shm/shoal/<cluster>/<node> a symlink to any directory: the
    root daemon's sweep deleted that directory's entries on every pass, and the next
    secret write chmodded it 0700 and put the secret there."""
    root = default_root("c1", "n1")
    root.parent.mkdir(parents=True, mode=0o700)
    root.symlink_to(victim)
    files = files_at(root)
    with caplog.at_level(logging.ERROR, logger=secretfiles.__name__):
        files.sweep({"task-live"})
    assert untouched(victim)
    assert "symbolic link" in caplog.text and str(root) in caplog.text
    with pytest.raises(EngineError, match="symbolic link") as raised:
        files._write(root / "t1" / "secrets", "db_pw", b"s3cret", 0o400)
    assert str(root) in str(raised.value) and "remove it" in str(raised.value)
    assert untouched(victim)


@pytest.mark.parametrize("owner", [OTHER_UID, None], ids=["foreign-owned", "ours-but-777"])
def test_a_cluster_folder_others_can_write_is_refused_and_nothing_under_it_is_touched(
    shm: Path, owner: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A local user pre-made /dev/shm/shoal/<cluster> (mode 777): they could swap what is
    under it (the node folder for a symlink, a secret file a restarted task re-mounts),
    and the daemon used it as its own, chmodding what it found."""
    root = default_root("c1", "n1")
    cluster = root.parent
    (root / "task-gone").mkdir(parents=True)
    (root / "t1" / "secrets").mkdir(parents=True)
    (root / "t1" / "secrets" / "db_pw").write_bytes(b"planted")
    cluster.chmod(0o777)
    if owner is not None:
        os.chown(cluster, owner, owner)
    files = files_at(root)
    with caplog.at_level(logging.ERROR, logger=secretfiles.__name__):
        files.sweep(set())
    assert (root / "task-gone").is_dir(), "swept under a folder others can write"
    assert str(cluster) in caplog.text
    with pytest.raises(EngineError, match=str(cluster)):
        files._write(root / "t2" / "secrets", "db_pw", b"s3cret", 0o400)
    assert not (root / "t2").exists()
    assert cluster.stat().st_mode & 0o777 == 0o777, "chmodded a folder not proven ours"


async def test_a_restart_does_not_mount_a_file_under_a_folder_others_control(shm: Path) -> None:
    """A restart of a task mounts the files its first start wrote; under a folder a local
    user owns, the file they put there was mounted as the task's secret."""
    root = default_root("c1", "n1")
    secrets = root / "t1" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "db_pw").write_bytes(b"planted")
    os.chown(root.parent, OTHER_UID, OTHER_UID)

    async def read() -> bytes:
        return b"from etcd"

    with pytest.raises(EngineError, match="owned by uid 4242"):
        await files_at(root)._file(secrets, "db_pw", 0o400, read)


def test_folders_an_older_daemon_left_readable_are_tightened_and_used(shm: Path) -> None:
    """An older daemon left /dev/shm/shoal and /dev/shm/shoal/<cluster> 0755 (its own):
    others could not write them, so they are made 0700 and used, not refused."""
    root = default_root("c1", "n1")
    root.mkdir(parents=True, mode=0o700)
    for level in (root.parent, root.parent.parent):
        level.chmod(0o755)
    files = files_at(root)
    path = files._write(root / "t1" / "secrets", "db_pw", b"s3cret", 0o400)
    assert path.read_bytes() == b"s3cret" and path.stat().st_mode & 0o777 == 0o400
    for level in (shm / "shoal", root.parent, root, root / "t1", root / "t1" / "secrets"):
        assert level.stat().st_mode & 0o777 == 0o700, level
    files.sweep(set())
    assert list(root.iterdir()) == []
