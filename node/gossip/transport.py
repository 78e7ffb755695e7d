"""How a member reaches another one: the `Transport` protocol the shell is written against.

Two calls, both request/response with a deadline, as in the peer gRPC API
(`proto/shoal/v1/peer.proto`): the daemon implements them over gRPC, `memnet`
implements them in memory for tests and simulations. A transport raises
`ProbeFailed` for every way a call can fail (timeout, connection refused, the peer
errors), because SWIM treats them alike: no ack.

The receiving side is `PeerHandler`, implemented by `Memberlist`: the gRPC servicer
(or the in-memory network) hands incoming requests to it.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Protocol

from node.gossip.messages import Ack, Ping, PingReq


class ProbeFailed(Exception):
    """No answer: timeout, refusal or any other failure of one call."""


class Transport(Protocol):
    async def ping(self, address: str, msg: Ping, timeout: float) -> Ack:
        """Send a direct probe; its ack, or `ProbeFailed` after at most `timeout` s."""
        ...

    async def ping_req(self, address: str, msg: PingReq, timeout: float) -> Ack:
        """Ask the member at `address` to probe `msg.target_*`; its answer (ack=True if reached)."""
        ...

    def prune(self, keep: Container[str]) -> None:
        """Drop what is cached for addresses not in `keep` (no member has them any more)."""
        ...


class PeerHandler(Protocol):
    def handle_ping(self, msg: Ping) -> Ack: ...

    async def handle_ping_req(self, msg: PingReq) -> Ack: ...
