"""One cached `shoal.v1.Peer` stub per peer address, dialled with this node's client
certificate (mutual TLS), for everything a node asks of another: gossip probes
(`node.api.gossip_transport`), log and exec relays and task lookups (`node.api.taskfind`),
usage and traffic figures.

After a certificate renewal (`set_tls`) new calls dial with the new certificate. What
happens to the old channels is the caller's choice: `retire_after` seconds later they
are closed (short calls, such as probes, are done by then), or with None they stay until
`close` (a followed log stream may last for hours and must not be cut).

`prune(keep)` retires, the same way, the channels of addresses not in `keep`: the
gossip transport calls it with the members' addresses, so its cache holds one channel
per member, not one per address ever dialled (~40 KiB each). The shared stubs of logs,
exec and usage dial only the registered nodes and are not pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Container

import grpc.aio

from node.pb import peer_pb2_grpc
from node.wire import rpc


class PeerStubs:
    def __init__(self, tls: rpc.ClientTls | None = None, retire_after: float | None = None) -> None:
        self.tls = tls
        self.retire_after = retire_after
        self._stubs: dict[str, peer_pb2_grpc.PeerStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}  # the current certificate's, by address
        self._kept: list[grpc.aio.Channel] = []  # an older certificate's, kept until close
        self._retiring: set[asyncio.Task[None]] = set()

    def stub(self, address: str) -> peer_pb2_grpc.PeerStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = self._channels[address] = rpc.aio_channel(address, self.tls)
            stub = self._stubs[address] = peer_pb2_grpc.PeerStub(channel)
        return stub

    def set_tls(self, tls: rpc.ClientTls) -> None:
        """New calls dial with `tls`; the old channels are retired as the module doc says."""
        self.tls = tls
        old, self._channels, self._stubs = list(self._channels.values()), {}, {}
        self._retire(old)

    def prune(self, keep: Container[str]) -> None:
        """Retire the channels of addresses not in `keep`; dialled again if asked for."""
        gone = [address for address in self._channels if address not in keep]
        for address in gone:
            self._stubs.pop(address, None)
        self._retire([self._channels.pop(address) for address in gone])

    def _retire(self, old: list[grpc.aio.Channel]) -> None:
        if not old:
            return
        if self.retire_after is None:
            self._kept.extend(old)
            return
        task = asyncio.get_running_loop().create_task(self._close_later(old), name="peer-retire-channels")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_later(self, channels: list[grpc.aio.Channel]) -> None:
        try:
            await asyncio.sleep(self.retire_after or 0.0)
        finally:
            await _close(channels)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        channels, self._channels, self._kept = [*self._channels.values(), *self._kept], {}, []
        self._stubs.clear()
        await _close(channels)


async def _close(channels: list[grpc.aio.Channel]) -> None:
    for channel in channels:
        with contextlib.suppress(Exception):
            await channel.close(grace=None)
