"""Where the replicas of one service go: spread, binpack, global.

All three only ever choose a node that is active, satisfies the service's constraints
(`mask`), has the reservation free and holds fewer than `max_per_node` of its
replicas; `take(i)` records one replica on node i (and charges the cluster).

**Spread** picks, replica by replica, the node with the fewest replicas of this
service, then the least loaded, then the lowest id. Nodes with none of its replicas
come first, in load order, from a shared load heap of the cluster (`_Shared`, popped
lazily; entries it passes over are put back afterwards) or, when the eligible set is
a small part of that heap, from a heap of just those nodes (`_Local`). Nodes that
already hold one are in a small heap of the service's own, keyed (replicas, load).
So a replica costs O(log n), not a scan of every node.

With `placement.spread: node.labels.K` the eligible nodes are grouped by their value
of K (nodes without it form one group) and each replica goes to the group with the
fewest replicas of the service (then the lowest value), and within it as above.

**Binpack** is first fit over the active nodes in a fixed order, fullest first (then
largest, then id): each replica goes to the first node it fits on. All replicas of a
service are the same size, so a node that is passed over never fits later in the
pass, and the node found takes as many replicas as fit at once. The scheduler hands
services to it in decreasing size, which makes this first-fit-decreasing.

**Global** places one replica on every eligible node that has none and has room.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush, heapreplace

from leader.placement.cluster import Cluster, Entry
from leader.placement.requirements import Requirements

Take = Callable[[int], None]
SMALL = 32  # eligible sets this small always get a heap of their own


class _Shared:
    """Untouched eligible nodes in load order, from one of the cluster's shared heaps."""

    def __init__(self, heap: list[Entry], version: list[int], accept: Callable[[int], bool]) -> None:
        self.heap, self.version, self.accept = heap, version, accept
        self.borrowed: list[Entry] = []

    def peek(self) -> int:
        heap, version = self.heap, self.version
        while heap:
            entry = heap[0]
            i = entry[2]
            if entry[3] != version[i]:
                heappop(heap)  # stale: the node changed since
            elif self.accept(i):
                return i  # left in place: charging the node makes this entry stale
            else:
                self.borrowed.append(heappop(heap))
        return -1

    def restore(self) -> None:
        version = self.version
        for entry in self.borrowed:
            if entry[3] == version[entry[2]]:
                heappush(self.heap, entry)
        self.borrowed.clear()


class _Local:
    """Untouched eligible nodes in load order, from a heap of their own."""

    def __init__(self, cluster: Cluster, nodes: list[int], accept: Callable[[int], bool]) -> None:
        self.heap = [(*cluster.load(i), i) for i in nodes]
        heapify(self.heap)
        self.accept = accept

    def peek(self) -> int:
        heap = self.heap
        while heap:
            i = heap[0][2]
            if self.accept(i):
                return i
            heappop(heap)
        return -1

    def restore(self) -> None:
        pass


class _Group:
    """The spread order inside one set of nodes: untouched ones first, then by (replicas, load)."""

    def __init__(self, source: _Shared | _Local, held: list[tuple[int, float, int, int]]) -> None:
        self.source = source
        self.held = held  # (replicas of the service, share, tasks, index) of nodes holding some
        heapify(held)
        self.from_held = False

    def best(self, fits: Callable[[int], bool]) -> int:
        i = self.source.peek()
        if i >= 0:
            self.from_held = False
            return i
        held = self.held
        while held:
            i = held[0][3]
            if fits(i):
                self.from_held = True
                return i
            heappop(held)  # full, or at max_per_node: for the rest of this service's pass
        return -1

    def placed(self, i: int, key: tuple[int, float, int, int]) -> None:
        if self.from_held:
            heapreplace(self.held, key)
        else:
            heappush(self.held, key)


def _fits(cluster: Cluster, req: Requirements, mine: dict[int, int]) -> Callable[[int], bool]:
    cap_c, cap_m, used_c, used_m = cluster.cap_cpu, cluster.cap_mem, cluster.used_cpu, cluster.used_mem
    cpu, mem, limit = req.cpu, req.memory, req.max_per_node

    def fits(i: int) -> bool:
        return cap_c[i] - used_c[i] >= cpu and cap_m[i] - used_m[i] >= mem and mine.get(i, 0) < limit

    return fits


def _source(
    cluster: Cluster,
    nodes: list[int],
    mask: bytearray,
    base: list[Entry],
    accept: Callable[[int], bool],
) -> _Shared | _Local:
    if len(nodes) <= SMALL or len(nodes) * 4 < cluster.subset_size[id(base)]:
        return _Local(cluster, nodes, accept)
    return _Shared(cluster.tidy(base), cluster.version, lambda i: mask[i] == 1 and accept(i))


def _base_heap(cluster: Cluster, req: Requirements) -> list[Entry]:
    """The smallest shared heap that holds every eligible node: a label `==` subset, or all."""
    best = cluster.heap_all()
    for c in req.constraints:
        if c.label is not None and c.equal:
            heap = cluster.heap_label(c.label, c.value)
            if cluster.subset_size[id(heap)] < cluster.subset_size[id(best)]:
                best = heap
    return best


def spread(
    cluster: Cluster,
    req: Requirements,
    mask: bytearray,
    nodes: list[int],
    mine: dict[int, int],
    count: int,
    take: Take,
) -> None:
    fits = _fits(cluster, req, mine)

    def untouched(i: int) -> bool:
        return i not in mine and fits(i)

    def held_key(i: int) -> tuple[int, float, int, int]:
        return (mine[i], cluster.share(i), cluster.tasks[i], i)

    key = req.spread
    groups: dict[str | None, _Group]
    if key is None:
        base = _base_heap(cluster, req)
        groups = {None: _Group(_source(cluster, nodes, mask, base, untouched), [])}
        group_of: Callable[[int], str | None] = lambda i: None  # noqa: E731
    else:
        labels = cluster.labels
        members: dict[str | None, list[int]] = {}
        for i in nodes:
            members.setdefault(labels[i].get(key), []).append(i)
        groups = {
            v: _Group(_source(cluster, m, mask, cluster.heap_label(key, v), untouched), [])
            for v, m in members.items()
        }
        group_of = lambda i: labels[i].get(key)  # noqa: E731
    replicas = dict.fromkeys(groups, 0)
    for i, n in mine.items():
        value = group_of(i)
        if value in groups:
            replicas[value] += n
            if mask[i]:
                groups[value].held.append(held_key(i))
    order = [(replicas[v], v is None, v or "", v) for v in groups]
    heapify(order)
    try:
        while count > 0 and order:
            n, none, name, value = order[0]
            group = groups[value]
            i = group.best(fits)
            if i < 0:
                heappop(order)
                continue
            take(i)
            group.placed(i, held_key(i))
            heapreplace(order, (n + 1, none, name, value))
            count -= 1
    finally:
        for group in groups.values():
            group.source.restore()


def binpack(
    cluster: Cluster,
    req: Requirements,
    mask: bytearray,
    nodes: list[int],
    mine: dict[int, int],
    count: int,
    take: Take,
) -> None:
    tree = cluster.fit_tree()
    limit, cpu, mem = req.max_per_node, req.cpu, req.memory

    def room(i: int) -> int:
        n = min(count, limit - mine.get(i, 0))
        if cpu:
            n = min(n, cluster.free_cpu(i) // cpu)
        if mem:
            n = min(n, cluster.free_mem(i) // mem)
        return n

    if req.spread is not None:
        _binpack_spread(cluster, req, tree.position, mask, nodes, mine, count, take)
        return
    if len(nodes) <= SMALL or len(nodes) * 8 < len(tree.order):
        candidates = sorted(nodes, key=tree.position.__getitem__)
        for i in candidates:
            n = room(i)
            for _ in range(n):
                take(i)
            count -= max(0, n)
            if count <= 0:
                return
        return
    lo = 0
    while count > 0:
        p = tree.first_fit(lo, cpu, mem)
        if p < 0:
            return
        lo = p + 1
        i = tree.order[p]
        if not mask[i]:
            continue
        n = room(i)
        for _ in range(n):
            take(i)
        count -= max(0, n)


def _binpack_spread(
    cluster: Cluster,
    req: Requirements,
    position: dict[int, int],
    mask: bytearray,
    nodes: list[int],
    mine: dict[int, int],
    count: int,
    take: Take,
) -> None:
    """Even over the values of a label; first fit inside each value's nodes."""
    assert req.spread is not None
    fits = _fits(cluster, req, mine)
    members: dict[str | None, list[int]] = {}
    for i in sorted(nodes, key=position.__getitem__):
        members.setdefault(cluster.labels[i].get(req.spread), []).append(i)
    replicas = dict.fromkeys(members, 0)
    for i, n in mine.items():
        value = cluster.labels[i].get(req.spread)
        if value in replicas:
            replicas[value] += n
    cursor = dict.fromkeys(members, 0)
    order = [(replicas[v], v is None, v or "", v) for v in members]
    heapify(order)
    while count > 0 and order:
        n, none, name, value = order[0]
        candidates, at = members[value], cursor[value]
        while at < len(candidates) and not fits(candidates[at]):
            at += 1  # identical replicas: a node passed over stays full for this service
        cursor[value] = at
        if at == len(candidates):
            heappop(order)
            continue
        take(candidates[at])
        heapreplace(order, (n + 1, none, name, value))
        count -= 1


def one_per_node(
    cluster: Cluster, req: Requirements, nodes: list[int], holding: set[int], take: Take
) -> list[int]:
    """Global mode: a replica on every eligible node without one; returns the nodes without room."""
    short = []
    for i in nodes:
        if i in holding:
            continue
        if cluster.fits(i, req.cpu, req.memory):
            take(i)
        else:
            short.append(i)
    return short
