"""Discovery lookups: a service's routable replicas and its mesh addresses.

`resolve` answers once; `watch` answers now and then again after every change that
can alter the answer (endpoints or assignments of the service, the service record,
the node registry, down marks, this node's gossip view), told by the daemon's shared
mirrors (`node.store.mirrors`: no etcd watch per stream) or, without a hub, by watches
of its own. Changes are coalesced: a burst of writes gives one new answer, and an
answer equal to the last one sent is not sent again. The same rules as the proxy decide what is routable
(`node.model.domain.routable_endpoints`), so a lookup and the mesh never disagree for long.

For a service with published ports, the answer waits (`settled`, at most `SETTLE` s) until
this node's proxy serves a table at least as new as the records the answer was read from
(the service, its tasks and endpoints: their newest mod revision, so writes to other keys
or other prefixes of a shared etcd never hold it; with proxy workers: until every worker
has acknowledged that table, decision 76): a client told a replica is routable here finds
it in this node's rotation. A removed record has no revision to wait for. The mesh
addresses of other nodes are listed as registered; ask each node to know that its proxy
serves too.

A name that is no service may be a network alias (decision 73): `target` finds the
service whose live claim `netaliases/<network>/<name>` holds it; the servicer then marks
the answers (`alias`, `alias_networks`). An alias held by two services (on two networks)
answers neither: the error names both, and their service names resolve each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from node.api import convert
from node.api.nodes import MemberView, gone, routable_at
from node.gossip.member import MemberEvent
from node.model.domain import NodeInfo, PortClaim, ServiceRecord
from node.model.errors import FailedPrecondition, NotFound
from node.model.keys import Keys
from node.pb import api_pb2
from node.proxy import routes
from node.store import Store, StoreError
from node.store.cache import PrefixCache
from node.store.mirrors import hub_of

COALESCE = 0.05
"""Seconds to wait after a change for the rest of its burst before answering."""
SETTLE = 2.0
"""Seconds an answer waits at most for this node's proxy to serve what it lists."""

Settled = Callable[[int, float], Awaitable[bool]]
"""`Mesh.settled`: wait up to s seconds for the proxy to serve etcd's revision r."""


async def target(store: Store, keys: Keys, name: str) -> tuple[str, tuple[str, ...]]:
    """The service `name` is, or the one it is an alias of, with the networks on which it
    is (empty: its own name; see the module doc)."""
    if await store.get(keys.service(name)) is not None:
        return name, ()
    held: dict[str, list[str]] = {}
    for kv in (await store.range(keys.netaliases))[0]:
        network, _, alias = kv.key[len(keys.netaliases) :].rpartition("/")
        if alias != name:
            continue
        claim = PortClaim.from_json(kv.value)
        owner = await store.get(keys.service(claim.service))
        if owner is not None and ServiceRecord.from_json(owner.value).uid == claim.uid:  # not stale
            held.setdefault(claim.service, []).append(network)
    if not held:
        raise NotFound(
            f"service '{name}' not found, nor a network alias of that name; "
            "`shoal service ls` lists the services"
        )
    if len(held) > 1:
        by = ", ".join(f"{s} on {', '.join(sorted(n))}" for s, n in sorted(held.items()))
        raise FailedPrecondition(
            f"'{name}' is an alias of several services ({by}): resolve one of them by its name"
        )
    ((service, networks),) = held.items()
    return service, tuple(sorted(networks))


def as_alias(
    answer: api_pb2.ResolveResponse, alias: str, networks: tuple[str, ...]
) -> api_pb2.ResolveResponse:
    """`answer` (of the service) marked as asked by `alias` (a copy: `watch` compares the
    answers it sent with the next)."""
    if not networks:
        return answer
    out = api_pb2.ResolveResponse()
    out.CopyFrom(answer)
    out.alias = alias
    out.alias_networks.extend(networks)
    return out


async def resolve(
    store: Store, keys: Keys, name: str, view: MemberView | None, settled: Settled | None = None
) -> api_pb2.ResolveResponse:
    kv = await store.get(keys.service(name))
    if kv is None:
        raise NotFound(f"service '{name}' not found; `shoal service ls` lists the services")
    record = ServiceRecord.from_json(kv.value)
    endpoints, revision = await routable_at(store, keys, name, view, record.uid)
    out = api_pb2.ResolveResponse(name=name, endpoints=[convert.endpoint(e) for e in endpoints])
    published = [r for r in routes.listeners([record]).values()]
    if not published:
        return out
    nodes = sorted(
        (NodeInfo.from_json(kv.value) for kv in (await store.range(keys.nodes))[0]), key=lambda n: n.id
    )
    excluded = await gone(store, keys, view)
    for route in published:
        for n in nodes:
            if n.id not in excluded and not n.simulated:  # a simulated node runs no proxy
                out.mesh.append(
                    api_pb2.MeshAddress(
                        node=n.id, address=n.address, port=route.published, protocol=route.protocol
                    )
                )
    if settled is not None:  # the records' own revisions: writes elsewhere in etcd do not count
        await settled(max(revision, kv.mod_revision), SETTLE)  # late: answered anyway, as etcd has it
    return out


async def watch(
    store: Store, keys: Keys, name: str, view: MemberView | None, settled: Settled | None = None
) -> AsyncIterator[api_pb2.ResolveResponse]:
    """The answer now, then each different one; ends with NotFound when the service is removed."""
    changed = asyncio.Event()
    answer = await resolve(store, keys, name, view, settled)
    hub = hub_of(store)
    watchers: list[asyncio.Task[None]] = []
    mine: list[tuple[PrefixCache, str, bool]] = []  # (mirror, the keys of this service there, exact)
    if hub is not None:  # the daemon's shared mirrors: no watch of this stream's own
        mirrors = [
            hub.mirror(p) for p in (keys.endpoints_all, keys.tasks, keys.services, keys.nodes, keys.down_all)
        ]
        for m in mirrors:
            m.listener(changed)  # any change there wakes it; only one of this service's reads again
        endpoints, tasks, services, nodes, down = mirrors
        mine = [
            (endpoints, keys.endpoints(name), False),
            (tasks, keys.service_tasks(name), False),
            (services, keys.service(name), True),
            (nodes, keys.nodes, False),
            (down, keys.down_all, False),
        ]
    else:
        revision = (await store.range(keys.service(name)))[1]
        prefixes = (
            keys.endpoints(name),
            keys.service_tasks(name),
            keys.service(name),
            keys.nodes,
            keys.down_all,
        )
        watchers = [asyncio.create_task(_follow(store, p, revision + 1, changed)) for p in prefixes]
    queue = view.watch() if view is not None else None
    gossip = asyncio.Event()  # the member view changed: read again, whatever the mirrors say
    if queue is not None:
        watchers.append(asyncio.create_task(_drain(queue, changed, gossip)))
    seen: list[tuple[str, int]] | None = None  # at the first wake: read (the mirrors may be listing)
    try:
        yield answer
        while True:
            await changed.wait()
            await asyncio.sleep(COALESCE)
            changed.clear()
            for w in watchers:
                if w.done() and w.exception() is not None:
                    raise w.exception()  # type: ignore[misc]
            now = _revisions(mine)
            if mine and now == seen and not gossip.is_set():
                continue  # a change of another service's keys: nothing to read
            seen = now
            gossip.clear()
            new = await resolve(store, keys, name, view, settled)
            if new != answer:
                answer = new
                yield answer
    finally:
        for w in watchers:
            w.cancel()
        for w in watchers:
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await w
        if view is not None and queue is not None:
            view.unwatch(queue)
        if hub is not None:
            for m in mirrors:
                m.remove_listener(changed)


async def _follow(store: Store, prefix: str, revision: int, changed: asyncio.Event) -> None:
    try:
        async for _batch in store.watch(prefix, revision):
            changed.set()
    finally:
        changed.set()  # a watch that ends (etcd gone) wakes the loop, which raises its error


async def _drain(queue: asyncio.Queue[MemberEvent], changed: asyncio.Event, gossip: asyncio.Event) -> None:
    while True:
        await queue.get()
        gossip.set()
        changed.set()


def _revisions(mine: list[tuple[PrefixCache, str, bool]]) -> list[tuple[str, int]]:
    """The mod revisions of this service's keys in the shared mirrors (and of every node
    and down mark): equal, the answer cannot have changed, and etcd is not read again (a
    rollout of another service once made every open watch read etcd 20 times a second)."""
    out: list[tuple[str, int]] = []
    for mirror, prefix, exact in mine:
        if exact:
            kv = mirror.items.get(prefix)
            out.append((prefix, kv.mod_revision if kv is not None else 0))
        else:
            out.extend((k, kv.mod_revision) for k, kv in mirror.items.items() if k.startswith(prefix))
    return out
