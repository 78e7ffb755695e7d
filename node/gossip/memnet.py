"""An in-memory network for tests and simulations (memberlist's MockNetwork, with faults).

Members register their `PeerHandler` (a `Memberlist`) under their address and talk
through `network.transport(own_address)`. Every message (a request or a reply) is
delivered after a random latency by `loop.call_later`, so the network runs on any
event loop, including the virtual-time loop of `tests/gossip_sim.py`, and is lost
with probability `loss`. A call that gets no reply within its timeout raises
`ProbeFailed`, as a real transport would.

Faults:

- `partition(*groups)`: members in different groups (the addresses in no group form
  one more group) cannot reach each other until `heal()`. Checked when a message
  leaves, so messages already in flight still arrive.
- `crash(address)`: its handler is gone and nothing it sends leaves (the caller must
  also cancel its `run()`); `register` again to restart the address.
- `pause(address)` / `resume(address)`: the network side of a stopped process.
  Messages to it wait and are handled on resume (too late for their callers); what it
  sends meanwhile waits and leaves on resume. Stopping its loops and timers is up to
  the caller (cancel its `run()`, start it again on resume).

`sent` counts the messages each address sent (lost ones included).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Container, Coroutine, Iterable
from typing import Any

from node.gossip.messages import Ack, Ping, PingReq
from node.gossip.transport import PeerHandler, ProbeFailed

Deliver = Callable[[], None]


def _resolve(fut: asyncio.Future[Ack], ack: Ack) -> None:
    if not fut.done():
        fut.set_result(ack)


def _fail(fut: asyncio.Future[Ack], address: str) -> None:
    if not fut.done():
        fut.set_exception(ProbeFailed(f"no answer from {address}"))


class MemoryNetwork:
    """A lossy, delaying, partitionable network between in-process members."""

    def __init__(
        self,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.0005, 0.002),
        rng: random.Random | None = None,
    ) -> None:
        self.loss, self.latency = loss, latency
        self.sent: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._handlers: dict[str, PeerHandler] = {}
        self._crashed: set[str] = set()
        self._group: dict[str, int] | None = None
        self._held: dict[str, list[Deliver]] = {}
        self._tasks: set[asyncio.Task[Ack]] = set()

    def register(self, address: str, handler: PeerHandler) -> None:
        self._handlers[address] = handler
        self._crashed.discard(address)

    def transport(self, address: str) -> MemoryTransport:
        return MemoryTransport(self, address)

    def crash(self, address: str) -> None:
        self._handlers.pop(address, None)
        self._held.pop(address, None)
        self._crashed.add(address)

    def partition(self, *groups: Iterable[str]) -> None:
        self._group = {address: i for i, group in enumerate(groups) for address in group}

    def heal(self) -> None:
        self._group = None

    def pause(self, address: str) -> None:
        self._held.setdefault(address, [])

    def resume(self, address: str) -> None:
        for deliver in self._held.pop(address, []):
            deliver()

    # -- delivery -------------------------------------------------------------------

    def send(self, src: str, dst: str, deliver: Deliver) -> None:
        """Carry one message from `src`; `deliver` runs at `dst` after the latency."""
        if src in self._crashed:
            return
        if src in self._held:
            self._held[src].append(lambda: self.send(src, dst, deliver))
            return
        self.sent[src] += 1
        if self.loss and self._rng.random() < self.loss:
            return
        if self._group is not None and self._group.get(src, -1) != self._group.get(dst, -1):
            return
        lo, hi = self.latency
        asyncio.get_running_loop().call_later(self._rng.uniform(lo, hi), self._arrive, dst, deliver)

    def _arrive(self, dst: str, deliver: Deliver) -> None:
        if dst in self._crashed:
            return
        if dst in self._held:
            self._held[dst].append(deliver)
            return
        deliver()

    def handler(self, address: str) -> PeerHandler | None:
        return self._handlers.get(address)

    def spawn(self, coro: Coroutine[Any, Any, Ack], done: Callable[[Ack], None]) -> None:
        """Run a handler as a task, kept alive until done; pass its result on (a failure goes
        to the loop's exception handler)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def finished(t: asyncio.Task[Ack]) -> None:
            self._tasks.discard(t)
            if not t.cancelled():
                done(t.result())

        task.add_done_callback(finished)


class MemoryTransport:
    """The `Transport` of the member at `address` on a `MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self.network, self.address = network, address

    def prune(self, keep: Container[str]) -> None:
        """Nothing is cached per address here."""

    async def ping(self, address: str, msg: Ping, timeout: float) -> Ack:
        net, me = self.network, self.address
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()

        def request() -> None:
            handler = net.handler(address)
            if handler is not None:
                ack = handler.handle_ping(msg)
                net.send(address, me, lambda: _resolve(fut, ack))

        return await self._call(fut, address, timeout, request)

    async def ping_req(self, address: str, msg: PingReq, timeout: float) -> Ack:
        net, me = self.network, self.address
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()

        def request() -> None:
            handler = net.handler(address)
            if handler is not None:
                net.spawn(
                    handler.handle_ping_req(msg),
                    lambda ack: net.send(address, me, lambda: _resolve(fut, ack)),
                )

        return await self._call(fut, address, timeout, request)

    async def _call(self, fut: asyncio.Future[Ack], address: str, timeout: float, request: Deliver) -> Ack:
        timer = asyncio.get_running_loop().call_later(timeout, _fail, fut, address)
        self.network.send(self.address, address, request)
        try:
            return await fut
        finally:
            timer.cancel()
