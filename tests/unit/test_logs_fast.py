"""The short ways of `shoal service logs` (bench/logs.py): Docker's usual stamp sliced
instead of matched, frames cut, split and stamped in one pass, and the CLI's output made
once per task and written per batch. Each must give exactly what the plain way gives."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest

from node.cli.taskio import COLOURS, print_logs
from node.pb import api_pb2
from node.runtime import docker_logs, logmerge
from node.runtime.docker_logs import DockerStreams
from node.runtime.logmerge import Frames, format_line, framed_lines, lines_of, prefix, split_timestamp


def plain_stamp(line: bytes) -> tuple[int, bytes]:
    """The reference: the regex alone, the time through datetime."""
    match = logmerge._STAMP.match(line)
    if match is None:
        return 0, line
    whole, fraction, zone = match.groups()
    tz = "+00:00" if zone == b"Z" else zone.decode()
    seconds = int(datetime.fromisoformat(whole.decode() + tz).timestamp())
    return seconds * 10**9 + int((fraction or b"0").ljust(9, b"0")), line[match.end() :]


def test_the_sliced_stamp_equals_the_matched_one_and_refuses_what_is_not_a_stamp() -> None:
    logmerge._WHOLE.clear()
    lines = [
        b"2026-12-05T21:00:00.123456789Z hello",
        b"2026-12-05T21:00:00.123456789Z hello",  # the second of a second: sliced
        b"2026-12-05T21:00:00.5Z x",
        b"2026-12-05T21:00:00.000000001Z ",
        b"2026-12-05T21:00:00Z no fraction",
        b"2026-12-05T22:00:00.5+01:00 an offset, the same whole second as a cached one",
        b"2026-12-05T21:00:00.12a4Z not digits",
        b"2026-12-05T21:00:00.Z no fraction digits",
        b"2026-12-05T21:00:00.1234567890Z ten digits",
        b"2026-12-05T21:00:00.123456789Zno space",
        b"2026-12-05T21:00:00.1",
        b"2026-12-05T21:00:00.",
        b"plain text",
        b"",
    ]
    for line in lines + lines:
        assert split_timestamp(line) == plain_stamp(line), line
    rng = random.Random(14)
    for _ in range(2000):
        base = 1_700_000_000 + rng.randrange(200)  # few whole seconds: the cache is hit
        whole = datetime.fromtimestamp(base, UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()
        digits = str(rng.randrange(10**9)).rjust(9, "0")[: rng.randrange(1, 10)].encode()
        line = whole + b"." + digits + b"Z " + bytes(rng.randrange(32, 127) for _ in range(rng.randrange(8)))
        assert split_timestamp(line) == plain_stamp(line), line
    assert len(logmerge._WHOLE) <= 64  # bounded


def frame(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_framed_lines_equal_frames_then_lines_then_stamps_whatever_the_reads() -> None:
    stamp = b"2026-12-05T21:00:00.25Z "
    data = b"".join(
        [
            frame(1, stamp + b"one\n"),
            frame(2, stamp + b"err\r\n"),
            frame(1, stamp + b"two\n" + stamp + b"three\n"),  # two lines in one frame
            frame(1, stamp + b"no newline yet"),
            frame(1, b"\n"),
            frame(1, b""),
            frame(1, b"unstamped\n"),
            frame(2, stamp + b"x" * 50 + b"\n"),
        ]
    )

    def plain(frames: Frames, chunk: bytes) -> list[tuple[int, str, bytes]]:
        out = []
        for stream, payload in frames.feed(chunk):
            for line in lines_of(payload):
                at, text = plain_stamp(line)
                out.append((at, stream, text[:20]))
        return out

    for cut in range(len(data) + 1):
        fast, slow = Frames(), Frames()
        got = framed_lines(fast, data[:cut], 20) + framed_lines(fast, data[cut:], 20)
        assert got == plain(slow, data[:cut]) + plain(slow, data[cut:]), cut
        assert [text for _, _, text in got][:4] == [b"one", b"err", b"two", b"three"]
        assert got[-1][2] == b"x" * 20  # cut at max_line


class FakeClient:
    timeout = 5.0

    def __init__(self, batches: list[list[api_pb2.LogLine]]) -> None:
        self.batches = batches

    def _stream(self, method: str, request: Any, timeout: float | None) -> Any:
        assert method == "ServiceLogs"
        return iter([api_pb2.LogBatch(lines=b) for b in self.batches])


def line(task: str, slot: int, text: str, node: str = "n1", at: int = 0, notice: str = "") -> api_pb2.LogLine:
    return api_pb2.LogLine(
        task=task, service="web", slot=slot, node=node, time_ns=at, text=text.encode(), notice=notice
    )


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("timestamps", [False, True])
def test_the_cli_prints_what_format_line_makes(
    capsys: pytest.CaptureFixture[str], colour: bool, timestamps: bool
) -> None:
    a, b = "a" * 20, "b" * 20
    batches = [
        [line(a, 1, "first", at=10**9), line(a, 1, "second", at=2 * 10**9)],
        [line(b, 10, "wider tag", node="node22", at=3 * 10**9), line(a, 1, "padded now", at=4 * 10**9)],
        [line(b, 10, "", node="node22", notice="node node22 went away"), line(a, 1, "é ok", at=5)],
    ]
    print_logs(FakeClient(batches), api_pb2.LogsRequest(service="web"), timestamps, colour)  # type: ignore[arg-type]
    captured = capsys.readouterr()
    expected, width, order = [], 0, {}
    for batch in batches:
        for ln in batch:
            tag = prefix(ln.service, ln.slot, ln.task, ln.node)
            if ln.notice:
                continue
            width = max(width, len(tag))
            text = format_line(tag, ln.text.decode(), width, ln.time_ns, timestamps)
            if colour:
                padded = tag.ljust(width)
                index = order.setdefault(ln.task, len(order))
                text = click.style(padded, fg=COLOURS[index % len(COLOURS)]) + text[len(padded) :]
            expected.append(text)
    assert captured.out == "\n".join(expected) + "\n"
    assert captured.err == f"warning: {prefix('web', 10, b, 'node22')}: node node22 went away\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


async def _followed(
    tmp_path: Path, lines: int, tty: bool, chunked: bool
) -> list[list[tuple[int, str, bytes]]]:
    """A fake engine's followed log: one lone line, then (once the reader has it) a burst
    of `lines` lines, one HTTP chunk each as dockerd sends them to HTTP/1.1 (or as they
    are, to HTTP/1.0: the body ends with the connection), the engine yielding to the
    reader after each; the lists `DockerStreams.logs` gave."""
    have_first = asyncio.Event()
    asked: list[bytes] = []

    def piece(payload: bytes) -> bytes:
        return _chunk(payload) if chunked else payload

    def line(text: bytes) -> bytes:
        stamped = b"2026-12-05T21:00:00.5Z " + text + b"\n"
        return stamped if tty else frame(1, stamped)

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.readuntil(b"\r\n\r\n"))
        head = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            if chunked
            else b"HTTP/1.0 200 OK\r\n\r\n"
        )
        writer.write(head + piece(line(b"first")))
        await writer.drain()
        await asyncio.wait_for(have_first.wait(), 10)
        for i in range(lines):
            writer.write(piece(line(b"line %d" % i)))
            await writer.drain()
            await asyncio.sleep(0)  # the reader may read now: one line per read unless it waits
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(engine, str(tmp_path / "engine.sock"))
    got: list[list[tuple[int, str, bytes]]] = []
    try:
        async with asyncio.timeout(30):
            async for read in DockerStreams(f"unix://{tmp_path / 'engine.sock'}").logs("c1", True, None, 0):
                got.append(read)
                have_first.set()
    finally:
        server.close()
    assert asked[0].startswith(b"GET /containers/c1/logs?") and b" HTTP/1.0\r\n" in asked[0]
    return got


@pytest.mark.parametrize(("tty", "chunked"), [(False, False), (True, False), (False, True)])
async def test_a_followed_log_goes_in_lists_paced_but_a_lone_line_at_once(
    tmp_path: Path, tty: bool, chunked: bool
) -> None:
    got = await _followed(tmp_path, 600, tty, chunked)
    assert [text for _, _, text in got[0]] == [b"first"]  # not held back for lines to come
    texts = [text for read in got[1:] for _, _, text in read]
    assert texts == [b"line %d" % i for i in range(600)]  # all, in order, across read timeouts
    assert {stream for read in got for _, stream, _ in read} == {"stdout"}
    # at most one list per PACE: the 600 one-line reads went in far fewer lists
    assert len(got) <= 600 // 5, len(got)
    assert docker_logs.PACE <= 0.05  # a followed line waits at most that long
