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

A pool with a record that cannot be read (`frozen`) asks for nothing, `min` included,
while it stays: that record may be a node on its way, and the keeper never gives back or
forgets a node whose record it cannot read. Its other nodes are decided as usual.

Replicas a new node cannot help are not counted: global services' pending nodes, and
slots pinned to a node by a volume claim.

**Dedicated** (`launch: dedicated`, decision 68): each waiting replica of such a service
is one node of its own, sized from `node.model.spec_launch.SIZES` (`Demand.size`), in
the pool it names or the first pool by name with room under `max` whose labels meet
its constraints. Its nodes on their way, and its nodes alive and empty, are counted
first (one replica each), so a need is asked for once here too. A dedicated node alive
and empty while no replica of its service waits is given back at once, not after
`idle_timeout`; one that stays empty while replicas wait, after `join_timeout`.
Dedicated nodes count toward `max`, never toward `min`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from leader.placement.requirements import capacity_millicores
from node.model.constraints import Constraint
from node.model.pools import PoolNode, PoolSpec, PoolState
from node.model.spec_launch import DEDICATED_LABEL

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
    dedicated: str | None = None  # launch: dedicated: the pool it names ("" any); None: not dedicated
    size: tuple[float, int] | None = None  # dedicated: the node size of one replica (vCPU, bytes)


@dataclass(frozen=True)
class DedicatedAsk:
    """One node for one replica of `service`, of `cpu` vCPU and `memory` bytes, from `pool`."""

    pool: str
    service: str
    cpu: float
    memory: int


@dataclass
class Decision:
    create: dict[str, int] = field(default_factory=dict)  # pool -> nodes to ask for now
    give_back: dict[str, str] = field(default_factory=dict)  # node -> why
    forget: list[str] = field(default_factory=list)  # failed records whose back-off is over
    empty_since: dict[str, float] = field(default_factory=dict)  # joined empty node -> since
    waiting: dict[str, int] = field(default_factory=dict)  # service -> replicas no pool can take
    dedicated: list[DedicatedAsk] = field(default_factory=list)  # launch: dedicated nodes to ask for

    @property
    def empty(self) -> bool:
        return not self.create and not self.give_back and not self.forget and not self.dedicated


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


def fits_dedicated(pool: PoolSpec, d: Demand) -> bool:
    """May a node of `pool` started for one replica of `d` (a dedicated service) take it?"""
    labels = {**pool.node_labels(), DEDICATED_LABEL: d.service}
    return d.dedicated in ("", pool.name) and all(
        c.matches(f"{pool.name}-new", labels) for c in d.constraints
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
    frozen: Iterable[str] = (),
) -> Decision:
    out = Decision()
    alive_set, busy_set = set(alive), set(busy)
    demand = list(demand)
    wanted = {d.service: d.count for d in demand if d.dedicated is not None}
    by_pool: dict[str, list[PoolNode]] = {}
    for r in sorted(records, key=lambda r: (r.pool, r.node)):
        by_pool.setdefault(r.pool, []).append(r)
    # failed records: a back-off marker until retry_at, then forgotten
    blocked = set(frozen)  # pools with a record the keeper could not read: nothing asked
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
        kept = sum(not r.dedicated for r in live)  # what counts toward min
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
                kept -= not r.dedicated
            elif r.dedicated and r.node in out.empty_since:
                if not wanted.get(r.dedicated):
                    out.give_back[r.node] = f"its task is gone (launch: dedicated, {r.dedicated})"
                elif now - out.empty_since[r.node] > spec.join_timeout:
                    out.give_back[r.node] = f"empty for more than join_timeout {spec.join_timeout:g}s"
            elif r.node in out.empty_since and now - out.empty_since[r.node] >= spec.idle_timeout:
                idle.append((out.empty_since[r.node], r.node))
            elif (
                r.state == PoolState.JOINED.value
                and r.node not in alive_set
                and now - r.changed_at > spec.join_timeout  # joined once, gone since
            ):
                out.give_back[r.node] = f"joined, then gone for more than {spec.join_timeout:g}s"
                kept -= not r.dedicated
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
        if r.state in _IN_FLIGHT
        and r.node not in alive_set
        and r.node not in out.give_back
        and not r.dedicated
    ]
    spare: dict[str, int] = {}  # dedicated service -> its nodes on their way or alive and empty
    for rs in by_pool.values():
        for r in rs:
            if r.dedicated and r.node not in out.give_back and r.state not in _LEAVING:
                on_way = r.state in _IN_FLIGHT and r.node not in alive_set
                if on_way or r.node in out.empty_since:
                    spare[r.dedicated] = spare.get(r.dedicated, 0) + 1
    counted = {pool: sum(r.state != PoolState.FAILED.value for r in rs) for pool, rs in by_pool.items()}
    opened: dict[str, int] = {}
    dedicated = {
        pool: sum(1 for r in rs if r.dedicated and r.state != PoolState.FAILED.value)
        for pool, rs in by_pool.items()
    }

    def _count(pool: str) -> int:  # the pool's nodes, asked for this pass included
        return counted.get(pool, 0) + opened.get(pool, 0)

    units = sorted(demand, key=lambda d: (-max(d.cpu, 1) * max(d.memory, 1), d.service))
    for d in units:
        if d.dedicated is not None:
            _dedicated(d, pools, blocked, spare, _count, opened, dedicated, out)
            continue
        candidates = [p for name, p in sorted(pools.items()) if fits(p, d)]
        names = {p.name for p in candidates}
        for placed in range(d.count):
            if any(b.take(d) for b in bins if b.pool in names):
                continue
            room = [p for p in candidates if p.name not in blocked and _count(p.name) < p.max]
            if not room:  # nothing changes for the next replica either: the rest waits (100k: ms)
                out.waiting[d.service] = out.waiting.get(d.service, 0) + d.count - placed
                break
            fresh = _bin(room[0])
            fresh.take(d)
            bins.append(fresh)
            opened[room[0].name] = opened.get(room[0].name, 0) + 1
    for name, spec in sorted(pools.items()):
        if name in blocked:
            continue
        rs = by_pool.get(name, [])
        leaving = sum(1 for r in rs if (r.state in _LEAVING or r.node in out.give_back) and not r.dedicated)
        ordinary = _count(name) - leaving - dedicated.get(name, 0)  # min counts ordinary nodes only
        short = min(spec.min - ordinary, spec.max - _count(name))
        if short > 0:
            opened[name] = opened.get(name, 0) + short
    for ask in out.dedicated:  # asked for on their own, with their size
        opened[ask.pool] -= 1
    out.create = {name: n for name, n in opened.items() if n > 0}
    return out


def _dedicated(
    d: Demand,
    pools: Mapping[str, PoolSpec],
    blocked: set[str],
    spare: dict[str, int],
    count: Callable[[str], int],
    opened: dict[str, int],
    dedicated: dict[str, int],
    out: Decision,
) -> None:
    """A node per waiting replica of a dedicated service, less those it has on their way."""
    for _ in range(d.count):
        if spare.get(d.service, 0) > 0:
            spare[d.service] -= 1
            continue
        room = [
            p
            for name, p in sorted(pools.items())
            if fits_dedicated(p, d) and name not in blocked and count(name) < p.max
        ]
        if not room or d.size is None:
            out.waiting[d.service] = out.waiting.get(d.service, 0) + 1
            continue
        pool = room[0].name
        out.dedicated.append(DedicatedAsk(pool, d.service, *d.size))
        opened[pool] = opened.get(pool, 0) + 1
        dedicated[pool] = dedicated.get(pool, 0) + 1
