"""`node.runtime.logmerge`: Docker's framing and stamps, the merge, the prefix, `--since`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from node.runtime.logmerge import (
    FrameError,
    Frames,
    batches,
    fan_in,
    format_line,
    format_time,
    interleave,
    lines_of,
    merge_sorted,
    parse_duration,
    parse_since,
    prefix,
    split_timestamp,
)


def frame(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_frames_are_cut_whatever_the_reads() -> None:
    data = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"")
    for cut in range(len(data) + 1):
        frames = Frames()
        got = frames.feed(data[:cut]) + frames.feed(data[cut:])
        assert got == [("stdout", b"out\n"), ("stderr", b"err\n"), ("stdout", b"")]
        assert frames.pending == 0


def test_a_stream_that_is_not_framed_is_refused() -> None:
    with pytest.raises(FrameError):
        Frames().feed(b"2026-12-05T21:00:00Z hello\n")


def test_timestamps_are_read_to_the_nanosecond() -> None:
    ns, text = split_timestamp(b"2026-12-05T21:00:00.123456789Z hello world")
    base = int(datetime(2026, 12, 5, 21, tzinfo=UTC).timestamp())
    assert (ns, text) == (base * 1_000_000_000 + 123_456_789, b"hello world")
    assert split_timestamp(b"2026-12-05T21:00:00Z x")[0] == base * 1_000_000_000
    assert split_timestamp(b"2026-12-05T22:00:00.5+01:00 x")[0] == base * 1_000_000_000 + 500_000_000
    assert split_timestamp(b"no stamp here") == (0, b"no stamp here")
    assert format_time(base * 1_000_000_000 + 42) == "2026-12-05T21:00:00.000000042Z"


def test_lines_of_a_payload() -> None:
    assert lines_of(b"a\nb\r\n") == [b"a", b"b"]
    assert lines_of(b"partial") == [b"partial"]
    assert lines_of(b"\n") == [b""]


def test_the_prefix_names_service_slot_task_and_node() -> None:
    tag = prefix("web", 2, "abcdefghijklmnopqrstuvwxy", "n2")
    assert tag == "web.2.abcdefghijkl@n2"
    assert format_line(tag, "hello", width=24) == "web.2.abcdefghijkl@n2    | hello"
    assert format_line(tag, "hi", time_ns=1_000_000_000, timestamps=True) == (
        "web.2.abcdefghijkl@n2 | 1970-01-01T00:00:01.000000000Z hi"
    )
    assert format_line(tag, "hi", time_ns=5) == "web.2.abcdefghijkl@n2 | hi"  # no -t: no time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600.0), ("1h30m", 5400.0), ("45s", 45.0), ("2d", 172800.0), ("1.5h", 5400.0), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_since(text, now=10_000.0) == 10_000.0 - seconds


def test_since_takes_times_and_unix_seconds() -> None:
    assert parse_since("2026-12-05T21:00:00Z", 0) == datetime(2026, 12, 5, 21, tzinfo=UTC).timestamp()
    assert parse_since("2026-12-05 21:00", 0) == datetime(2026, 12, 5, 21, tzinfo=UTC).timestamp()
    assert parse_since("2026-12-05T22:00:00+01:00", 0) == datetime(2026, 12, 5, 21, tzinfo=UTC).timestamp()
    assert parse_since("1700000000", 0) == 1_700_000_000.0


@pytest.mark.parametrize("text", ["", "yesterday", "10 minutes", "10x", "-5", "m10"])
def test_bad_since_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration .* time .* unix seconds"):
        parse_since(text, 0)


class Source:
    """An async stream of items that records whether it was closed."""

    def __init__(self, items: list[int], block_after: bool = False) -> None:
        self.items = items
        self.block_after = block_after
        self.closed = False
        self.sent = 0

    async def gen(self) -> AsyncIterator[int]:
        try:
            for item in self.items:
                self.sent += 1
                yield item
            if self.block_after:
                await asyncio.Event().wait()
        finally:
            self.closed = True


async def test_merge_sorted_orders_across_sources_and_keeps_ties_stable() -> None:
    a, b, c = Source([1, 4, 4, 9]), Source([2, 4, 10]), Source([])
    merged = [x async for x in merge_sorted([a.gen(), b.gen(), c.gen()], key=lambda x: x)]
    assert merged == [1, 2, 4, 4, 4, 9, 10]
    assert a.closed and b.closed and c.closed


async def test_merge_sorted_holds_one_item_per_source_and_closes_all_when_stopped() -> None:
    a, b = Source(list(range(0, 1000, 2))), Source(list(range(1, 1000, 2)))
    merged = merge_sorted([a.gen(), b.gen()], key=lambda x: x)
    got = [await anext(merged) for _ in range(10)]
    assert got == list(range(10))
    assert a.sent <= 6 and b.sent <= 6  # read as the reader reads, not ahead
    await merged.aclose()
    assert a.closed and b.closed


async def test_fan_in_interleaves_and_ends_when_all_end() -> None:
    a, b = Source([1, 2, 3]), Source([10, 20])
    got = [x async for x in fan_in([a.gen(), b.gen()])]
    assert sorted(got) == [1, 2, 3, 10, 20]
    assert [x for x in got if x < 10] == [1, 2, 3]  # each source's own order kept


async def test_fan_in_is_bounded_and_cancelling_the_reader_stops_every_source() -> None:
    busy, quiet = Source(list(range(10_000)), block_after=True), Source([], block_after=True)
    merged = fan_in([busy.gen(), quiet.gen()], maxsize=8)
    assert await anext(merged) == 0
    await asyncio.sleep(0.05)
    assert busy.sent <= 8 + 3  # the queue's bound, plus the items in hand
    await merged.aclose()  # the reader stops (a cancelled stream): every pump and source ends
    assert busy.closed and quiet.closed


async def test_fan_in_raises_a_sources_error() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ConnectionError("node gone")

    ok = Source([], block_after=True)
    with pytest.raises(ConnectionError, match="node gone"):
        async for _ in fan_in([broken(), ok.gen()]):
            pass
    assert ok.closed


async def test_fan_in_reads_streams_that_join_later_and_one_ending_ends_not_the_whole() -> None:
    first, late = Source([1, 2]), Source([10, 20], block_after=True)
    joined = asyncio.Event()

    async def more() -> AsyncIterator[list[AsyncIterator[int]]]:
        yield [late.gen()]  # a replica that started after `-f` began
        joined.set()
        await asyncio.Event().wait()  # still watching for more (until the reader stops)

    merged = fan_in([first.gen()], more=more())
    got = [await anext(merged) for _ in range(4)]
    assert sorted(got) == [1, 2, 10, 20]  # the first stream ended; the whole goes on
    assert joined.is_set() and first.closed
    await merged.aclose()
    assert late.closed  # a joined stream is closed with the others


async def test_fan_in_ends_when_the_watch_and_every_stream_end() -> None:
    async def more() -> AsyncIterator[list[AsyncIterator[int]]]:
        yield [Source([5]).gen()]

    assert sorted([x async for x in fan_in([Source([1]).gen()], more=more())]) == [1, 5]


async def test_batches_take_what_is_ready_bounded_by_count_and_bytes() -> None:
    source = Source(list(range(1200)))
    got = [b async for b in batches(source.gen(), size=lambda x: 1, max_items=500)]
    assert [x for b in got for x in b] == list(range(1200))
    assert max(len(b) for b in got) == 500 and source.closed
    by_bytes = [b async for b in batches(Source(list(range(10))).gen(), size=lambda x: 100, max_bytes=300)]
    assert all(len(b) <= 3 for b in by_bytes) and sum(map(len, by_bytes)) == 10


async def test_a_batch_does_not_wait_for_more_items() -> None:
    follow = Source([1, 2], block_after=True)
    stream = batches(follow.gen(), size=lambda x: 1)
    async with asyncio.timeout(2):
        first = await anext(stream)
    assert first in ([1, 2], [1])
    await stream.aclose()
    assert follow.closed


async def test_batches_pass_an_error_on_after_the_items_before_it() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ConnectionError("gone")

    stream = batches(broken(), size=lambda x: 1)
    assert await anext(stream) == [1]
    with pytest.raises(ConnectionError):
        await anext(stream)


def _chunked(payloads: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\n\r\n"


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 64, 10_000])
def test_a_chunked_body_decodes_whole_however_the_reads_cut_it(cut: int) -> None:
    from node.runtime.logmerge import Chunked

    payloads = [b"line %d\n" % i for i in range(200)] + [b"x" * 5000, b"end;ext\n"]
    body = _chunked(payloads).replace(b"\r\n", b";ext=1\r\n", 1)  # an extension on the first size line
    decoder, out = Chunked(), b""
    for i in range(0, len(body), cut):
        out += decoder.feed(body[i : i + cut])
    assert out == b"".join(payloads) and decoder.done
    assert decoder.feed(b"trailing bytes after the end") == b""


def test_a_chunked_body_with_garbage_for_a_size_is_an_error() -> None:
    from node.runtime.logmerge import Chunked

    with pytest.raises(ValueError):
        Chunked().feed(b"zz\r\nhello\r\n")
    with pytest.raises(ValueError):
        Chunked().feed(b"1" * 2000)  # a size line that never ends


def test_interleave_puts_events_among_the_lines_in_time_order() -> None:
    lines = [[("l", 10), ("l", 20)], [("notice", 0), ("l", 30)]]
    events = [("e", 5), ("e", 20), ("e", 25), ("e", 99)]
    got = list(interleave(lines, events, key=lambda x: x[1]))
    flat = [x for batch in got for x in batch]
    assert flat == [("e", 5), ("l", 10), ("e", 20), ("l", 20), ("notice", 0), ("e", 25), ("l", 30), ("e", 99)]
    assert got[-1] == [("e", 99)]  # events after the last line come at the end


def test_interleave_without_events_or_lines() -> None:
    assert list(interleave([[1, 2]], [], key=lambda x: x)) == [[1, 2]]
    assert list(interleave([], [3], key=lambda x: x)) == [[3]]
    assert list(interleave([], [], key=lambda x: x)) == []
