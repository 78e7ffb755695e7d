"""Simulate a gossip cluster in virtual time: the real `Memberlist` code over `MemoryNetwork`.

The virtual clock
-----------------
`VirtualTimeLoop` is an ordinary `asyncio.SelectorEventLoop` whose `time()` returns
a virtual clock, and whose selector never sleeps. asyncio's loop, once no callback is
ready, asks its selector to wait `timeout` seconds: the time until the earliest timer
(`call_at`, `asyncio.sleep`, timeouts). `_VirtualSelector.select` first polls the
real selector without blocking (the loop's self-pipe keeps working), and if nothing
is ready it advances the clock by `timeout` and returns at once, so the loop finds
that timer due and runs it. Time therefore jumps from one timer to the next: code
sees exactly the timings it would see in real time (every `asyncio.sleep`,
`call_later` and `loop.time()` is virtual), with no sleeping, and ten minutes of a
50-member cluster take seconds. Anything that really blocks on I/O or uses
`time.monotonic()` directly is outside the virtual clock.

The harness
-----------
`SimCluster` starts n members named n000, n001, … at addresses `mem://<name>`,
each knowing all others (as from the registry), records every state change every
member sees (`Change`, with its virtual time), and offers the faults of the network
(crash, restart, pause, resume, cut, heal, leave) and a join through seeds. `simulate()`
runs one scenario in a fresh virtual-time loop and returns a `SimResult` to query.
"""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.gossip import PRESETS, GossipConfig, MemberEvent, Memberlist, MemberState, MemoryNetwork

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """A selector that, instead of waiting `timeout` seconds, adds them to `clock`."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only another thread can wake us
            return list(super().select(None))
        self.clock += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that jumps to the next timer (module docstring)."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return float(self._virtual.clock)


@dataclass(frozen=True, slots=True)
class Change:
    """`observer` saw `node` change to `state` at virtual time `time`."""

    time: float
    observer: str
    node: str
    state: MemberState
    incarnation: int
    previous: MemberState | None


@dataclass
class SimResult:
    n: int
    duration: float
    config: GossipConfig
    names: list[str]
    changes: list[Change]
    messages: int  # every message sent (requests and replies, lost ones included)
    faulted: dict[str, float]  # member -> virtual time of its first fault (crash, pause, cut, leave)
    notes: dict[str, Any] = field(default_factory=dict)

    def of(self, node: str | None = None, state: MemberState | None = None) -> list[Change]:
        """Changes about `node` (any) to `state` (any), as seen by the other members."""
        return [
            c
            for c in self.changes
            if c.observer != c.node
            and (node is None or c.node == node)
            and (state is None or c.state is state)
        ]

    def false_deads(self) -> list[Change]:
        """DEAD verdicts about a member that had no fault, by a member that had none."""
        faulted = self.faulted
        return [c for c in self.of(state=DEAD) if c.node not in faulted and c.observer not in faulted]

    def suspicions(self) -> list[Change]:
        """Members first suspecting a healthy member (the origins and the relays alike)."""
        return [c for c in self.of(state=SUSPECT) if c.node not in self.faulted]

    def refutations(self) -> int:
        return sum(1 for c in self.changes if c.observer == c.node and c.previous is ALIVE)

    def first(self, node: str, states: Iterable[MemberState], after: float = 0.0) -> float | None:
        wanted = set(states)
        times = [c.time for c in self.of(node) if c.state in wanted and c.time >= after]
        return min(times, default=None)

    def known_by(
        self, node: str, states: Iterable[MemberState], after: float, fraction: float = 1.0
    ) -> float | None:
        """When `fraction` of the other unfaulted members had first seen `node` in `states`."""
        wanted = set(states)
        observers = [m for m in self.names if m != node and m not in self.faulted]
        first: dict[str, float] = {}
        for c in self.of(node):
            if c.state in wanted and c.time >= after and c.observer not in first:
                first[c.observer] = c.time
        times = sorted(first[o] for o in observers if o in first)
        need = max(1, -(-int(fraction * len(observers) * 1000) // 1000))
        return times[need - 1] if len(times) >= need else None


class SimCluster:
    """n members on one `MemoryNetwork` in the running (virtual-time) loop."""

    def __init__(
        self,
        n: int,
        config: GossipConfig,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.0005, 0.002),
        seed: int = 0,
    ) -> None:
        self.n, self.config, self.seed = n, config, seed
        self.rng = random.Random(seed)
        self.net = MemoryNetwork(loss, latency, random.Random(self.rng.random()))
        width = max(3, len(str(n - 1)))
        self.names = [f"n{i:0{width}d}" for i in range(n)]
        self.nodes: dict[str, Memberlist] = {}
        self.changes: list[Change] = []
        self.faulted: dict[str, float] = {}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}

    @staticmethod
    def address(name: str) -> str:
        return f"mem://{name}"

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def start(self) -> None:
        for name in self.names:
            self._start(name)

    async def join(self, name: str, seeds: Iterable[str]) -> int:
        """A new member that knows only `seeds` (names) and joins through them."""
        self.names.append(name)
        member = self._start(name, known=())
        return await member.join([self.address(s) for s in seeds])

    def _start(
        self, name: str, incarnation: int | None = None, known: Iterable[str] | None = None
    ) -> Memberlist:
        address = self.address(name)
        member = Memberlist(
            name, address, self.net.transport(address), self.config, random.Random(self.rng.random())
        )
        if incarnation is not None:
            member.incarnation = incarnation
        for other in self.names if known is None else known:
            if other != name:
                member.add(other, self.address(other))
        self.nodes[name] = member
        self.net.register(self.address(name), member)
        queue = member.subscribe()
        loop = asyncio.get_running_loop()
        self._tasks[name] = [
            loop.create_task(self._record(name, queue), name=f"record-{name}"),
            loop.create_task(member.run(), name=f"run-{name}"),
        ]
        return member

    async def _record(self, observer: str, queue: asyncio.Queue[MemberEvent]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            e = await queue.get()
            self.changes.append(Change(loop.time(), observer, e.node, e.state, e.incarnation, e.previous))

    def _fault(self, name: str) -> None:
        self.faulted.setdefault(name, self.now)

    # -- faults ---------------------------------------------------------------------

    def crash(self, name: str) -> None:
        self._fault(name)
        self.net.crash(self.address(name))
        for task in self._tasks.pop(name, []):
            task.cancel()

    def restart(self, name: str, incarnation: int | None = None) -> Memberlist:
        """A new process at the same address, knowing everyone from the registry."""
        self.crash(name)
        return self._start(name, incarnation)

    def pause(self, name: str) -> None:
        """A stopped process (SIGSTOP): its loops and timers stop, its messages wait."""
        self._fault(name)
        self.net.pause(self.address(name))
        self._tasks[name].pop().cancel()  # run(): probes, reconnects, suspicion timers

    def resume(self, name: str) -> None:
        """SIGCONT: what waited is handled first, then its loops and timers run again."""
        task = asyncio.get_running_loop().create_task(self.nodes[name].run(), name=f"run-{name}")
        self._tasks[name].append(task)
        self.net.resume(self.address(name))

    def cut(self, names: Iterable[str]) -> None:
        """Partition `names` from everyone else."""
        group = list(names)
        for name in group:
            self._fault(name)
        self.net.partition([self.address(m) for m in group])

    def heal(self) -> None:
        self.net.heal()

    async def leave(self, name: str) -> None:
        self._fault(name)
        await self.nodes[name].leave()

    # -- views ----------------------------------------------------------------------

    def view(self, observer: str, node: str) -> MemberState | None:
        member = self.nodes[observer].member(node)
        return member.state if member else None

    def everyone_sees(self, node: str, state: MemberState, observers: Iterable[str] | None = None) -> bool:
        who = [m for m in (observers or self.names) if m != node]
        return all(self.view(o, node) is state for o in who)

    async def wait_for(
        self, condition: Callable[[], bool], timeout: float, step: float = 0.05
    ) -> float | None:
        """Poll `condition` in virtual time; the time it held, or None after `timeout`."""
        deadline = self.now + timeout
        while self.now <= deadline:
            if condition():
                return self.now
            await asyncio.sleep(step)
        return None

    async def stop(self) -> None:
        tasks = [t for ts in self._tasks.values() for t in ts]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r

    def result(self, duration: float) -> SimResult:
        sent = sum(self.net.sent.values())
        return SimResult(self.n, duration, self.config, self.names, self.changes, sent, dict(self.faulted))


Script = Callable[[SimCluster], Awaitable[Any]]


def simulate(
    n: int,
    loss: float = 0.0,
    duration: float = 600.0,
    *,
    crash: Mapping[int, float] | None = None,
    seed: int = 0,
    config: GossipConfig | str = "lan",
    latency: tuple[float, float] = (0.0005, 0.002),
    script: Script | None = None,
) -> SimResult:
    """Run n members for `duration` virtual seconds (longer if `script` takes longer).

    `crash` maps member indexes to the virtual time they crash at; `script(cluster)`
    runs alongside (faults, waits, assertions) and its return value is kept in
    `result.notes["script"]`. Any error inside the loop fails the simulation.
    """
    cfg = PRESETS[config] if isinstance(config, str) else config
    errors: list[dict[str, Any]] = []

    async def main() -> SimResult:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        cluster = SimCluster(n, cfg, loss, latency, seed)
        cluster.start()
        for index, at in (crash or {}).items():
            loop.call_at(at, cluster.crash, cluster.names[index])
        notes: dict[str, Any] = {}
        if script is not None:
            notes["script"] = await script(cluster)
        await asyncio.sleep(max(0.0, duration - loop.time()))
        end = loop.time()
        await cluster.stop()
        result = cluster.result(end)
        result.notes.update(notes)
        return result

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        result = runner.run(main())
    if errors:
        raise RuntimeError(f"error inside the simulation: {errors[0]}")
    return result
