"""`Store` on a real etcd (v3 API) through etcd3aio.

Guarantees: every unary call has a deadline (`timeout`), so an unreachable etcd
gives `StoreUnavailable` within seconds instead of a hang; a watch that reaches
compacted history raises `Compacted` (etcd3aio would silently skip ahead) so the
caller re-lists; a dropped watch is resumed here from the last event it delivered
(never from a response header's revision: that skips events, see `watch`).
With `EtcdTls`, the connection is TLS, with a client certificate when etcd asks
for one (`--client-cert-auth`); `node.security.etcd_tls` reads one from files.
The channel (its options, target, TLS name, and host names looked up again) is
`node.store.etcd_channel`'s; with TLS and several endpoints, `ping` (at start-up) names
a member whose certificate lacks the one name checked, instead of a bare "unavailable".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import grpc
from etcd3aio import EtcdConnectionError, EtcdError, EtcdTransientError, prefix_range_end
from etcd3aio._protobuf import Compare as PbCompare
from etcd3aio._protobuf import (
    DefragmentRequest,
    MaintenanceStub,
    StatusRequest,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)
from etcd3aio.kv import KVService

from node.store.base import (
    KV,
    Compacted,
    Compare,
    Delete,
    MemberStatus,
    Op,
    Put,
    StoreError,
    StoreUnavailable,
    TooLarge,
    TxnResult,
    WatchBatch,
    WatchEvent,
    check_size,
)
from node.store.etcd_channel import WRONG_NAME, EtcdChannel
from node.store.etcd_channel import EtcdTls as EtcdTls

log = logging.getLogger(__name__)

_OPS = {"==": PbCompare.EQUAL, "!=": PbCompare.NOT_EQUAL, "<": PbCompare.LESS, ">": PbCompare.GREATER}
_PUT, _DELETE = 0, 1  # mvccpb.Event.EventType
RANGE_PAGE = 10_000  # keys per page of a range
DEFRAG_TIMEOUT = 120.0  # s: a defragmentation blocks its member while it runs
SNAPSHOT_TIMEOUT = 600.0  # s: a whole snapshot stream (etcd's backend, at most a few GiB)
# Sent on every KV, lease and watch call: a member cut off from its peers then refuses the
# call (and cancels its watch streams) with UNAVAILABLE "no leader" instead of serving a
# stale view, or a watch that never sees another event (etcd's v3rpc interceptors).
REQUIRE_LEADER = ("hasleader", "true")
WATCH_BACKOFF, WATCH_MAX_BACKOFF = 0.1, 2.0  # s: before re-opening a dropped watch stream
# A drop, not a refusal. INTERNAL too ("Internal error from Core"): on a real etcd whose
# member had lost its leader, re-opened watch streams ended so, between "no leader" ones.
_WATCH_RESUMED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)
_OUTAGE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
)
_TOO_LARGE = ("request is too large", "larger than max")  # etcd's limit, and gRPC's on its receiving end
_REASONS = (
    ("Connection refused", "connection refused"),
    ("No route to host", "no route to host"),
    ("DNS resolution failed", "the host name does not resolve"),
    ("errors resolving", "the host name does not resolve"),  # gRPC's own resolver (a `dns:` target)
    ("no leader", "etcd has no leader (quorum lost?)"),
    ("CERTIFICATE_VERIFY_FAILED", "etcd's certificate is not signed by etcd_ca (or names another host)"),
    ("andshake", "the TLS handshake failed (check etcd_ca, etcd_cert and etcd_key)"),
    ("Socket closed", "etcd closed the connection (does it require TLS or a client certificate?)"),
    ("UNAVAILABLE", "unavailable"),
)


def _kv(pb: object) -> KV:
    return KV(
        key=pb.key.decode(),  # type: ignore[attr-defined]
        value=bytes(pb.value),  # type: ignore[attr-defined]
        create_revision=pb.create_revision,  # type: ignore[attr-defined]
        mod_revision=pb.mod_revision,  # type: ignore[attr-defined]
        version=pb.version,  # type: ignore[attr-defined]
        lease=pb.lease,  # type: ignore[attr-defined]
    )


def _compare(c: Compare) -> object:
    op = _OPS[c.op]
    if c.target == "create":
        return KVService.txn_compare_create_revision(c.key, int(c.value), result=op)
    if c.target == "mod":
        cmp = PbCompare(result=op, target=PbCompare.MOD, key=c.key.encode(), mod_revision=int(c.value))
        return cmp
    if c.target == "version":
        return KVService.txn_compare_version(c.key, int(c.value), result=op)
    value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
    return KVService.txn_compare_value(c.key, value, result=op)


def _op(op: Op) -> object:
    if isinstance(op, Put):
        return KVService.txn_op_put(op.key, op.value, lease=op.lease)
    if isinstance(op, Delete):
        end = prefix_range_end(op.key) if op.prefix else (op.end.encode() if op.end else None)
        return KVService.txn_op_delete(op.key, range_end=end)
    raise TypeError(f"not a store op: {op!r}")


class EtcdStore:
    def __init__(self, endpoints: Sequence[str], timeout: float = 5.0, tls: EtcdTls | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = ",".join(endpoints)
        self._endpoints = list(endpoints)
        self.timeout = timeout
        self._channel = EtcdChannel(endpoints, timeout, tls, on_new=self._services)
        self._client = self._channel.client

    async def connect(self) -> None:
        await self._channel.connect()
        self._services()

    def _services(self) -> None:
        """Take the client's services on its current channel (again when it changes)."""
        assert self._client.kv and self._client.lease and self._client.watch
        self._kvs, self._leases, self._watches = self._client.kv, self._client.lease, self._client.watch
        for service in (self._kvs, self._leases, self._watches):  # kept with any token etcd3aio set
            service._metadata = (*(m for m in service._metadata if m != REQUIRE_LEADER), REQUIRE_LEADER)
        assert self._client._channel is not None
        self._watch_stub = WatchStub(self._client._channel)  # our own resume: see `watch`

    async def close(self) -> None:
        await self._channel.close()

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        self._channel.look_again(failed=True)
        return StoreUnavailable(f"etcd unreachable at {self.endpoints}: {self._reason(exc)}")

    def _reason(self, exc: BaseException) -> str:
        text = str(exc)
        if isinstance(exc, grpc.aio.AioRpcError):  # its str() starts with a useless line
            text = f"{exc.code().name}: {exc.details()}"
        if WRONG_NAME in text:
            name = self._channel.checked_name or "its endpoint's address"
            return f"etcd's certificate does not hold {name!r}, the name it is checked for (etcd_server_name)"
        if isinstance(exc, TimeoutError) or "DEADLINE_EXCEEDED" in text:
            return f"no answer within {self.timeout:g}s"
        for needle, reason in _REASONS:
            if needle in text:
                return reason
        return text.split("\n")[0][:200] or type(exc).__name__

    def _error(self, exc: BaseException) -> StoreError:
        """An outage is `StoreUnavailable`; a write too large `TooLarge`; a request etcd
        refused otherwise a plain `StoreError`."""
        if isinstance(exc, grpc.aio.AioRpcError) and any(n in (exc.details() or "") for n in _TOO_LARGE):
            return TooLarge(None)
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() not in _OUTAGE:
            return StoreError(f"etcd at {self.endpoints} refused the request: {self._reason(exc)}")
        if isinstance(
            exc, (EtcdConnectionError, EtcdTransientError, TimeoutError, OSError, grpc.aio.AioRpcError)
        ):
            return self._unavailable(exc)
        return StoreError(f"etcd at {self.endpoints}: {self._reason(exc)}")

    async def _call(self, coro: object) -> object:
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives
        # as the answer does, and the caller's retry loop then never ends (a daemon that
        # does not stop on SIGTERM)
        self._channel.look_again(failed=False)
        try:
            async with asyncio.timeout(self.timeout):
                return await coro  # type: ignore[misc]
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
            raise self._error(exc) from exc

    async def ping(self, timeout: float = 3.0) -> None:
        """etcd answers; with TLS and several endpoints, every member that answers holds
        the name its certificate is checked for (else `StoreUnavailable` naming it)."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see _call
                await self._kvs.get("/__shoal_ping__", timeout=timeout)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc
        if self._channel.checked_name is not None and len(self._endpoints) > 1:
            wrong = await asyncio.gather(*(self._channel.wrong_name(e, timeout) for e in self._endpoints))
            members = [e for e, bad in zip(self._endpoints, wrong, strict=True) if bad]
            if members:
                raise StoreUnavailable(self._channel.name_hint(members))

    async def get(self, key: str) -> KV | None:
        resp = await self._call(self._kvs.get(key, timeout=self.timeout))
        kvs = resp.kvs  # type: ignore[attr-defined]
        return _kv(kvs[0]) if kvs else None

    async def range(self, prefix: str, revision: int = 0) -> tuple[list[KV], int]:
        """Every key under `prefix` at one revision (`revision`, or the current one), read
        in pages of `RANGE_PAGE` keys (100,000 tasks are ~30 MiB: more than a gRPC message
        may be, and a long stall for etcd)."""
        end = prefix_range_end(prefix)
        start: str | bytes = prefix
        out: list[KV] = []
        while True:
            resp = await self._call(
                self._kvs.get(start, range_end=end, revision=revision, limit=RANGE_PAGE, timeout=self.timeout)
            )
            revision = revision or int(resp.header.revision)  # type: ignore[attr-defined]
            out += [_kv(kv) for kv in resp.kvs]  # type: ignore[attr-defined]
            if not resp.more or not resp.kvs:  # type: ignore[attr-defined]
                return out, revision
            start = bytes(resp.kvs[-1].key) + b"\0"  # type: ignore[attr-defined]

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        check_size((), [Put(key, value)])
        resp = await self._call(self._kvs.put(key, value, lease=lease, timeout=self.timeout))
        return int(resp.header.revision)  # type: ignore[attr-defined]

    async def delete(self, key: str, prefix: bool = False) -> int:
        end = prefix_range_end(key) if prefix else None
        resp = await self._call(self._kvs.delete(key, range_end=end, timeout=self.timeout))
        return int(resp.deleted)  # type: ignore[attr-defined]

    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], else_ops: Sequence[Op] = ()
    ) -> TxnResult:
        check_size(compares, ops, else_ops)
        resp = await self._call(
            self._kvs.txn(
                [_compare(c) for c in compares],
                [_op(o) for o in ops],
                [_op(o) for o in else_ops],
                timeout=self.timeout,
                max_attempts=1,  # a txn is retried by its caller, who re-reads first
            )
        )
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))  # type: ignore[attr-defined]

    async def grant(self, ttl: int) -> int:
        resp = await self._call(self._leases.grant(ttl, timeout=self.timeout))
        return int(resp.ID)  # type: ignore[attr-defined]

    async def keepalive(self, lease: int) -> int:
        """Renew `lease` once; return the TTL etcd granted (0 or less: the lease is gone)."""
        call = self._leases.keep_alive(lease)
        try:
            async with asyncio.timeout(self.timeout):
                async for resp in call:
                    return int(resp.TTL)
            return 0
        except (grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc
        finally:
            call.cancel()

    async def revoke(self, lease: int) -> None:
        try:
            await self._call(self._leases.revoke(lease, timeout=self.timeout))
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.NOT_FOUND:
                return  # already expired or revoked
            raise

    async def compact(self, revision: int) -> None:
        await self._call(self._kvs.compact(revision, physical=True, timeout=self.timeout))

    async def member_status(self) -> list[MemberStatus]:
        """The database size of each configured endpoint (a member); unreachable ones left out."""
        out = []
        for endpoint in self.endpoints.split(","):
            channel = self._channel.member_channel(endpoint)
            try:
                resp = await MaintenanceStub(channel).Status(StatusRequest(), timeout=self.timeout)
                out.append(
                    MemberStatus(endpoint, int(resp.dbSize), int(resp.dbSizeInUse), int(resp.header.revision))
                )
            except grpc.aio.AioRpcError:
                continue
            finally:
                await channel.close()
        return out

    async def defragment(self, endpoint: str) -> None:
        """Defragment the member at `endpoint` (it answers nothing else meanwhile)."""
        channel = self._channel.member_channel(endpoint)
        try:
            await MaintenanceStub(channel).Defragment(
                DefragmentRequest(), timeout=max(self.timeout, DEFRAG_TIMEOUT)
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        finally:
            await channel.close()

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Batches of changes under `prefix` from `start_revision` on, forever.

        Raises `Compacted` when that history is gone, `StoreUnavailable` on a
        permanent error. A dropped stream is re-opened here (not by etcd3aio) from the
        mod revision of the last event *delivered* + 1: etcd stamps a "created" answer
        and each catch-up chunk with its current revision, so resuming from a header's
        revision (as etcd3aio does) silently skips the events not yet sent.
        A batch's `revision` is its last event's mod revision, for the same reason.
        An etcd restored from a backup (a new cluster id, or a revision behind the one
        delivered) raises `Compacted` too: the caller's view is stale, it lists again.
        A member that only lags (a resumed stream on a follower that has not applied the
        last revisions yet) answers behind too: a linearizable read then tells the two
        apart, and the stream is kept (etcd sends the events from `next_revision` on once
        the member has them) instead of a re-list, again and again while it lags.
        """
        next_revision = start_revision
        cluster = 0  # etcd's cluster id, from the first answer: a restore makes a new one
        backoff = WATCH_BACKOFF
        while True:
            stream = self._open_watch(prefix, next_revision)
            try:
                async for resp in stream:
                    if resp.compact_revision:
                        raise Compacted(int(resp.compact_revision))
                    if resp.canceled:
                        raise StoreUnavailable(
                            f"etcd at {self.endpoints} cancelled a watch: {resp.cancel_reason}"
                        )
                    backoff = WATCH_BACKOFF
                    if resp.created and next_revision == 0:  # "from now": now is the header's
                        next_revision = int(resp.header.revision) + 1
                    cluster = cluster or int(resp.header.cluster_id)
                    behind = resp.created and next_revision > int(resp.header.revision) + 1
                    if behind and int(resp.header.cluster_id) == cluster:
                        behind = await self._restored(prefix, next_revision - 1, int(resp.header.revision))
                    if int(resp.header.cluster_id) != cluster or behind:
                        # Another etcd cluster answers, or one behind what this watch has
                        # delivered: it was restored from a backup. Resuming would skip the
                        # writes made since at revisions already seen; the view is stale.
                        log.warning(
                            "watch %s: etcd changed under it (restored from a backup?): cluster "
                            "%x at revision %d, after %x at %d; listing again",
                            prefix, resp.header.cluster_id, resp.header.revision, cluster, next_revision - 1,
                        )  # fmt: skip
                        raise Compacted(int(resp.header.revision))
                    if not resp.events:
                        continue
                    events = tuple(
                        WatchEvent("put" if ev.type == _PUT else "delete", _kv(ev.kv)) for ev in resp.events
                    )
                    last = max(ev.kv.mod_revision for ev in events)
                    next_revision = last + 1
                    yield WatchBatch(last, events)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _WATCH_RESUMED:
                    raise self._unavailable(exc) from exc
                self._channel.look_again(failed=True)
                log.info("watch %s: %s; resuming from revision %d", prefix, self._reason(exc), next_revision)
            finally:
                stream.cancel()
            await asyncio.sleep(backoff)  # a stream that ended or dropped: open it again
            backoff = min(backoff * 2, WATCH_MAX_BACKOFF)

    async def _restored(self, prefix: str, delivered: int, member: int) -> bool:
        """A watch was created on a member at revision `member`, behind the revision
        `delivered` already: is etcd's revision (a linearizable read, past every write
        committed) behind it too? Yes: restored from a backup. No: that member lags."""
        resp = await self._call(self._kvs.get(prefix, keys_only=True, timeout=self.timeout))
        revision = int(resp.header.revision)  # type: ignore[attr-defined]
        if revision >= delivered:
            log.info(
                "watch %s: a member at revision %d, behind %d (etcd is at %d): it lags; waiting for it",
                prefix, member, delivered, revision,
            )  # fmt: skip
        return revision < delivered

    async def snapshot(self) -> AsyncIterator[bytes]:
        """etcd's snapshot of its whole backend, in chunks; the last 32 bytes of the
        stream are the SHA-256 of the rest (what `etcdctl snapshot restore` checks)."""
        maintenance = self._client.maintenance
        if maintenance is None:
            raise StoreUnavailable(f"etcd at {self.endpoints}: not connected")
        try:
            async for chunk in maintenance.snapshot(timeout=SNAPSHOT_TIMEOUT, max_attempts=1):
                yield chunk
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"etcd at {self.endpoints} gave no snapshot: {exc}") from exc

    def _open_watch(self, prefix: str, start_revision: int) -> grpc.aio.StreamStreamCall:
        create = WatchCreateRequest(
            key=prefix.encode(), range_end=prefix_range_end(prefix), start_revision=start_revision
        )

        return self._watch_stub.Watch(
            _OneRequest(WatchRequest(create_request=create)), metadata=self._watches._metadata or None
        )


class _OneRequest:
    """The request side of a watch stream: one create request, then open until cancelled
    (an iterator object, not an async generator: gRPC's reader task is cancelled with the
    stream, and an async generator would then be finalized while it still runs)."""

    def __init__(self, request: object) -> None:
        self._request: object | None = request

    def __aiter__(self) -> _OneRequest:
        return self

    async def __anext__(self) -> object:
        request, self._request = self._request, None
        if request is None:
            await asyncio.Event().wait()  # until the stream is cancelled
        return request
