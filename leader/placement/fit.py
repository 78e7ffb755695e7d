"""First fit in O(log n): a segment tree over the nodes in binpack order.

Each tree node holds the largest free cpu and the largest free memory below it, so a
subtree where neither maximum reaches the request is skipped whole. The two maxima
may come from different nodes, so a subtree that passes can still hold no node with
both; the search then backs out of it and goes on to the right (correct, and rare
enough to stay fast). Changed nodes are marked dirty and written into the tree just
before the next search (`flush`), so placements of spread services cost nothing here.
"""

from __future__ import annotations

from collections.abc import Callable


class FitTree:
    def __init__(
        self, order: list[int], free_cpu: Callable[[int], int], free_mem: Callable[[int], int]
    ) -> None:
        self.order = order  # position -> node index
        self.position = {node: p for p, node in enumerate(order)}
        self._free_cpu, self._free_mem = free_cpu, free_mem
        size = 1
        while size < max(1, len(order)):
            size *= 2
        self.size = size
        self.cpu = [-1] * (2 * size)
        self.mem = [-1] * (2 * size)
        for p, node in enumerate(order):
            self.cpu[size + p] = free_cpu(node)
            self.mem[size + p] = free_mem(node)
        for t in range(size - 1, 0, -1):
            self.cpu[t] = max(self.cpu[2 * t], self.cpu[2 * t + 1])
            self.mem[t] = max(self.mem[2 * t], self.mem[2 * t + 1])
        self.dirty: set[int] = set()

    def flush(self) -> None:
        cpu, mem, position = self.cpu, self.mem, self.position
        for node in self.dirty:
            p = position.get(node)
            if p is None:
                continue  # not an active node: never a binpack candidate
            t = self.size + p
            cpu[t], mem[t] = self._free_cpu(node), self._free_mem(node)
            t >>= 1
            while t:
                c = cpu[2 * t] if cpu[2 * t] > cpu[2 * t + 1] else cpu[2 * t + 1]
                m = mem[2 * t] if mem[2 * t] > mem[2 * t + 1] else mem[2 * t + 1]
                if cpu[t] == c and mem[t] == m:
                    break
                cpu[t], mem[t] = c, m
                t >>= 1
        self.dirty.clear()

    def first_fit(self, lo: int, need_cpu: int, need_mem: int) -> int:
        """The lowest position >= lo whose node has both free; -1 if none."""
        if lo >= len(self.order):
            return -1
        cpu, mem, size = self.cpu, self.mem, self.size
        t = size + lo
        if cpu[t] >= need_cpu and mem[t] >= need_mem:
            return lo
        while True:
            while t & 1:  # a right child: climb until we can step right
                t >>= 1
                if t == 0:
                    return -1
            t += 1
            if cpu[t] < need_cpu or mem[t] < need_mem:
                continue
            while t < size:  # descend, leftmost first
                left = 2 * t
                if cpu[left] >= need_cpu and mem[left] >= need_mem:
                    t = left
                elif cpu[left + 1] >= need_cpu and mem[left + 1] >= need_mem:
                    t = left + 1
                else:
                    break  # the maxima came from different nodes: nothing fits below
            if t >= size:
                return t - size
