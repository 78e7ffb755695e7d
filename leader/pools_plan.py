"""How many nodes each pool asks for, and which it gives back: `decide(...)`, a pure function.

Inputs, all from one leader pass: the pools (`node.model.pools.PoolSpec`), the pool
nodes' records (`poolnodes/`), the alive nodes, which of them hold a task, and what
waits for capacity (`Demand`: the replicas the scheduler could place nowhere).

**Asking.** The replicas that wait are packed, largest first, into bins of each pool's
node size (`node.cpu`, `node.memory`; a pool's node satisfies a service's constraints
as its labels do, plus `shoal.pool=<pool>`). The nodes already asked for and not yet
joined are bins first: a request is made once per need, whatever the number of passes
or leaders in between (the records are in etcd before any provider call). Then new bins
are opened in the first pool (by name) whose node fits and whose nodes (every record
but a failed one) are fewer than `max`. A pool below `min` asks for the difference. A
pool whose last provider call failed asks nothing before its `retry_at`.

**Giving back.** A joined node that held no task for `idle_timeout` (the leader keeps
`empty_since` in memory: a new leader starts the clock afresh, so a failover delays a
return, never hastens it) is given back while the pool stays at `min` or above. A node
asked for and not joined within `timeout + join_timeout` is given back too, and so is
every node of a pool that is no longer declared (once it is empty).

Replicas a new node cannot help are not counted: global services' pending nodes, and
slots pinned to a node by a volume claim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from leader.placement.requirements import capacity_millicores
from node.model.constraints import Constraint
from node.model.pools import PoolNode, PoolSpec, PoolState

_IN_FLIGHT = (PoolState.REQUESTED.value, PoolState.CREATED.value)
_LEAVING = (PoolState.DELETING.value, PoolState.RELEASED.value)


@dataclass(frozen=True)
class Demand:
    """`count` replicas of `service`, each reserving `cpu` millicores and `memory` bytes."""

    service: str
    count: int
    cpu: int
    memory: int
    constraints: tuple[Constraint, ...] = ()
    max_per_node: int = 1 << 62


@dataclass
class Decision:
    create: dict[str, int] = field(default_factory=dict)  # pool -> nodes to ask for now
    give_back: dict[str, str] = field(default_factory=dict)  # node -> why
    forget: list[str] = field(default_factory=list)  # failed records whose back-off is over
    empty_since: dict[str, float] = field(default_factory=dict)  # joined empty node -> since
    waiting: dict[str, int] = field(default_factory=dict)  # service -> replicas no pool can take

    @property
    def empty(self) -> bool:
        return not self.create and not self.give_back and not self.forget


@dataclass
class _Bin:
    pool: str
    cpu: int
    memory: int
    per_service: dict[str, int] = field(default_factory=dict)

    def take(self, d: Demand) -> bool:
        if self.cpu < d.cpu or self.memory < d.memory or self.per_service.get(d.service, 0) >= d.max_per_node:
            return False
        self.cpu -= d.cpu
        self.memory -= d.memory
        self.per_service[d.service] = self.per_service.get(d.service, 0) + 1
        return True


def fits(pool: PoolSpec, d: Demand) -> bool:
    """Would one replica of `d` fit on an empty node of `pool`?"""
    labels = pool.node_labels()
    return (
        d.cpu <= capacity_millicores(pool.node_cpu)
        and d.memory <= pool.node_memory
        and all(c.matches(f"{pool.name}-new", labels) for c in d.constraints)
    )


def _bin(pool: PoolSpec) -> _Bin:
    return _Bin(pool.name, capacity_millicores(pool.node_cpu), pool.node_memory)


def decide(
    pools: Mapping[str, PoolSpec],
    records: Iterable[PoolNode],
    alive: Iterable[str],
    busy: Iterable[str],
    demand: Iterable[Demand],
    now: float,
    empty_since: Mapping[str, float] | None = None,
) -> Decision:
    out = Decision()
    alive_set, busy_set = set(alive), set(busy)
    by_pool: dict[str, list[PoolNode]] = {}
    for r in sorted(records, key=lambda r: (r.pool, r.node)):
        by_pool.setdefault(r.pool, []).append(r)
    # failed records: a back-off marker until retry_at, then forgotten
    blocked = set()
    for pool, rs in by_pool.items():
        for r in rs:
            if r.retry_at > now:  # a failed create, being given back or given back
                blocked.add(pool)
            elif r.state == PoolState.FAILED.value:
                out.forget.append(r.node)
    # give back: removed pools, join timeouts, idle nodes
    since = dict(empty_since or {})
    for pool, rs in by_pool.items():
        spec = pools.get(pool)
        live = [r for r in rs if r.state != PoolState.FAILED.value and r.state not in _LEAVING]
        kept = len(live)
        idle: list[tuple[float, str]] = []
        for r in live:
            if r.node in alive_set and r.node not in busy_set:
                start = since.get(r.node, now)
                out.empty_since[r.node] = start
            if spec is None:
                if r.node not in busy_set:
                    out.give_back[r.node] = f"pool {pool} is no longer declared"
                continue
            joined = r.node in alive_set or r.state == PoolState.JOINED.value
            if not joined and now - r.requested_at > spec.timeout + spec.join_timeout:
                out.give_back[r.node] = (
                    f"asked for {now - r.requested_at:.0f}s ago and not joined "
                    f"(provider timeout {spec.timeout:g}s + join_timeout {spec.join_timeout:g}s)"
                )
                kept -= 1
            elif r.node in out.empty_since and now - out.empty_since[r.node] >= spec.idle_timeout:
                idle.append((out.empty_since[r.node], r.node))
            elif (
                r.state == PoolState.JOINED.value
                and r.node not in alive_set
                and now - r.changed_at > spec.join_timeout  # joined once, gone since
            ):
                out.give_back[r.node] = f"joined, then gone for more than {spec.join_timeout:g}s"
                kept -= 1
        for start, node in sorted(idle):
            if spec is not None and kept > spec.min:
                out.give_back[node] = f"empty for {now - start:.0f}s (idle_timeout {spec.idle_timeout:g}s)"
                kept -= 1
    # ask: pack the waiting replicas into the nodes on their way, then into new ones
    bins = [
        _bin(pools[r.pool])
        for pool, rs in sorted(by_pool.items())
        if pool in pools
        for r in rs
        if r.state in _IN_FLIGHT and r.node not in alive_set and r.node not in out.give_back
    ]
    counted = {pool: sum(r.state != PoolState.FAILED.value for r in rs) for pool, rs in by_pool.items()}
    opened: dict[str, int] = {}

    def _count(pool: str) -> int:  # the pool's nodes, asked for this pass included
        return counted.get(pool, 0) + opened.get(pool, 0)

    units = sorted(demand, key=lambda d: (-max(d.cpu, 1) * max(d.memory, 1), d.service))
    for d in units:
        candidates = [p for name, p in sorted(pools.items()) if fits(p, d)]
        for _ in range(d.count):
            if any(b.take(d) for b in bins if b.pool in {p.name for p in candidates}):
                continue
            room = [p for p in candidates if p.name not in blocked and _count(p.name) < p.max]
            if not room:
                out.waiting[d.service] = out.waiting.get(d.service, 0) + 1
                continue
            fresh = _bin(room[0])
            fresh.take(d)
            bins.append(fresh)
            opened[room[0].name] = opened.get(room[0].name, 0) + 1
    for name, spec in sorted(pools.items()):
        if name in blocked:
            continue
        leaving = sum(1 for r in by_pool.get(name, []) if r.state in _LEAVING or r.node in out.give_back)
        short = min(spec.min - (_count(name) - leaving), spec.max - _count(name))
        if short > 0:
            opened[name] = opened.get(name, 0) + short
    out.create = {name: n for name, n in opened.items() if n > 0}
    return out
