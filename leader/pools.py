"""The leader's side of node pools (issue 15): decide each pass, record, then call providers.

Every leader pass ends with `PoolKeeper.step`: it reads the pools (`pools`) and the pool
nodes' records (`poolnodes/`), hands them with the pass's plans to the pure
`leader.pools_plan.decide`, and carries out the decision in this order, each write
fenced on the leader's epoch (a deposed leader writes nothing):

1. **ask**: a `requested` record naming the new node is written, THEN the provider's
   `create` is called in the background. Its answer sets `created`; the node's first
   registration sets `joined`. A leader that dies between the write and the answer
   leaves the record: the next leader calls `create` again for it (providers are
   idempotent per node id), and counts it as capacity on its way, so the need is
   neither lost nor asked for twice.
   The pass's own record writes (`joined`, `deleting`) compare on the mod revision it
   read: the background answer may have landed in between with the provider's id, which
   a blind overwrite would lose (the delete then goes out with no id). A pass that finds
   a record changed leaves it alone; the next one decides again on what is stored.
2. **give back**: the record goes `deleting` and the node is drained (`nodespec/`), in one
   transaction, THEN the provider's `delete` is called; its success sets `released`. The
   record and the drain are removed once the node's registration is gone (its lease
   may outlive the process by seconds: without the drain the scheduler would place
   replicas on a dead node meanwhile). A leader that dies between the drain and the
   answer leaves `deleting`: the next one calls `delete` again.
3. a failed `create` is given back the same way (the provider may have started
   something), and leaves a `failed` record: no new request of that pool for
   `RETRY_AFTER` seconds.

Provider calls never hold up a pass; at most one call per node runs at a time. A
`poolnodes/` record that cannot be read is skipped and logged, not acted on: its node is
neither given back nor asked for again, and its pool asks for nothing until it is fixed
or deleted (the other pools go on). A node whose settings (`nodespec/`) cannot be read
(`node.model.readable.nodespec`) is not given back while they stay so (logged once per
revision): draining it would overwrite what the operator set; the leader places nothing
new there meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any

from leader import provider
from leader.placement.requirements import requirements
from leader.pools_plan import Decision, DedicatedAsk, Demand, decide
from leader.scheduler import Plan, Snapshot
from node.model import readable
from node.model.domain import Availability, NodeSpec, ServiceRecord, UnreadableRecord
from node.model.errors import InvalidArgument
from node.model.keys import Keys
from node.model.pools import PoolNode, PoolSpec, PoolState, parse_pools
from node.model.spec_launch import DEDICATED_LABEL, dedicated_size
from node.store import Compare, Fenced, Put, Store, fence
from node.store.base import Delete, Op, TxnResult
from node.store.retry import compare_and_swap
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)

RETRY_AFTER = 30.0  # s without a new request of a pool after one of its provider calls failed


@dataclass(frozen=True)
class PoolContext:
    """What a provider needs to start a node of this cluster (from the daemon's config)."""

    cluster: str
    etcd: tuple[str, ...]
    prefix: str
    join_token: Callable[[], Awaitable[str]]
    vip_range: str = ""  # the same on every node of a cluster
    grpc_port: int = 0  # the leader's: a provider may start its nodes on the same port
    etcd_tls: tuple[str, str, str] = ("", "", "")  # CA, certificate, key: paths on the leader's host


def demands(services: Mapping[str, ServiceRecord], snap: Snapshot, plans: list[Plan]) -> list[Demand]:
    """What waits for capacity a new node could give: unplaced replicas, less pinned slots."""
    out = []
    for plan in plans:
        record = services.get(plan.service)
        if record is None or not plan.unplaced:
            continue
        pinned = {c.slot for c in snap.volumes.get(plan.service, ()) if c.node}
        count = sum(1 for slot in plan.unplaced if slot not in pinned)
        req = requirements(record.spec)
        if count and not req.invalid and not req.global_mode:
            size = dedicated_size(record.spec)
            out.append(
                Demand(
                    plan.service, count, req.cpu, req.memory, req.constraints, req.max_per_node,
                    req.dedicated, size,
                )
            )  # fmt: skip
    return out


def node_size(spec: PoolSpec, record: PoolNode) -> tuple[float, int, dict[str, str]]:
    """What the provider starts for `record`: the pool's node, or a dedicated node's own size
    with the label naming its service."""
    if not record.dedicated:
        return spec.node_cpu, spec.node_memory, spec.node_labels()
    return record.cpu, record.memory, {**spec.node_labels(), DEDICATED_LABEL: record.dedicated}


def read_pools(raw: bytes | None) -> dict[str, PoolSpec]:
    if raw is None:
        return {}
    try:
        return parse_pools(json.loads(raw))
    except (InvalidArgument, ValueError) as exc:  # never stored by the API: a hand edit
        log.warning("the stored pools cannot be read (%s); no pool acts", exc)
        return {}


class PoolKeeper:
    def __init__(self, store: Store, keys: Keys, epoch: int, events: EventLog, context: PoolContext) -> None:
        self.store, self.keys, self.epoch, self.events, self.context = store, keys, epoch, events, context
        self.empty_since: dict[str, float] = {}
        self.calls: dict[str, asyncio.Task[None]] = {}  # node -> its provider call in progress
        self.finished: set[str] = set()  # creates that ended here (their record may lag behind)
        self.last: Decision | None = None
        self.unreadable: set[str] = set()  # keys of unreadable records already logged
        self._said: dict[str, int] = {}  # node whose settings cannot be read -> mod revision logged
        self.now: Callable[[], float] = time.time

    async def run(self) -> None:
        """Lives as long as the leadership; cancels the provider calls when it ends."""
        try:
            await asyncio.Event().wait()
        finally:
            for task in self.calls.values():
                task.cancel()
            await asyncio.gather(*self.calls.values(), return_exceptions=True)

    async def _write(self, ops: list[Op]) -> None:
        result = await self.store.txn([fence(self.keys.leader, self.epoch)], ops)
        if not result.succeeded:
            raise Fenced(f"leadership at epoch {self.epoch} is over; pool records not written")

    async def _write_if_unchanged(self, key: str, mod: int, ops: list[Op]) -> TxnResult | None:
        """`ops` only if the record at `key` is still at `mod`; None if it changed meanwhile."""
        result = await self.store.txn(
            [fence(self.keys.leader, self.epoch), Compare(key, "mod", "==", mod)], ops
        )
        if result.succeeded:
            return result
        leader = await self.store.get(self.keys.leader)
        if leader is None or leader.create_revision != self.epoch:
            raise Fenced(f"leadership at epoch {self.epoch} is over; pool records not written")
        return None

    async def state(self) -> tuple[dict[str, PoolSpec], dict[str, PoolNode], dict[str, int], set[str]]:
        """The pools, their nodes' records, each record's mod revision as read, and the pools
        with a record that cannot be read (skipped, logged once: `decide` asks nothing of them)."""
        kv = await self.store.get(self.keys.pools)
        kvs, _ = await self.store.range(self.keys.poolnodes)
        records, mods, unreadable, bad = {}, {}, set(), set()
        for item in kvs:
            pool, _, node = self.keys.tail(item.key, self.keys.poolnodes).partition("/")
            try:
                r = PoolNode.from_json(item.value)
                if (r.pool, r.node) != (pool, node):
                    raise ValueError(f"it names {r.pool:.40}/{r.node:.40}")
            except ValueError as exc:
                # left as it is: neither given back (it may be a node that runs) nor asked for
                # again (it may be one on its way); its pool asks for nothing while it stays
                unreadable.add(pool)
                bad.add(item.key)
                if item.key not in self.unreadable:
                    log.warning(
                        "pool node record %s cannot be read (%s); skipped: its pool asks for no "
                        "node until it is fixed or deleted",
                        item.key,
                        exc,
                    )
                continue
            records[r.node], mods[r.node] = r, item.mod_revision
        self.unreadable = bad
        return read_pools(kv.value if kv is not None else None), records, mods, unreadable

    async def step(
        self, services: Mapping[str, ServiceRecord], snap: Snapshot, plans: list[Plan], now: float
    ) -> Decision:
        pools, records, mods, unreadable = await self.state()
        if not pools and not records:
            self.last = Decision()
            return self.last
        busy = {t.node for t in snap.tasks.values()} | {t.node for p in plans for t in p.place}
        decision = decide(
            pools, records.values(), snap.nodes, busy, demands(services, snap, plans), now, self.empty_since,
            frozen=unreadable,
        )  # fmt: skip
        self.empty_since, self.last = decision.empty_since, decision
        for node in self._said.keys() - records.keys():
            del self._said[node]
        changed: set[str] = set()  # records written meanwhile: left to the next pass
        for r in list(records.values()):
            if r.state in (PoolState.REQUESTED.value, PoolState.CREATED.value) and r.node in snap.nodes:
                key = self.keys.poolnode(r.pool, r.node)
                joined = replace(r, state=PoolState.JOINED.value, changed_at=now, epoch=self.epoch)
                written = await self._write_if_unchanged(key, mods[r.node], [Put(key, joined.to_json())])
                if written is None:
                    changed.add(r.node)
                    continue
                records[r.node], mods[r.node] = joined, written.revision
                self.events.emit("pool.node_joined", f"pool {r.pool}: node {r.node} joined")
        for pool, count in sorted(decision.create.items()):
            for _ in range(count):
                await self._ask(pools[pool], now)
        for ask in decision.dedicated:
            await self._ask(pools[ask.pool], now, ask)
        for node, why in sorted(decision.give_back.items()):
            if node not in changed and not await self._give_back(records[node], mods[node], why, now):
                changed.add(node)
        for node in decision.forget:
            r = records.pop(node)
            await self._write([Delete(self.keys.poolnode(r.pool, r.node))])
        for r in records.values():  # calls a previous leader (or this one) left without outcome
            spec = pools.get(r.pool)
            if r.node in changed:
                continue
            if r.state == PoolState.REQUESTED.value and spec is not None and r.node not in self.finished:
                self._start(r.node, self._create(spec, r))
            elif r.state == PoolState.DELETING.value and r.node not in decision.give_back:
                self._start(r.node, self._delete(r, spec))
            elif r.state == PoolState.RELEASED.value and r.node not in snap.nodes:
                await self._forget(r, now)  # until then the drain stays: nothing is placed there
        return decision

    def _start(self, node: str, work: Coroutine[Any, Any, None]) -> None:
        running = self.calls.get(node)
        if running is not None and not running.done():
            work.close()
            return

        async def guarded() -> None:
            try:
                await work
            except Fenced:
                log.info("pool call for %s: no longer leading", node)
            except Exception as exc:  # a store outage: the next pass starts it again
                log.warning("pool call for %s did not finish: %s", node, exc)
            finally:
                if self.calls.get(node) is task:
                    del self.calls[node]

        task = asyncio.create_task(guarded(), name=f"pool-{node}")
        task.add_done_callback(lambda _: work.close())  # cancelled before it ran: not left unawaited
        self.calls[node] = task

    async def _ask(self, spec: PoolSpec, now: float, ask: DedicatedAsk | None = None) -> None:
        node = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        record = PoolNode(
            spec.name, node, PoolState.REQUESTED.value, now, self.epoch, changed_at=now,
            command=list(spec.command), timeout=spec.timeout,
        )  # fmt: skip
        if ask is not None:  # its size and owner are recorded too: a next leader asks the same
            record = replace(record, dedicated=ask.service, cpu=ask.cpu, memory=ask.memory)
        await self._write([Put(self.keys.poolnode(spec.name, node), record.to_json())])  # before the call
        cpu, memory, _ = node_size(spec, record)
        why = f"dedicated to one replica of {ask.service}" if ask else "for replicas waiting for capacity"
        self.events.emit(
            "pool.node_requested",
            f"pool {spec.name}: asking its provider for node {node} ({cpu:g} cpu, "
            f"{memory / 2**30:g} GiB) {why}",
        )
        self._start(node, self._create(spec, record))

    async def _create(self, spec: PoolSpec, record: PoolNode) -> None:
        cpu, memory, labels = node_size(spec, record)
        request: dict[str, Any] = {
            "action": "create",
            "pool": spec.name,
            "node": {"id": record.node, "cpu": cpu, "memory": memory, "labels": labels},
            "cluster": {
                "name": self.context.cluster,
                "etcd": list(self.context.etcd),
                "etcd_prefix": self.context.prefix,
                "join_token": await self.context.join_token(),
                "vip_range": self.context.vip_range,
                "grpc_port": self.context.grpc_port,
                "etcd_tls": dict(zip(("ca", "cert", "key"), self.context.etcd_tls, strict=True)),
            },
        }
        key = self.keys.poolnode(spec.name, record.node)
        try:
            answer = await provider.call(spec.command, request, spec.timeout)
        except provider.ProviderError as exc:
            now = self.now()
            failed = replace(
                record, state=PoolState.DELETING.value, message=str(exc)[:500], retry_at=now + RETRY_AFTER,
                changed_at=now, epoch=self.epoch,
            )  # fmt: skip
            await self._write([Put(key, failed.to_json())])
            self.finished.add(record.node)
            self.events.emit("pool.provider_failed", f"pool {spec.name}: create {record.node}: {exc}")
            await self._delete(failed)  # it may have started something: given back all the same
            return
        answered = str(answer.get("id", ""))[:200], str(answer.get("address", ""))[:200]

        async def record_answer() -> bool | None:
            """True: recorded (or nothing to record); None: the record changed meanwhile, read again."""
            current = await self.store.get(key)
            now_record = PoolNode.from_json(current.value) if current is not None else None
            if current is None or now_record is None:
                return True  # forgotten meanwhile
            # an answer without them (both optional) keeps what an earlier one recorded
            provider_id, address = answered[0] or now_record.provider_id, answered[1] or now_record.address
            if now_record.state == PoolState.REQUESTED.value:
                stored = replace(
                    now_record, state=PoolState.CREATED.value, provider_id=provider_id, address=address,
                    changed_at=self.now(), epoch=self.epoch,
                )  # fmt: skip
            elif now_record.state in (PoolState.JOINED.value, PoolState.DELETING.value):
                # registered, or given back, before the answer: what the delete needs, kept
                stored = replace(now_record, provider_id=provider_id, address=address)
            else:
                return True  # released: the delete is done
            if stored == now_record:
                return True
            written = await self._write_if_unchanged(key, current.mod_revision, [Put(key, stored.to_json())])
            return None if written is None else True

        # compared on what was read: a write meanwhile (a give-back) is read again and kept
        await compare_and_swap(record_answer, f"pool node {record.node} kept changing")
        # only now: a record left `requested` (this write failed) has its create called again,
        # for the same node id, and keeps the provider's id this time
        self.finished.add(record.node)
        log.info("pool %s: provider created %s (%s)", spec.name, record.node, answered[0])

    async def _give_back(self, r: PoolNode, mod: int, why: str, now: float) -> bool:
        """False: nothing done, the record changed since the pass read it (at `mod`), or the
        node's settings cannot be read (left to a pass after they are fixed)."""
        key = self.keys.poolnode(r.pool, r.node)
        going = replace(
            r, state=PoolState.DELETING.value, message=why[:500], changed_at=now, epoch=self.epoch
        )
        spec_kv = await self.store.get(self.keys.nodespec(r.node))
        try:
            node_spec = readable.nodespec(r.node, spec_kv.value) if spec_kv is not None else NodeSpec()
        except UnreadableRecord as exc:  # a drain written over it would lose what the operator set
            assert spec_kv is not None
            if self._said.get(r.node) != spec_kv.mod_revision:
                self._said[r.node] = spec_kv.mod_revision
                log.warning("%s; pool %s does not give node %s back until it is fixed", exc, r.pool, r.node)
            return False
        drained = replace(node_spec, availability=Availability.DRAIN.value, updated_at=now, updated_by="pool")
        ops: list[Op] = [Put(key, going.to_json()), Put(self.keys.nodespec(r.node), drained.to_json())]
        if await self._write_if_unchanged(key, mod, ops) is None:
            return False
        self.events.emit("pool.node_draining", f"pool {r.pool}: giving node {r.node} back: {why}")
        self.empty_since.pop(r.node, None)
        self._start(r.node, self._delete(going))
        return True

    async def _delete(self, r: PoolNode, spec: PoolSpec | None = None) -> None:
        command, timeout = tuple(r.command), r.timeout
        if not command and spec is not None:  # a record written before it kept the command
            command, timeout = spec.command, spec.timeout
        if not command:
            log.warning("node %s of pool %s: no provider to give it back through", r.node, r.pool)
            return
        request = {
            "action": "delete",
            "pool": r.pool,
            "node": {"id": r.node, "provider_id": r.provider_id},
            "cluster": {"name": self.context.cluster},
        }
        try:
            await provider.call(command, request, timeout)
        except provider.ProviderError as exc:
            self.events.emit("pool.provider_failed", f"pool {r.pool}: delete {r.node}: {exc}")
            return  # still `deleting`: the next pass calls again
        released = replace(r, state=PoolState.RELEASED.value, changed_at=self.now(), epoch=self.epoch)
        await self._write([Put(self.keys.poolnode(r.pool, r.node), released.to_json())])
        self.finished.discard(r.node)
        self.events.emit("pool.node_removed", f"pool {r.pool}: node {r.node} given back")

    async def _forget(self, r: PoolNode, now: float) -> None:
        """A released node's registration is gone: its drain goes, and its record (or, after a
        failed create, a back-off marker until `retry_at`)."""
        ops: list[Op] = [Delete(self.keys.poolnode(r.pool, r.node)), Delete(self.keys.nodespec(r.node))]
        if r.retry_at > now:
            marker = replace(r, state=PoolState.FAILED.value, changed_at=now, epoch=self.epoch)
            ops[0] = Put(self.keys.poolnode(r.pool, r.node), marker.to_json())
        await self._write(ops)
