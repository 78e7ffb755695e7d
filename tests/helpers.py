"""Waiting in tests: poll a condition until a deadline, never sleep a fixed time.

(The free-port helpers come from `node.dev.freeports`, shared with the benches: ports outside the
ephemeral range, so a server restarted by a test finds its port still free.)

`wait_until(fn, timeout)` calls `fn` (sync or async) every `interval` seconds until it
returns something truthy, and returns that value; at the deadline it raises
`TimeoutError` naming `message` and the last value or exception seen, so a failed wait
says what it was waiting for. Exceptions raised by `fn` count as "not yet".
`wait_until_sync` is the same for code without an event loop.

"This request wrote nothing" checks: `before = settled_revision(...)` (the cluster's own
follow-up writes of earlier requests done), then `writes_since(..., before) == []` (what
a live cluster writes by itself left out).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

from node.dev.freeports import free_port, free_port_on_all, free_port_pair

__all__ = [
    "free_port",
    "free_port_on_all",
    "free_port_pair",
    "on_store",
    "settled_revision",
    "wait_until",
    "wait_until_sync",
    "writes_since",
]

T = TypeVar("T")


@overload
async def wait_until(
    fn: Callable[[], Awaitable[T | None]], timeout: float, interval: float = ..., message: str = ...
) -> T: ...
@overload
async def wait_until(
    fn: Callable[[], T | None], timeout: float, interval: float = ..., message: str = ...
) -> T: ...
async def wait_until(
    fn: Callable[[], Any],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(_failure(message, timeout, last))
        await asyncio.sleep(interval)


def wait_until_sync(
    fn: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(_failure(message, timeout, last))
        time.sleep(interval)


def _failure(message: str, timeout: float, last: object) -> str:
    what = message or "condition"
    return f"{what} not met within {timeout}s (last: {last!r})"


def etcd_member_argv(name: str, data_dir: Path, client: int, peer: int, initial: str = "") -> list[str]:
    """`etcd` for one member of a plain-HTTP cluster on 127.0.0.1 (`initial`: every member's
    `name=peer URL`, comma-separated; default this member alone)."""
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    return [
        "etcd", "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", initial or f"{name}={peer_url}", "--initial-cluster-state", "new",
    ]  # fmt: skip


def on_store(endpoint: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run `fn(store)` on a fresh `EtcdStore` connected to `endpoint`, then close it; with
    the client certificate when that etcd is a dev cluster's (TLS, client certificates)."""
    from node.dev.devcluster import etcd_tls_for
    from node.store.etcd import EtcdStore

    async def go() -> T:
        store = EtcdStore([endpoint], tls=etcd_tls_for(endpoint))
        await store.connect()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


async def mirrors_caught_up(store: Any, caches: Iterable[Any], timeout: float = 5.0) -> None:
    """Wait until each `PrefixCache` in `caches` holds exactly what `store` lists under its
    prefix: a pass run then sees every write made before it."""

    async def mirrored() -> bool:
        for cache in caches:
            kvs, _ = await store.range(cache.prefix)
            if cache.items != {kv.key: kv for kv in kvs}:
                return False
        return True

    caches = tuple(caches)
    await wait_until(mirrored, timeout=timeout, interval=0.01, message="mirrors caught up")


def settled_revision(endpoint: str, prefix: str = "/shoal/v1/", timeout: float = 30.0) -> int:
    """etcd's revision once the cluster's own follow-up writes of earlier requests are done.

    A "this request wrote nothing" check compares the keys written after this revision,
    so writes that an earlier test's apply or delete still causes must be over first:
    every node's names component allocates a VIP for a new service and releases the VIP
    of a removed one, a moment after the service key changed. Settled means every
    service has its VIP record and no VIP record outlives its service.
    """
    from node.model.keys import Keys

    keys = Keys(prefix)

    agreed: list[object] = []  # the last state in which services and VIP records agreed

    async def settled(store: Any) -> int | None:
        services, rev = await store.range(keys.services)
        vips, _ = await store.range(keys.vips)
        # by incarnation: a service deleted and applied again under its old name keeps the
        # old incarnation's VIP record until a node allocates the new one
        have = {(keys.tail(kv.key, keys.services), json.loads(kv.value).get("uid")) for kv in services}
        named = {(keys.tail(kv.key, keys.vips), json.loads(kv.value).get("uid")) for kv in vips}
        if have != named:
            agreed.clear()
            return None
        # the two ranges are read at two revisions: the same agreement twice, a poll apart
        if agreed == [have]:
            return int(rev)
        agreed[:] = [have]
        return None

    async def wait(store: Any) -> int:
        return await wait_until(
            lambda: settled(store), timeout, interval=0.1, message="VIP records matching the services"
        )

    return on_store(endpoint, wait)


def writes_since(
    endpoint: str, before: int, prefix: str = "/shoal/v1/", also_ignore: tuple[str, ...] = ()
) -> list[str]:
    """Every key put or deleted under `prefix` after revision `before`, except what a live
    cluster writes by itself whatever the requests: the event rings, the usage meter's
    records (`usage/`, every interval), each node's load gauge for the autoscaler
    (`load/<node>`, every period while its replicas are sampled), and the tails in
    `also_ignore` (as `nodes/`)."""
    from node.model.keys import Keys

    keys = Keys(prefix)
    ignored = (
        keys.events,
        f"{keys.prefix}usage/",
        keys.loads,
        *(f"{keys.prefix}{tail}" for tail in also_ignore),
    )

    async def read(store: Any) -> list[str]:
        now = (await store.range("/__none__/"))[1]
        seen: list[str] = []
        if now <= before:
            return seen
        async with asyncio.timeout(10):
            async for batch in store.watch(keys.prefix, before + 1):
                seen += [ev.kv.key for ev in batch.events]
                if batch.revision >= now:
                    break
        return [k for k in seen if not k.startswith(ignored)]

    return on_store(endpoint, read)


def listening_inodes(port: int, address: str = "") -> set[int]:
    """The inodes of the sockets listening on TCP `port` (on `address`, an IPv4 one, or on
    any), from /proc/net/tcp and tcp6: which kernel socket serves a port, across an
    engine's change."""
    import ipaddress

    where = f"{int(ipaddress.IPv4Address(address).packed[::-1].hex(), 16):08X}" if address else ""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                host, hexport = fields[1].rsplit(":", 1)
                if fields[3] == "0A" and int(hexport, 16) == port and (not where or host == where):
                    found.add(int(fields[9]))
    return found


class Knocker:
    """Connects to `host:port` in a loop from a thread (each connection closed at once),
    bounded in count and `seconds`, counting those made and the refusals: a listener that
    changes must refuse none. Each connect waits up to 10 s: under load a SYN dropped on a
    full accept queue is sent again after 1 s and 3 s, and only a refusal is the fault.

        async with Knocker(host, port) as k:
            await wait_until(lambda: len(k.connected) > 20, timeout=10)
            ...  # change the listener
        assert k.refused == []
    """

    def __init__(self, host: str, port: int, seconds: float = 20.0, most: int = 200_000) -> None:
        import threading

        self.host, self.port, self.seconds, self.most = host, port, seconds, most
        self.connected: list[int] = []
        self.refused: list[OSError] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._knock, daemon=True)

    def _knock(self) -> None:
        import socket

        end = time.monotonic() + self.seconds
        while not self.done.is_set() and len(self.connected) + len(self.refused) < self.most:
            if time.monotonic() >= end:
                break
            try:
                socket.create_connection((self.host, self.port), timeout=10).close()
                self.connected.append(1)
            except OSError as exc:
                self.refused.append(exc)

    def summary(self) -> str:
        return f"{len(self.refused)} of {len(self.refused) + len(self.connected)} refused: {self.refused[:3]}"

    async def __aenter__(self) -> Knocker:
        self.thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.done.set()
        await asyncio.to_thread(self.thread.join)


async def leader_with_events(store: Any, keys: Any) -> tuple[Any, list[tuple[str, str]]]:
    """A leader (epoch: a fresh `leader` key) whose services are listed, and the (kind,
    message) of every event it emits: for driving a pass's writes by hand (rollbacks)."""
    from leader.loop import LeaderLoop
    from node.telemetry.events import EventLog

    epoch = await store.put(keys.leader, b'{"node": "n1"}')
    events = EventLog(store, keys, "n1")
    emitted: list[tuple[str, str]] = []
    events.emit = lambda kind, message, *_, **__: emitted.append((kind, message))  # type: ignore[method-assign]
    leader = LeaderLoop(store, keys, epoch, events)
    await leader.services.relist()
    return leader, emitted
