"""`node.wire.peerstubs.PeerStubs`: one stub per peer address, and what a certificate
renewal does to the old channels (closed later for probes, kept until close for streams)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from node.wire import peerstubs
from node.wire.peerstubs import PeerStubs


class FakeChannel:
    def __init__(self, address: str, tls: Any) -> None:
        self.address, self.tls, self.closed = address, tls, False
        self.gone = asyncio.Event()

    def unary_unary(self, *a: Any, **k: Any) -> None: ...
    def unary_stream(self, *a: Any, **k: Any) -> None: ...
    def stream_unary(self, *a: Any, **k: Any) -> None: ...
    def stream_stream(self, *a: Any, **k: Any) -> None: ...

    async def close(self, grace: float | None = None) -> None:
        self.closed = True
        self.gone.set()


@pytest.fixture
def dialled(monkeypatch: pytest.MonkeyPatch) -> list[FakeChannel]:
    made: list[FakeChannel] = []

    def dial(address: str, tls: Any) -> FakeChannel:
        made.append(FakeChannel(address, tls))
        return made[-1]

    monkeypatch.setattr(peerstubs.rpc, "aio_channel", dial)
    return made


async def test_one_channel_per_address_until_a_renewal(dialled: list[FakeChannel]) -> None:
    stubs = PeerStubs("cert-1")  # type: ignore[arg-type]
    assert stubs.stub("a:1") is stubs.stub("a:1")
    stubs.stub("b:1")
    assert [(c.address, c.tls) for c in dialled] == [("a:1", "cert-1"), ("b:1", "cert-1")]
    stubs.set_tls("cert-2")  # type: ignore[arg-type]
    stubs.stub("a:1")
    assert (dialled[-1].address, dialled[-1].tls) == ("a:1", "cert-2"), "new calls dial with the new one"
    await stubs.close()
    assert all(c.closed for c in dialled)


async def test_old_channels_kept_until_close_without_retire_after(dialled: list[FakeChannel]) -> None:
    stubs = PeerStubs("cert-1")  # type: ignore[arg-type]
    stubs.stub("a:1")
    stubs.set_tls("cert-2")  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not dialled[0].closed, "a followed log stream on the old channel goes on"
    await stubs.close()
    assert dialled[0].closed


async def test_old_channels_closed_after_retire_after(dialled: list[FakeChannel]) -> None:
    stubs = PeerStubs("cert-1", retire_after=0.01)  # type: ignore[arg-type]
    stubs.stub("a:1")
    stubs.set_tls("cert-2")  # type: ignore[arg-type]
    assert not dialled[0].closed, "a probe in flight is not cut"
    await asyncio.wait_for(dialled[0].gone.wait(), 5)
    await stubs.close()


async def test_prune_closes_the_channels_of_addresses_not_kept(dialled: list[FakeChannel]) -> None:
    """Before, a channel stayed cached for every address ever dialled (~40 KiB each)."""
    stubs = PeerStubs("cert-1", retire_after=0.01)  # type: ignore[arg-type]
    kept = stubs.stub("a:1")
    stubs.stub("b:1")
    stubs.prune({"a:1"})
    await asyncio.wait_for(dialled[1].gone.wait(), 5)
    assert not dialled[0].closed and stubs.stub("a:1") is kept
    stubs.stub("b:1")
    assert [c.address for c in dialled] == ["a:1", "b:1", "b:1"], "dialled again when needed"
    await stubs.close()
    assert all(c.closed for c in dialled)
