"""Many simulated nodes in one process: registered in etcd, running nothing.

Why: the scheduler and the leader must be tried at the scale they promise (5,000 nodes,
100,000 tasks) on one machine. A real shoald per node would take 5,000 processes; this
module registers N nodes from one process instead, so the control plane (leader,
scheduler, applier, API) is the real one and only the hosts are simulated.

What a simulated node is:
- a registry entry `nodes/<id>` like any node's (`NodeInfo`, with its capacity and
  labels) marked `simulated=True`, plus the label `simulated=true` so constraints can
  aim at or avoid simulated nodes; all of them hang on **one** lease, kept alive here,
  so stopping this process (or losing etcd) makes them all vanish as a host would;
- an "agent" that follows `tasks/` and, for each task assigned to one of its nodes,
  records a container in a `SimRuntime` (nothing runs) and reports it `running` in
  `status/<task-id>` (message "simulated"), on the same lease. A task handed off in a
  start-first move keeps running until its handoff is released, as a real agent does;
- no endpoint is ever published: a simulated replica serves nothing, so no proxy can
  route to it, and Resolve lists no mesh address on a simulated node;
- no gossip: real daemons leave simulated nodes out of their membership and the leader
  counts them in no gossip quorum; a simulated node dies only with its lease.

Cheap by design: registrations and status reports go out in transactions of
`MAX_TXN_OPS` puts, several in flight; the agent follows the watch of `tasks/`
incrementally (one parse per change, never a full re-diff except after a re-list).

    python -m node.dev.simcluster --etcd 127.0.0.1:2479 --nodes 5000 --cpu 8 --memory 32Gi --zones a,b,c
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from node import __version__
from node.dev.simruntime import SimRuntime
from node.model.domain import Assignment, Desired, NodeInfo, TaskState, TaskStatus
from node.model.keys import Keys
from node.runtime.base import LABELS, ContainerSpec
from node.store import KV, Compacted, Delete, Put, Store, StoreError
from node.store.base import MAX_TXN_OPS, Op
from node.store.session import Session

log = logging.getLogger(__name__)

SIM_LABEL = "simulated"
SIM_ADDRESS = "simulated"  # what `node ls` shows as the address: there is no host to reach
_RUNNING = Desired.RUNNING.value


def sim_nodes(
    count: int,
    cpu: float,
    memory: int,
    labels: Mapping[str, str] | None = None,
    zones: Sequence[str] = (),
    prefix: str = "sim",
) -> list[NodeInfo]:
    """`count` simulated nodes `<prefix>-00001`…, each with the capacity and labels given,
    `simulated=true`, and `zone` cycling over `zones` when any."""
    now = time.time()
    width = max(5, len(str(count)))
    out = []
    for i in range(1, count + 1):
        node_labels = {**(labels or {}), SIM_LABEL: "true"}
        if zones:
            node_labels["zone"] = zones[(i - 1) % len(zones)]
        node_id = f"{prefix}-{i:0{width}d}"
        out.append(
            NodeInfo(node_id, SIM_ADDRESS, 0, node_labels, cpu, memory, __version__, now, simulated=True)
        )
    return out


async def write_all(store: Store, ops: Sequence[Op], parallel: int = 8) -> None:
    """Write `ops` in transactions of `MAX_TXN_OPS`, `parallel` in flight."""
    batches = [ops[i : i + MAX_TXN_OPS] for i in range(0, len(ops), MAX_TXN_OPS)]
    limit = asyncio.Semaphore(parallel)

    async def one(batch: Sequence[Op]) -> None:
        async with limit:
            await store.txn([], batch)

    await asyncio.gather(*(one(b) for b in batches))


@dataclass
class _Slot:
    """What runs for one (service, slot) on the simulated nodes: task id -> (node, container)."""

    running: dict[str, tuple[str, str]] = field(default_factory=dict)


class SimAgents:
    """The agents of every simulated node, as one follower of `tasks/`.

    `changed(kvs)` / `removed(keys)` take the watch's puts and deletes and return the
    status writes they call for; the caller flushes them. No I/O here but the runtime's
    (in memory)."""

    def __init__(self, keys: Keys, nodes: Iterable[NodeInfo], cluster: str = "sim") -> None:
        self.keys, self.cluster = keys, cluster
        self.runtimes = {n.id: SimRuntime(n.id) for n in nodes}
        self.slots: dict[tuple[str, int], _Slot] = {}
        self.lease = 0

    def _status(self, task: Assignment, container_id: str) -> TaskStatus:
        return TaskStatus(
            task.task_id,
            task.service,
            task.slot,
            task.node,
            TaskState.RUNNING.value,
            container_id=container_id,
            address=SIM_ADDRESS,
            message="simulated: nothing runs",
            updated_at=time.time(),
        )

    async def _want(self, service: str, slot: int, wanted: list[Assignment]) -> list[Op]:
        """Make the slot run exactly the `wanted` tasks that are on simulated nodes."""
        ops: list[Op] = []
        here = [t for t in wanted if t.node in self.runtimes]
        state = self.slots.get((service, slot))
        if state is None:
            if not here:
                return ops
            state = self.slots[(service, slot)] = _Slot()
        ids = {t.task_id for t in here}
        for task_id, (node, container_id) in list(state.running.items()):
            if task_id not in ids:
                await self.runtimes[node].remove(container_id)
                del state.running[task_id]
                ops.append(Delete(self.keys.status(task_id)))
        for task in here:
            if task.task_id in state.running:
                continue
            labels = {LABELS.SERVICE: service, LABELS.SLOT: str(slot), LABELS.TASK: task.task_id}
            spec = ContainerSpec(f"{service}.{slot}.{task.task_id}", "", labels)
            container = await self.runtimes[task.node].run(spec)
            state.running[task.task_id] = (task.node, container.id)
            ops.append(
                Put(self.keys.status(task.task_id), self._status(task, container.id).to_json(), self.lease)
            )
        if not state.running:
            del self.slots[(service, slot)]
        return ops

    async def changed(self, kvs: Iterable[KV]) -> list[Op]:
        ops: list[Op] = []
        for kv in kvs:
            task = Assignment.from_json(kv.value)
            wanted = [task] if task.desired == _RUNNING else []
            old = task.handed_off()
            if old is not None:
                wanted.append(old)  # start-first: the old task serves until the handoff ends
            ops += await self._want(task.service, task.slot, wanted)
        return ops

    async def removed(self, keys: Iterable[str]) -> list[Op]:
        ops: list[Op] = []
        for key in keys:
            service, slot = self.keys.parse_task(key)
            ops += await self._want(service, slot, [])
        return ops

    async def relisted(self, kvs: list[KV]) -> list[Op]:
        """After a (re-)list: the slots not listed any more are gone."""
        listed = {self.keys.parse_task(kv.key) for kv in kvs}
        gone = [self.keys.task(s, n) for s, n in self.slots if (s, n) not in listed]
        return await self.removed(gone) + await self.changed(kvs)

    def all_statuses(self) -> list[Op]:
        """Every running task's status again (a new lease: the old keys died with the old one)."""
        ops: list[Op] = []
        for (service, slot), state in self.slots.items():
            for task_id, (node, container) in state.running.items():
                status = TaskStatus(
                    task_id, service, slot, node, TaskState.RUNNING.value, container_id=container,
                    address=SIM_ADDRESS, message="simulated: nothing runs", updated_at=time.time(),
                )  # fmt: skip
                ops.append(Put(self.keys.status(task_id), status.to_json(), self.lease))
        return ops

    @property
    def running(self) -> int:
        return sum(len(s.running) for s in self.slots.values())


class SimCluster:
    """N simulated nodes on one lease, and their agents (`report=False`: register only)."""

    def __init__(
        self, store: Store, keys: Keys, nodes: list[NodeInfo], ttl: int = 10, report: bool = True
    ) -> None:
        self.store, self.keys, self.nodes, self.report = store, keys, nodes, report
        self.session = Session(store, ttl)
        self.agents = SimAgents(keys, nodes)
        self.registered = asyncio.Event()

    async def register(self) -> None:
        lease = self.session.lease
        self.agents.lease = lease
        await write_all(self.store, [Put(self.keys.node(n.id), n.to_json(), lease) for n in self.nodes])
        self.registered.set()

    async def _renewed(self, lease: int) -> None:
        await self.register()
        await write_all(self.store, self.agents.all_statuses())

    async def run(self) -> None:
        await self.session.start()
        await self.register()
        self.session.on_renewed(self._renewed)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.session.run(), name="sim-session")
            if self.report:
                tg.create_task(self._follow(), name="sim-agents")

    async def _follow(self) -> None:
        backoff = 0.1
        while True:
            try:
                kvs, revision = await self.store.range(self.keys.tasks)
                await write_all(self.store, await self.agents.relisted(kvs))
                backoff = 0.1
                async for batch in self.store.watch(self.keys.tasks, revision + 1):
                    puts = [ev.kv for ev in batch.events if ev.kind == "put"]
                    deletes = [ev.kv.key for ev in batch.events if ev.kind == "delete"]
                    ops = await self.agents.removed(deletes) + await self.agents.changed(puts)
                    if ops and self.session.valid.is_set():
                        await write_all(self.store, ops)
            except Compacted as exc:
                log.info("simulated agents: %s; re-listing", exc)
            except StoreError as exc:
                log.warning("simulated agents: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def close(self) -> None:
        """Revoke the lease: every simulated node (and its statuses) vanishes at once."""
        await self.session.close(revoke=True)


async def _main(args: argparse.Namespace) -> None:
    from node.security.etcd_tls import read_etcd_tls  # here: the rest of this module runs on any Store
    from node.store.etcd import EtcdStore

    tls = read_etcd_tls(args.etcd_ca, args.etcd_cert, args.etcd_key) if args.etcd_ca else None
    store = EtcdStore(args.etcd.split(","), tls=tls)
    await store.connect()
    nodes = sim_nodes(args.nodes, args.cpu, args.memory, args.labels, args.zones, args.id_prefix)
    sim = SimCluster(store, Keys(args.prefix), nodes, args.ttl, not args.no_status)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(sim.run(), name="simcluster")
    registered = asyncio.create_task(sim.registered.wait())
    await asyncio.wait({runner, registered}, return_when=asyncio.FIRST_COMPLETED)
    if sim.registered.is_set():
        print(
            f"simcluster: {len(nodes)} simulated nodes registered (lease {sim.session.lease:x})", flush=True
        )
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
    registered.cancel()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    if not args.keep:
        with contextlib.suppress(StoreError):
            await sim.close()
    await store.close()


def main(argv: Sequence[str] | None = None) -> None:
    from node.model.config import ConfigError, parse_labels
    from node.model.spec import parse_memory

    ap = argparse.ArgumentParser(prog="python -m node.dev.simcluster", description=__doc__.split("\n")[0])
    ap.add_argument("--etcd", default="127.0.0.1:2379", help="etcd endpoints, host:port[,host:port...]")
    ap.add_argument("--etcd-ca", default="", help="CA of etcd's certificate (PEM): TLS to etcd")
    ap.add_argument("--etcd-cert", default="", help="client certificate for etcd (PEM)")
    ap.add_argument("--etcd-key", default="", help="its key (PEM, 0600)")
    ap.add_argument("--prefix", default=Keys().prefix, help="key prefix in etcd [%(default)s]")
    ap.add_argument("--nodes", type=int, default=100, help="how many simulated nodes [%(default)s]")
    ap.add_argument("--cpu", type=float, default=8.0, help="cores each offers [%(default)s]")
    ap.add_argument(
        "--memory", type=parse_memory, default=parse_memory("32Gi"), help="memory each offers [32Gi]"
    )
    ap.add_argument("--label", dest="label_items", action="append", default=[], help="key=value (repeatable)")
    ap.add_argument("--zones", default="", help="comma-separated values of the `zone` label, cycled")
    ap.add_argument("--id-prefix", default="sim", help="node ids are <id-prefix>-00001... [%(default)s]")
    ap.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds [%(default)s]")
    ap.add_argument("--no-status", action="store_true", help="register only; report no task status")
    ap.add_argument("--keep", action="store_true", help="on exit, leave the nodes to expire with the lease")
    args = ap.parse_args(argv)
    try:
        args.labels = parse_labels(args.label_items)
    except ConfigError as exc:
        ap.error(str(exc))
    args.zones = [z for z in args.zones.split(",") if z]
    if not 1 <= args.nodes <= 100_000:
        ap.error("--nodes must be between 1 and 100000")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s simcluster %(levelname)s %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
