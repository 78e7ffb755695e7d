"""`shoal cluster backup` and `restore`: etcd's snapshot to a file, and back onto a fresh etcd.

A backup is etcd's own snapshot (`Maintenance.Snapshot`), streamed by any node to an
admin: the whole cluster state at one revision, secrets still sealed (they are sealed
in etcd). Its last 32 bytes are the SHA-256 of the rest; the file is written beside
its target, checked, synced and then renamed, so a cut-off stream never leaves a file
that looks like a backup. Mode 0600: it holds token hashes and sealed secrets.

Restore is etcd's `etcdctl snapshot restore` into an empty data dir, once per member
(same snapshot, each member's own name and peer URL), before that etcd starts.
The snapshot keeps revisions and leases, so the daemons reconnect with their leases,
their mirrors list again (etcd is behind what they saw: `EtcdStore.watch`), and the
agents re-adopt their running containers: nothing restarts. See docs/operations.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

HASH_SIZE = 32  # SHA-256, appended by etcd to every snapshot stream


class BackupError(Exception):
    """A backup that cannot be written, read or restored; the message says what to fix."""


def verify(path: Path) -> int:
    """The snapshot's size without its hash; raises BackupError unless the hash matches."""
    try:
        size = path.stat().st_size
        if size <= HASH_SIZE:
            raise BackupError(f"{path} is not an etcd snapshot ({size} bytes)")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            left = size - HASH_SIZE
            while left:
                block = f.read(min(left, 1 << 20))
                if not block:
                    raise BackupError(f"{path} ended while being read")
                digest.update(block)
                left -= len(block)
            trailer = f.read(HASH_SIZE)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    if digest.digest() != trailer:
        raise BackupError(f"{path} is damaged or not an etcd snapshot: its SHA-256 does not match")
    return size - HASH_SIZE


def fingerprint(path: Path) -> str:
    """The first 16 hex digits of the snapshot's own SHA-256 (its trailer): the same for
    every copy of the file, whatever the copy did to its times."""
    try:
        with path.open("rb") as f:
            f.seek(-HASH_SIZE, os.SEEK_END)
            return f.read(HASH_SIZE).hex()[:16]
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None


def write(chunks: Iterable[bytes], path: Path) -> int:
    """Write the streamed snapshot to `path` (replaced only once complete and checked). The
    temporary file beside it is made new (`mkstemp`: O_EXCL, 0600), so a file or symlink
    someone else left under a guessable name is never written through."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise BackupError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        size = verify(partial)
        os.replace(partial, path)
        _sync_dir(path.parent)  # the rename itself survives a power cut
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_args(
    snapshot: Path, data_dir: Path, name: str, peer_url: str, initial_cluster: str, token: str
) -> list[str]:
    """etcdctl's command line restoring `snapshot` as member `name` into `data_dir`."""
    return [
        "etcdctl", "snapshot", "restore", str(snapshot),
        "--name", name,
        "--data-dir", str(data_dir),
        "--initial-cluster", initial_cluster or f"{name}={peer_url}",
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster-token", token,
    ]  # fmt: skip


def restore(args: Sequence[str], data_dir: Path) -> None:
    """Run the restore; refuses a data dir that holds anything (never over a live etcd)."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(
            f"{data_dir} is not empty: restore into a new, empty data dir (stop etcd and move "
            "the old one away first)"
        )
    if shutil.which(args[0]) is None:
        raise BackupError("etcdctl is not installed: apt-get install etcd-client (deploy/install.sh does)")
    done = subprocess.run(list(args), capture_output=True, text=True, check=False, env={
        **os.environ, "ETCDCTL_API": "3"})  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise BackupError(f"etcdctl snapshot restore failed: {lines[-1] if lines else done.returncode}")
