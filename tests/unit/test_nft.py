"""The daemon's nft runner (node.proxy.nft): off the event loop, never a uvloop spawn."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from node.proxy import nft
from node.proxy.nft import NftError, NftMissing, run_nft

NODE = Path(nft.__file__).resolve().parents[1]


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-nft"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


async def test_the_loop_goes_on_while_nft_runs(tmp_path: Path) -> None:
    """A slow nft holds a worker thread, not the event loop: a ticker keeps ticking."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    await run_nft(script(tmp_path, "sleep 0.5; cat >/dev/null\n"), "table ip x\n")
    took = time.monotonic() - started
    task.cancel()
    assert took >= 0.5 and ticks >= 10, (took, ticks)


async def test_nft_reads_the_text_and_errors_say_what_it_said_and_a_hang_is_killed(tmp_path: Path) -> None:
    await run_nft(script(tmp_path, f"cat > {tmp_path}/got\n"), "table ip x\n")
    assert (tmp_path / "got").read_text() == "table ip x\n"
    with pytest.raises(NftError, match="exited with 1: Error: no such table"):
        await run_nft(script(tmp_path, "echo 'Error: no such table' >&2; exit 1\n"), "")
    with pytest.raises(NftMissing, match="not found"):
        await run_nft(str(tmp_path / "absent"), "")
    with pytest.raises(NftError, match=r"no answer within 0\.2s"):
        await run_nft(script(tmp_path, "exec sleep 30\n"), "", timeout=0.2)


def test_no_daemon_module_spawns_through_the_event_loop() -> None:
    """`asyncio.create_subprocess_*` under uvloop forks with gRPC's atfork handlers and
    waits on the loop for the exec: a daemon hung there (node.proxy.nft's doc). The
    daemon's modules run programs through `subprocess` instead; `node.dev` and
    `node.cli` run in the CLI's process, without gRPC's server threads."""
    offenders = [
        str(path.relative_to(NODE.parent))
        for path in NODE.rglob("*.py")
        if path.parts[len(NODE.parts)] not in ("dev", "cli")
        and re.search(r"create_subprocess_(exec|shell)\(", path.read_text())
    ]
    assert offenders == []
