"""Server streams of the client API, bounded per token and ended with their token.

`WatchResolve`, `StreamEvents` and `WatchMembers` (every server-streaming call made
with a token) hold etcd watches and a task on the node for as long as the client
keeps them open. So:

- at most `max_streams_per_token` streams of one token are open at once on a node;
  one more is RESOURCE_EXHAUSTED, naming the bound;
- an open stream's token is checked again before every message it sends and every
  `RECHECK` seconds while it is quiet (from the in-memory credential mirror, no etcd
  call): a stream of a token that was revoked or expired meanwhile ends within about
  a second with UNAUTHENTICATED, instead of delivering until the client hangs up.

Calls without a token (a node's peer streams: the log follows it serves to the node a
client asked) are counted together, at most `PEER_STREAMS` at once: one client's follows,
fanned out by every node it asks, cannot open engine streams without bound here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
import grpc.aio

from node.security.tokens import StoredToken

log = logging.getLogger(__name__)

RECHECK = 1.0
"""Seconds between checks of a quiet stream's token (revoked or expired: the stream ends)."""
PEER_STREAMS = 1024
"""Streams without a token (other nodes' log follows) open at once on a node."""
PEERS = ""  # the slot key of the calls without a token


class Caller(Protocol):
    """Who opened a stream, as far as the guard looks (`node.security.auth.Caller` is one):
    described here, not imported, so that auth, which builds the guard, is not imported back."""

    @property
    def token_id(self) -> str:
        """The id of the token the call was made with; "" when none (not counted)."""
        ...


class TokenLookup(Protocol):
    """Where the guard reads a token's record (`node.security.auth.CredentialStore` is one)."""

    async def token(self, token_id: str) -> StoredToken | None: ...


class StreamGuard:
    def __init__(self, credentials: TokenLookup, max_per_token: int) -> None:
        self.credentials = credentials
        self.max_per_token = max_per_token
        self.open: dict[str, int] = {}  # token id -> streams open now on this node

    def _take(self, token_id: str) -> str | None:
        """Take a slot of the token; the refusal message when none is left."""
        now = self.open.get(token_id, 0)
        if token_id == PEERS:
            if now >= PEER_STREAMS:
                return (
                    f"this node serves {now} streams to other nodes (log follows), its bound; "
                    "follow fewer services or tasks at once"
                )
            self.open[token_id] = now + 1
            return None
        if now >= self.max_per_token:
            return (
                f"token {token_id} has {now} streams open on this node, the bound per token "
                "(max_streams_per_token); close some (watch, events --follow) or use another node"
            )
        self.open[token_id] = now + 1
        return None

    def _give_back(self, token_id: str) -> None:
        left = self.open[token_id] - 1
        if left:
            self.open[token_id] = left
        else:
            del self.open[token_id]

    async def closed_because(self, caller: Caller) -> str | None:
        """Why the caller's token no longer admits it (revoked, expired, gone), or None."""
        try:
            record = await self.credentials.token(caller.token_id)
        except Exception:
            return None  # cannot tell now (store down): the stream's own reads fail if it lasts
        if record is None:
            return f"token {caller.token_id} is no longer known; the stream is closed"
        problem = record.problem()
        return f"{problem}; the stream is closed" if problem is not None else None

    async def guard(
        self, caller: Caller, context: grpc.aio.ServicerContext, items: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """`items`, in one of the token's slots, ended as soon as the token stops admitting it
        (a call without a token, another node's: in the peers' slots, not checked again)."""
        if not caller.token_id:
            if (refused := self._take(PEERS)) is not None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
            try:
                async for item in items:
                    yield item
            finally:
                self._give_back(PEERS)
                with contextlib.suppress(Exception):
                    await items.aclose()  # type: ignore[attr-defined]
            return
        refused = self._take(caller.token_id)
        if refused is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        try:
            async for item in self._watched(items, caller, context):
                yield item
        finally:
            self._give_back(caller.token_id)
            with contextlib.suppress(Exception):
                await items.aclose()  # type: ignore[attr-defined]

    async def _watched(
        self, items: AsyncIterator[Any], caller: Caller, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        it = aiter(items)
        while True:
            step = asyncio.ensure_future(anext(it))
            try:
                while True:
                    done, _ = await asyncio.wait({step}, timeout=RECHECK)
                    reason = await self.closed_because(caller)
                    if reason is not None:
                        log.info("closed a stream of %s: %s", caller, reason)
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
                    if done:
                        break
            finally:
                if not step.done():
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                        await step
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
