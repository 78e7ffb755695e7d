"""The files a task's container starts with: its secrets and configs, and its opened
`secret_env` (issue 13).

`prepare(task, spec, container)` returns the container to run with:
- each secret of `spec.secrets` opened (`node.security.sealing`) and written to
  `<root>/<task-id>/secrets/<target>` (mode from the spec, 0400 by default; owned by the
  spec's numeric `uid`/`gid` when given, else the daemon's user), bind-mounted read-only
  at `/run/secrets/<target>`;
- each config of `spec.configs` written to `<root>/<task-id>/configs/<i>` (0444 by
  default, owned as a secret is), bind-mounted read-only at its `target`;
- each sealed `secret_env` value opened (values stored before sealing existed are
  taken as they are).

`root` is on tmpfs: `/dev/shm/shoal/<cluster>/<node>` by default (every Linux host has
`/dev/shm` mounted tmpfs, mode 1777, no privilege or mount needed; dockerd on the same
host sees it), so a secret's clear text never reaches a disk, and it is gone at reboot.
Directories are 0700, owned by the daemon's user. /dev/shm is writable by every local
user and the path is guessable, so each level below it is made here and opened one at a
time (`_opened`): a level that is a symbolic link, another user's, or writable by group
or other is refused with an error naming it (a local user could redirect the root
daemon's removals and writes, or swap a file a restarted task mounts); removals and
writes go through the opened, checked directory. `sweep(live)` removes the directories
of tasks no longer assigned here: a replica's files go when its task goes (a container
still draining keeps its bind-mounted files open until it stops).

A secret or config that is missing or does not open fails the start with a message
naming it (`EngineError`: the agent marks the task failed and retries with back-off).
The value is read from etcd at a task's first start: the latest (one updated since its
spec was written is logged, and used: etcd keeps only the latest); a restart of the same task mounts
the files that start wrote (`_file`): a task's spec binds the objects' revisions, so they
hold its version's value, and a crashed replica restarts while etcd does not answer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import stat
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import replace
from pathlib import Path

from node.model.domain import Assignment
from node.model.images import ImageRefError, credentials_for, login_secret_name, parse_image
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.runtime.base import ContainerSpec, EngineError, Mount
from node.security.objects import ObjectRecord
from node.security.sealing import Sealer, SealError, is_sealed, secret_env_ad
from node.store import Store

SHM = Path("/dev/shm")
log = logging.getLogger(__name__)


def default_root(cluster: str, node: str) -> Path:
    return SHM / "shoal" / cluster / node


class UnsafeFolder(Exception):
    """A level of the secrets folder that others could have made or could change."""


class SecretFiles:
    def __init__(self, store: Store, keys: Keys, root: Path, sealer: Sealer | None = None) -> None:
        self.store = store
        self.keys = keys
        self.root = root
        self.sealer = sealer  # the daemon sets it (the cluster key, from the CA passphrase)
        # The directory trusted as it is (/dev/shm: root's, sticky); every level below is ours.
        self.base = SHM if root.is_relative_to(SHM) else root.parent

    async def prepare(self, task: Assignment, spec: ServiceSpec, container: ContainerSpec) -> ContainerSpec:
        env = dict(container.env)
        for var, value in (spec.secret_env or {}).items():
            if is_sealed(value):
                env[var] = self._open(value, secret_env_ad(task.service, var), f"secret_env {var}").decode()
        if not spec.secrets and not spec.configs:
            return replace(container, env=env)
        mounts = []
        base = self.root / task.task_id
        for ref in spec.secrets or []:
            name = ref.target or ref.source
            read = functools.partial(self._value, "secret", ref.source, ref.revision)
            owner = (_id(ref.uid), _id(ref.gid))
            path = await self._file(base / "secrets", name, int(ref.mode, 8), read, owner)
            mounts.append(Mount(str(path), f"/run/secrets/{name}"))
        for i, cref in enumerate(spec.configs or []):
            read = functools.partial(self._value, "config", cref.source, cref.revision)
            owner = (_id(cref.uid), _id(cref.gid))
            path = await self._file(base / "configs", str(i), int(cref.mode, 8), read, owner)
            mounts.append(Mount(str(path), cref.target))
        return replace(container, env=env, mounts=(*container.mounts, *mounts))

    async def pull_auth(self, spec: ServiceSpec) -> tuple[str, str] | None:
        """The (user, password) `spec.image_pull_secret` (else the secret of `shoal registry
        login` for the host) holds for its image's registry host, and for no other
        (`node.model.images.credentials_for`); None without either, or without a registry in
        the image. Read at each start, so an updated secret applies at once."""
        try:
            host = parse_image(spec.image).registry
        except ImageRefError:
            return None  # the pull says what is wrong with the reference
        if not host:
            return None
        name = spec.image_pull_secret or login_secret_name(host)
        if not spec.image_pull_secret and await self.store.get(self.keys.object("secret", name)) is None:
            return None  # no pull secret, and no `shoal registry login` for the host: none
        try:
            return credentials_for(await self._value("secret", name), host)
        except ImageRefError as exc:
            raise EngineError(f"secret '{name}' (registry credentials): {exc}") from None

    def sweep(self, live: Collection[str]) -> None:
        """Remove the files of every task not in `live` (task ids), through the opened,
        checked root (never a path a local user could have swapped for a link)."""
        try:
            with self._opened(self.root, create=False) as fd:
                if fd is None:
                    return
                for name in os.listdir(fd):
                    if name in live:
                        continue
                    if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        shutil.rmtree(name, dir_fd=fd, ignore_errors=True)
                    else:
                        os.unlink(name, dir_fd=fd)
        except UnsafeFolder as exc:  # said at each pass until someone removes it
            log.error("not removing files of tasks gone: %s", exc)
        except OSError as exc:  # not readable: the files stay until it is (a pass goes on)
            log.warning("cannot list %s to remove files of tasks gone: %s", self.root, exc.strerror or exc)

    @contextlib.contextmanager
    def _opened(self, directory: Path, create: bool) -> Iterator[int | None]:
        """`directory` (under `self.base`) opened level by level, each made here if missing
        (`create`, else None is given) and checked (`_check`); the fd is closed after."""
        fds = [os.open(self.base, os.O_RDONLY | os.O_DIRECTORY)]
        path = self.base
        try:
            for part in directory.relative_to(self.base).parts:
                path = path / part
                fds.append(_level(fds[-1], part, create, path))
                if fds[-1] < 0:
                    yield None
                    return
            yield fds[-1]
        finally:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)

    def _open(self, sealed: str, ad: str, what: str) -> bytes:
        if self.sealer is None:
            raise EngineError(f"{what}: this node has no cluster key (tls/ca.pass) to open it")
        try:
            return self.sealer.open(sealed, ad)
        except SealError as exc:
            raise EngineError(f"{what}: {exc}") from None

    async def _value(self, kind: str, name: str, revision: str | None = None) -> bytes:
        """The value of `name`: its latest, the only one etcd holds. A task whose spec
        names an older `revision` is of a version its update has already replaced (the
        update rolled every user in its transaction); it starts with the latest value all
        the same, logged, rather than stay down (a node lost mid-rollout moves such tasks)."""
        kv = await self.store.get(self.keys.object(kind, name))
        if kv is None:
            raise EngineError(f"{kind} '{name}' does not exist (removed?): `shoal {kind} ls` lists them")
        try:
            record = ObjectRecord.from_json(kv.value)
        except ValueError as exc:  # this task's start fails, not the pass of every task here
            log.warning("%s '%s' cannot be read: %s", kind, name, exc)
            raise EngineError(f"{kind} '{name}' cannot be read from etcd: {exc}") from None
        if revision is not None and record.revision != revision:  # started with the value there is
            log.warning(
                "%s '%s': this task's spec names revision %s, replaced since by %s (etcd keeps only the "
                "latest); it starts with %s, as the service's newer version does",
                kind, name, revision, record.revision, record.revision,
            )  # fmt: skip
        if kind == "config":
            return record.value(None)
        return self._open(record.data, f"secret/{name}", f"secret '{name}'")

    async def _file(
        self,
        directory: Path,
        name: str,
        mode: int,
        read: Callable[[], Awaitable[bytes]],
        owner: tuple[int, int] = (-1, -1),
    ) -> Path:
        """One secret's or config's file for this task: the one an earlier start of the same
        task wrote (a restart after a crash), as it is, else read from etcd and written.
        A task's spec binds the objects' revisions (an update of one rolls new tasks), so
        the file holds what etcd would give; and a crashed replica restarts while etcd does
        not answer, as one without secrets does (docs/reliability: etcd away, a replica
        crashes). Written atomically (a temporary, then a rename): a file there is whole."""
        path = directory / name
        try:
            with self._opened(directory, create=False) as fd:
                if fd is not None and stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    return path
        except UnsafeFolder as exc:
            raise EngineError(str(exc)) from None
        except OSError:
            pass  # not there (or unreadable: the write says why)
        return self._write(directory, name, await read(), mode, owner)

    def _write(
        self, directory: Path, name: str, value: bytes, mode: int, owner: tuple[int, int] = (-1, -1)
    ) -> Path:
        """Write one file (atomically: a temporary, then a rename). A file system that
        refuses (tmpfs full, a read-only /dev/shm) is an EngineError: the start fails and
        is tried again with back-off, as any start, where an OSError ended the agent."""
        try:
            return self._write_file(directory, name, value, mode, owner)
        except UnsafeFolder as exc:
            raise EngineError(str(exc)) from None
        except OSError as exc:
            raise EngineError(f"cannot write {directory / name}: {exc.strerror or exc}") from None

    def _write_file(
        self, directory: Path, name: str, value: bytes, mode: int, owner: tuple[int, int]
    ) -> Path:
        tmp = f".{name}.tmp"
        with self._opened(directory, create=True) as fd:
            assert fd is not None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with os.fdopen(os.open(tmp, flags, 0o600, dir_fd=fd), "wb") as f:
                f.write(value)
                if owner != (-1, -1):  # before the mode: a chown may clear set-id bits
                    _chown(f.fileno(), owner, directory / name)
                os.fchmod(f.fileno(), mode)
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        return directory / name


def _id(value: str | None) -> int:
    """A spec's uid or gid as `os.fchown` takes it: -1 (left as made) when not given."""
    return -1 if value is None else int(value)


def _chown(fd: int, owner: tuple[int, int], path: Path) -> None:
    try:
        os.fchown(fd, *owner)
    except PermissionError:
        raise EngineError(
            f"cannot give {path} to uid {owner[0]} gid {owner[1]} (the spec's uid/gid): only a daemon "
            "running as root can; run it as root or leave uid and gid out"
        ) from None


def _level(parent: int, name: str, create: bool, path: Path) -> int:
    """The directory `name` in `parent` opened (made 0700 if missing and `create`; -1 if
    missing and not), if it is safe to use as ours: not a link, the daemon's user's, and
    not writable by group or other. Read bits an older daemon left (0755) are taken away."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
    try:
        seen = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        if create:
            raise
        return -1
    fix = f"remove it (rm -rf '{path}') if nothing of yours is there; the daemon makes it again"
    if stat.S_ISLNK(seen.st_mode):
        raise UnsafeFolder(f"{path} is a symbolic link, not a folder this daemon made: {fix}")
    if not stat.S_ISDIR(seen.st_mode):
        raise NotADirectoryError(20, "not a directory", str(path))  # in the way: an OSError
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
            raise UnsafeFolder(f"{path} changed while it was opened: {fix}")
        if st.st_uid != os.geteuid():
            raise UnsafeFolder(
                f"{path} is owned by uid {st.st_uid}, not this daemon's ({os.geteuid()}): {fix}"
            )
        if st.st_mode & 0o022:
            raise UnsafeFolder(f"{path} is writable by others (mode {st.st_mode & 0o7777:o}): {fix}")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd
