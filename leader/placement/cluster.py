"""The scheduler's mutable view of the cluster during one pass.

Nodes are numbered 0..n-1 in id order (so "lowest index" is "lowest id", the final
tie-break everywhere). Per node, plain lists hold capacity, what is reserved and how
many tasks run; every placement of every service in the pass goes through `charge`,
so capacity is shared between the services of one pass and never overcommitted.

Indexes, built on first use and kept current by `charge`/`release`:
- load heaps: the active nodes (all, or those with one value of a label) ordered by
  load, `(share, tasks, index, version)`. `share` is the larger of the reserved cpu and
  memory fractions. A change of a node pushes a new entry into every heap it is in;
  entries whose version is not the node's current one are stale and skipped when
  popped (lazy deletion), so an update costs O(log n) per heap, never a re-sort.
- eligibility masks: for each distinct constraint set, which nodes satisfy it
  (bytearray), computed once per pass.
- the fit tree (`leader.placement.fit`), for binpack, when a service needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from heapq import heapify, heappush

from leader.placement.fit import FitTree
from leader.placement.requirements import capacity_millicores
from node.model.constraints import Constraint
from node.model.domain import Availability, NodeInfo

Entry = tuple[float, int, int, int]  # (share, tasks, node index, version)
ACTIVE = Availability.ACTIVE.value


class Cluster:
    def __init__(self, nodes: Mapping[str, NodeInfo], availability: Mapping[str, str]) -> None:
        self.ids = sorted(nodes)
        self.index = {node: i for i, node in enumerate(self.ids)}
        infos = [nodes[node] for node in self.ids]
        self.labels = [info.labels for info in infos]
        self.cap_cpu = [capacity_millicores(info.cpu) for info in infos]
        self.cap_mem = [max(0, int(info.memory)) for info in infos]
        self.availability = [availability.get(node, ACTIVE) for node in self.ids]
        self.active = bytearray(a == ACTIVE for a in self.availability)
        n = len(self.ids)
        self.used_cpu = [0] * n
        self.used_mem = [0] * n
        self.tasks = [0] * n
        self.version = [0] * n
        self._heaps_of: list[list[list[Entry]]] = [[] for _ in range(n)]
        self._all: list[Entry] | None = None
        self._by_label: dict[str, dict[str | None, list[Entry]]] = {}
        self.subset_size: dict[int, int] = {}  # id(heap) -> nodes in it
        self._single: dict[Constraint, bytearray] = {}
        self._matching: dict[tuple[Constraint, ...], bytearray] = {}
        self._eligible: dict[tuple[Constraint, ...], tuple[bytearray, list[int]]] = {}
        self._tree: FitTree | None = None

    def __len__(self) -> int:
        return len(self.ids)

    # -- capacity -----------------------------------------------------------------------

    def free_cpu(self, i: int) -> int:
        return self.cap_cpu[i] - self.used_cpu[i]

    def free_mem(self, i: int) -> int:
        return self.cap_mem[i] - self.used_mem[i]

    def fits(self, i: int, cpu: int, memory: int) -> bool:
        return self.cap_cpu[i] - self.used_cpu[i] >= cpu and self.cap_mem[i] - self.used_mem[i] >= memory

    def share(self, i: int) -> float:
        cap_c, cap_m, used_c, used_m = self.cap_cpu[i], self.cap_mem[i], self.used_cpu[i], self.used_mem[i]
        c = used_c / cap_c if cap_c else (1.0 if used_c else 0.0)
        m = used_m / cap_m if cap_m else (1.0 if used_m else 0.0)
        return c if c > m else m

    def load(self, i: int) -> tuple[float, int]:
        return self.share(i), self.tasks[i]

    def charge(self, i: int, cpu: int, memory: int, tasks: int = 1) -> None:
        self.used_cpu[i] += cpu
        self.used_mem[i] += memory
        self.tasks[i] += tasks
        self._changed(i)

    def release(self, i: int, cpu: int, memory: int) -> None:
        self.charge(i, -cpu, -memory, -1)

    def _changed(self, i: int) -> None:
        self.version[i] += 1
        heaps = self._heaps_of[i]
        if heaps:
            entry = (self.share(i), self.tasks[i], i, self.version[i])
            for heap in heaps:
                heappush(heap, entry)
        if self._tree is not None:
            self._tree.dirty.add(i)

    # -- indexes ------------------------------------------------------------------------

    def _entry(self, i: int) -> Entry:
        return (self.share(i), self.tasks[i], i, self.version[i])

    def heap_all(self) -> list[Entry]:
        """Every active node by load."""
        if self._all is None:
            self._all = self._heap([i for i in range(len(self.ids)) if self.active[i]])
        return self._all

    def heap_label(self, key: str, value: str | None) -> list[Entry]:
        """The active nodes whose label `key` is `value` (None: nodes without it), by load."""
        heaps = self._by_label.get(key)
        if heaps is None:
            members: dict[str | None, list[int]] = {}
            for i in range(len(self.ids)):
                if self.active[i]:
                    members.setdefault(self.labels[i].get(key), []).append(i)
            heaps = self._by_label[key] = {v: self._heap(nodes) for v, nodes in members.items()}
        heap = heaps.get(value)
        if heap is None:
            heap = heaps[value] = []
            self.subset_size[id(heap)] = 0
        return heap

    def tidy(self, heap: list[Entry]) -> list[Entry]:
        """Drop the stale entries of a shared heap once they outnumber the live ones."""
        if len(heap) > 2 * self.subset_size[id(heap)] + 64:
            version = self.version
            heap[:] = [e for e in heap if e[3] == version[e[2]]]
            heapify(heap)
        return heap

    def _heap(self, nodes: list[int]) -> list[Entry]:
        heap = [self._entry(i) for i in nodes]
        heapify(heap)
        for i in nodes:
            self._heaps_of[i].append(heap)
        self.subset_size[id(heap)] = len(nodes)
        return heap

    def _mask(self, c: Constraint) -> bytearray:
        """Which nodes satisfy one constraint (cached: services share constraints)."""
        mask = self._single.get(c)
        if mask is None:
            n = len(self.ids)
            if c.label is None:  # node.id: one node at most differs from the rest
                mask = bytearray(n) if c.equal else bytearray(b"\x01") * n
                i = self.index.get(c.value)
                if i is not None:
                    mask[i] = c.equal
            else:
                ids, labels = self.ids, self.labels
                mask = bytearray(c.matches(ids[i], labels[i]) for i in range(n))
            self._single[c] = mask
        return mask

    def matching(self, constraints: tuple[Constraint, ...]) -> bytearray:
        """Which nodes satisfy every constraint, whatever their availability."""
        mask = self._matching.get(constraints)
        if mask is None:
            mask = _and(len(self.ids), [self._mask(c) for c in constraints])
            self._matching[constraints] = mask
        return mask

    def eligible(self, constraints: tuple[Constraint, ...]) -> tuple[bytearray, list[int]]:
        """Nodes that may take new tasks under `constraints`: active and matching (mask, list)."""
        found = self._eligible.get(constraints)
        if found is None:
            mask = _and(len(self.ids), [self.matching(constraints), self.active])
            found = self._eligible[constraints] = (mask, _ones(mask))
        return found

    def fit_tree(self) -> FitTree:
        """The binpack index over active nodes, fullest first (built on first use)."""
        if self._tree is None:
            order = sorted(
                (i for i in range(len(self.ids)) if self.active[i]),
                key=lambda i: (-self.share(i), -self.cap_mem[i], -self.cap_cpu[i], i),
            )
            self._tree = FitTree(order, self.free_cpu, self.free_mem)
        self._tree.flush()
        return self._tree


def _and(n: int, masks: list[bytearray]) -> bytearray:
    """The bytewise AND of 0/1 masks of n bytes (all ones for none), in C via big ints."""
    if not masks:
        return bytearray(b"\x01") * n
    combined = int.from_bytes(masks[0], "little")
    for mask in masks[1:]:
        combined &= int.from_bytes(mask, "little")
    return bytearray(combined.to_bytes(n, "little"))


def _ones(mask: bytearray) -> list[int]:
    """Indexes of the 1 bytes, in order."""
    if mask.count(1) * 8 >= len(mask):
        return [i for i, ok in enumerate(mask) if ok]
    out, i = [], mask.find(1)
    while i >= 0:
        out.append(i)
        i = mask.find(1, i + 1)
    return out
