"""The node's gossip membership (SWIM, `node.gossip`), wired to the peer API and etcd.

Members are learnt from the etcd registry (`nodes/`, every node's peer address) and
from `--join` seeds; after that, gossip alone decides who is alive. The daemon
starts at an incarnation taken from the wall clock, so a restarted daemon outranks
whatever its peers remember of its previous life and is alive again at once.

A node's ALIVE and LEFT claims are signed with its node key and those about others
are checked against the cluster CA before they are merged (`node.security.gossip_proof`):
`use_tls` gives both the node's certificate, at start and at each renewal (after
which the node re-announces itself, signed with the new key).

This is also the `Liveness` the leader reads (`leader.liveness`) and the view that
`shoal node ls` and `WatchMembers` show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from node.api.gossip_transport import GrpcTransport
from node.gossip.config import GossipConfig
from node.gossip.member import GONE, LIVE, Member, MemberEvent
from node.gossip.memberlist import Memberlist
from node.gossip.messages import Update
from node.model.domain import NodeInfo
from node.model.keys import Keys
from node.security.gossip_proof import GossipProofs
from node.security.tls import ClientTls
from node.store import Store
from node.store.mirrors import mirror

log = logging.getLogger(__name__)
REAP_AFTER = 86400.0  # s a member stays DEAD or LEFT before it is forgotten (NodeConfig.reap_after)
REAP_EVERY = 60.0  # s between two looks for such members


class Membership:
    def __init__(
        self,
        node: str,
        address: str,
        store: Store,
        keys: Keys,
        config: GossipConfig,
        seeds: tuple[str, ...] = (),
        reap_after: float = REAP_AFTER,
    ) -> None:
        self.node = node
        self.transport = GrpcTransport()
        self.registry = mirror(store, keys.nodes, "membership-registry")

        def registered(n: str) -> bool:
            return keys.node(n) in self.registry.items

        self.proofs = GossipProofs(registered)
        self.list = Memberlist(
            node,
            address,
            self.transport,
            config,
            known=registered,
            sign=self._sign,
            verify=self._verify,
        )
        self.list.incarnation = int(time.time())
        self.seeds = seeds
        self.reap_after = reap_after
        self._listeners: list[asyncio.Event] = []
        self._watchers: list[asyncio.Queue[MemberEvent]] = []

    def use_tls(self, tls: ClientTls) -> None:
        """Dial, sign and check with this certificate (start); after a renewal the node's
        ALIVE is re-announced, signed with the new key."""
        renewal = self.transport.tls is not None
        self.transport.set_tls(tls)
        self.proofs.use(tls.ca_pem, tls.key_pem, tls.cert_pem)
        if renewal:
            self.list.reannounce()

    def _sign(self, u: Update) -> bytes:
        return self.proofs.sign(u.node, u.incarnation, u.address, u.state.value)

    def _verify(self, u: Update) -> bool:
        return self.proofs.check(u.node, u.incarnation, u.address, u.state.value, u.proof)

    # -- the leader's Liveness ---------------------------------------------------------

    def dead_since(self) -> dict[str, float]:
        return {m.node: m.since for m in self.list.members() if m.state in GONE and m.node != self.node}

    def alive(self) -> set[str]:
        return {m.node for m in self.list.members() if m.state in LIVE}

    def listener(self) -> asyncio.Event:
        event = asyncio.Event()
        self._listeners.append(event)
        return event

    # -- views -------------------------------------------------------------------------

    def members(self) -> list[Member]:
        return sorted(self.list.members(), key=lambda m: m.node)

    def watch(self) -> asyncio.Queue[MemberEvent]:
        """A queue of every membership change from now on; `unwatch` it when done."""
        queue: asyncio.Queue[MemberEvent] = asyncio.Queue(maxsize=1000)
        self._watchers.append(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[MemberEvent]) -> None:
        with contextlib.suppress(ValueError):
            self._watchers.remove(queue)

    # -- running -----------------------------------------------------------------------

    async def run(self) -> None:
        changes = self.list.subscribe()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.registry.run(), name="membership-registry")
                tg.create_task(self._learn(), name="membership-learn")
                tg.create_task(self._relay(changes), name="membership-events")
                tg.create_task(self.list.run(), name="gossip")
                tg.create_task(self._reap(), name="gossip-reap")
                if self.seeds:
                    tg.create_task(self._join(), name="gossip-join")
        finally:
            await self.transport.close()

    async def _join(self) -> None:
        answered = await self.list.join(list(self.seeds))
        log.info("gossip: %d of %d seed(s) answered", answered, len(self.seeds))

    async def _learn(self) -> None:
        """Add every node of the etcd registry as a member (gossip takes it from there)."""
        changed = self.registry.listener()
        while True:
            await changed.wait()
            changed.clear()
            for kv in self.registry.values():
                info = NodeInfo.from_json(kv.value)
                if info.id != self.node and not info.simulated:  # a simulated node gossips with no one
                    self.list.add(info.id, f"{info.address}:{info.grpc_port}")

    async def _reap(self) -> None:
        """Forget members gone longer than `reap_after` that the registry no longer lists."""
        while True:
            await asyncio.sleep(REAP_EVERY)
            registered = {key.rsplit("/", 1)[-1] for key in self.registry.items}
            forgotten = self.list.forget(self.reap_after, registered)
            if forgotten:
                log.info("gossip: forgot %s, gone for %gs", ", ".join(forgotten), self.reap_after)

    async def _relay(self, changes: asyncio.Queue[MemberEvent]) -> None:
        while True:
            ev = await changes.get()
            was = ev.previous.value if ev.previous else "unknown"
            log.info("gossip: %s %s -> %s (incarnation %d)", ev.node, was, ev.state.value, ev.incarnation)
            for event in self._listeners:
                event.set()
            for queue in self._watchers:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(ev)

    async def leave(self) -> None:
        await self.list.leave()
