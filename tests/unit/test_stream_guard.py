"""`node.security.streams.StreamGuard` for calls without a token (other nodes' log
follows): counted together, at most PEER_STREAMS at once on a node. Before, they were
not counted at all: one client's follows, fanned out by every node it asked, opened
engine streams without bound on the nodes that hold the tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from node.security import streams
from node.security.streams import StreamGuard


@dataclass
class Peer:
    token_id: str = ""


class Aborted(Exception):
    pass


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


async def endless() -> AsyncIterator[int]:
    while True:
        yield 1
        await asyncio.sleep(3600)


async def test_peer_streams_are_bounded_together_and_a_closed_one_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streams, "PEER_STREAMS", 3)
    guard = StreamGuard(credentials=None, max_per_token=1)  # type: ignore[arg-type]
    held = [guard.guard(Peer(), Context(), endless()) for _ in range(3)]  # type: ignore[arg-type]
    for s in held:
        assert await anext(s) == 1
    with pytest.raises(Aborted) as refused:
        await anext(guard.guard(Peer(), Context(), endless()))  # type: ignore[arg-type]
    code, details = refused.value.args
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "serves 3 streams to other nodes" in details
    await held[0].aclose()  # type: ignore[attr-defined]
    again = guard.guard(Peer(), Context(), endless())  # type: ignore[arg-type]
    assert await anext(again) == 1
    for s in (*held[1:], again):
        await s.aclose()  # type: ignore[attr-defined]
    assert guard.open == {}
