"""The store's vocabulary and Protocol; no etcd import here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

MAX_TXN_OPS = 100  # etcd's limit is 128 per branch; stay well below with the compares
ETCD_TXN_LIMIT = 128  # etcd's own (--max-txn-ops): a transaction past it is refused outright
# etcd's default --max-request-bytes (1.5 MiB): a bigger write is refused whatever is retried.
# Checked on the keys and values a write carries (etcd counts its encoded request, a little more).
MAX_REQUEST_BYTES = 1536 * 1024


class StoreError(Exception):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """etcd cannot be reached (or has no quorum); the message names the endpoints."""


class TooLarge(StoreError):
    """A write bigger than etcd takes in one request: not an outage, never retried.
    `size` is None when etcd itself refused it (its limit may be set lower)."""

    def __init__(self, size: int | None, limit: int = MAX_REQUEST_BYTES) -> None:
        if size is None:
            what = f"etcd refused the write as too large (--max-request-bytes, by default {limit:,} bytes)"
        else:
            what = (
                f"the write is {size:,} bytes, {size - limit:,} more than etcd takes in one request "
                f"({limit:,} bytes, its --max-request-bytes)"
            )
        super().__init__(what)
        self.size, self.limit = size, limit


class Fenced(StoreError):
    """A leader write was refused: the leader key's epoch is no longer ours."""


class Compacted(StoreError):
    """A watch asked for history that etcd has compacted away; re-list and watch again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision {revision} is compacted")
        self.revision = revision


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    """`key`; every key under it with `prefix`; every key in [key, end) with `end`."""

    key: str
    prefix: bool = False
    end: str = ""


@dataclass(frozen=True)
class Compare:
    """`target` of `key` `op` `value`; a missing key has create=mod=version=0."""

    key: str
    target: Literal["create", "mod", "version", "value"]
    op: Literal["==", "!=", "<", ">"]
    value: int | bytes


Op = Put | Delete


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KV  # for a delete: key and mod_revision only


@dataclass(frozen=True)
class WatchBatch:
    revision: int  # the mod revision of the last event in the batch (never a response header's)
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True)
class MemberStatus:
    """One etcd member's backend: its file size and the bytes in use (after compaction)."""

    endpoint: str
    db_size: int
    db_size_in_use: int
    revision: int = 0


def request_bytes(compares: Sequence[Compare] = (), *branches: Sequence[Op]) -> int:
    """The key and value bytes one write carries (what etcd's request limit counts, nearly)."""
    size = sum(len(c.key.encode()) + (len(c.value) if isinstance(c.value, bytes) else 8) for c in compares)
    for ops in branches:
        for op in ops:
            size += len(op.key.encode()) + (len(op.value) if isinstance(op, Put) else len(op.end.encode()))
    return size


def check_size(compares: Sequence[Compare] = (), *branches: Sequence[Op]) -> None:
    """Raise `TooLarge` for a write etcd would refuse for its size."""
    if (size := request_bytes(compares, *branches)) > MAX_REQUEST_BYTES:
        raise TooLarge(size)


def fence(leader_key: str, epoch: int) -> Compare:
    """The comparison every leader write carries: the leader key was created at `epoch`."""
    return Compare(leader_key, "create", "==", epoch)


class Store(Protocol):
    endpoints: str

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self, timeout: float = 3.0) -> None: ...
    async def get(self, key: str) -> KV | None: ...
    async def range(self, prefix: str) -> tuple[list[KV], int]: ...
    async def put(self, key: str, value: bytes, lease: int = 0) -> int: ...
    async def delete(self, key: str, prefix: bool = False) -> int: ...
    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], else_ops: Sequence[Op] = ()
    ) -> TxnResult: ...
    async def grant(self, ttl: int) -> int: ...
    async def keepalive(self, lease: int) -> int: ...
    async def revoke(self, lease: int) -> None: ...
    async def compact(self, revision: int) -> None: ...
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]: ...
    def snapshot(self) -> AsyncIterator[bytes]: ...
