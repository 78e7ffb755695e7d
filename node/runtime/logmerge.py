"""Container log lines: Docker's stream framing, timestamps, the merge of many tasks'
streams, and the `web.1.abc123def456@node2 | ` prefix the CLI prints.

Pure (asyncio, no grpc or docker), so the ordering and the formatting are unit tested
apart from any engine:

- `Frames` cuts Docker's multiplexed stream (8-byte headers: stream, length) into
  (stream, payload); `split_timestamp` reads the RFC 3339 nanosecond stamp Docker puts
  before each line when asked (`timestamps=1`).
- `merge_sorted` merges streams that are each in time order into one, holding one
  line per stream (bounded whatever the sizes); a stream that ends leaves the others.
- `fan_in` interleaves streams as their lines come (follow mode), through one bounded
  queue: a slow reader slows the producers, never grows memory.
- `parse_since` reads `--since` (`10m`, `1h30m`, `2026-12-05T20:00:00Z`, unix seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TypeVar

T = TypeVar("T")

STREAMS = {0: "stdin", 1: "stdout", 2: "stderr"}
HEADER = 8
MAX_FRAME = 1 << 20  # bytes: a larger frame header means the stream is not multiplexed
FAN_IN_QUEUE = 256  # lines buffered between the followed streams and the reader
TASK_ID_CHARS = 12  # of a task id in the prefix, as `docker service logs` truncates


class FrameError(ValueError):
    """The bytes are not Docker's multiplexed stream format."""


class Frames:
    """Incremental reader of Docker's multiplexed stream: feed bytes, get whole frames."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        out: list[tuple[str, bytes]] = []
        while end - pos >= HEADER:
            kind, size = buf[pos], int.from_bytes(buf[pos + 4 : pos + 8], "big")
            if kind not in STREAMS or buf[pos + 1 : pos + 4] != b"\0\0\0" or size > MAX_FRAME:
                raise FrameError(f"not a multiplexed stream header: {buf[pos : pos + 8]!r}")
            if end - pos < HEADER + size:
                break
            out.append((STREAMS[kind], buf[pos + HEADER : pos + HEADER + size]))
            pos += HEADER + size
        self._buf = buf[pos:]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


_STAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")


@functools.lru_cache(maxsize=64)
def _seconds(whole: bytes, zone: bytes) -> int:
    """Unix seconds of a stamp's whole-second part: the lines of one second share it."""
    tz = "+00:00" if zone == b"Z" else zone.decode()
    return int(datetime.fromisoformat(whole.decode() + tz).timestamp())


_WHOLE: dict[bytes, int] = {}  # `2026-12-05T21:00:00` (UTC) -> unix seconds: Docker's usual stamps
_SCALE = tuple(10 ** (9 - n) for n in range(10))  # a fraction of n digits -> nanoseconds


def split_timestamp(line: bytes) -> tuple[int, bytes]:
    """`2026-12-05T21:00:00.123456789Z hello` -> (unix ns, b"hello"); (0, line) unstamped."""
    if line[19:20] == b".":  # Docker's own form (UTC, a fraction): sliced, not matched
        space = line.find(b" ", 20, 31)
        fraction = line[20 : space - 1]
        seconds = _WHOLE.get(line[:19])
        if seconds is not None and space > 21 and line[space - 1 : space] == b"Z" and fraction.isdigit():
            return seconds * 1_000_000_000 + int(fraction) * _SCALE[len(fraction)], line[space + 1 :]
    match = _STAMP.match(line)
    if match is None:
        return 0, line
    whole, fraction, zone = match.groups()
    seconds = _seconds(whole, zone)
    if zone == b"Z":  # the next lines of this second take the sliced path
        if len(_WHOLE) >= 64:
            _WHOLE.clear()
        _WHOLE[whole] = seconds
    return seconds * 1_000_000_000 + int((fraction or b"0").ljust(9, b"0")), line[match.end() :]


def framed_lines(frames: Frames, data: bytes, max_line: int) -> list[tuple[int, str, bytes]]:
    """(unix ns, stream, line cut at `max_line`) of the whole frames `data` completes:
    `Frames.feed`, `lines_of` and `split_timestamp` in one pass, with a short way for
    Docker's usual frame (one whole line)."""
    out: list[tuple[int, str, bytes]] = []
    append = out.append
    for stream, payload in frames.feed(data):
        end = len(payload) - 1
        if end >= 0 and payload.find(b"\n") == end:  # one line and its newline
            line = payload[: end - 1] if payload[end - 1 : end] == b"\r" else payload[:end]
            stamp, text = split_timestamp(line)
            append((stamp, stream, text[:max_line]))
        else:
            for line in lines_of(payload):
                stamp, text = split_timestamp(line)
                append((stamp, stream, text[:max_line]))
    return out


class Chunked:
    """Incremental decoder of an HTTP/1.1 chunked body: feed what the socket gave, get the
    payload bytes it completes. dockerd sends a followed log as one chunk per line, so
    reading chunk by chunk costs three awaits a line; this takes whole reads instead."""

    def __init__(self) -> None:
        self._rest = b""
        self._left = 0  # payload bytes still due in the current chunk
        self._crlf = False  # the CRLF after a chunk's payload is due
        self.done = False  # the last (zero-size) chunk was read

    def feed(self, data: bytes) -> bytes:
        buf = self._rest + data if self._rest else data
        pos, end, out = 0, len(buf), []
        while pos < end and not self.done:
            if self._left:
                take = min(self._left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if self._left:
                    break
                self._crlf = True
            if self._crlf:
                if end - pos < 2:
                    break
                pos += 2
                self._crlf = False
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > 1024:
                    raise FrameError(f"a chunk size line of over 1 KiB: {buf[pos : pos + 40]!r}")
                break
            size = int(buf[pos:eol].split(b";")[0].strip() or b"0", 16)
            pos = eol + 2
            if size == 0:
                self.done = True
            self._left = size
        self._rest = buf[pos:]
        return b"".join(out)


def lines_of(payload: bytes) -> list[bytes]:
    """The lines of a frame's payload, without their newlines (a final empty one dropped)."""
    parts = payload.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p[:-1] if p.endswith(b"\r") else p for p in parts]


def format_time(time_ns: int) -> str:
    """Unix nanoseconds as RFC 3339 with nanoseconds, UTC (Docker's `--timestamps` form)."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def prefix(service: str, slot: int, task: str, node: str) -> str:
    """`web.1.abc123def456@node2`: which replica a line is from (`docker service logs`)."""
    return f"{service}.{slot}.{task[:TASK_ID_CHARS]}@{node}"


def format_line(tag: str, text: str, width: int = 0, time_ns: int = 0, timestamps: bool = False) -> str:
    """One printed line: the tag padded to `width`, then ` | `, the time if asked, the text."""
    stamp = f"{format_time(time_ns)} " if timestamps and time_ns else ""
    return f"{tag.ljust(width)} | {stamp}{text}"


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float | None:
    """`90s`, `10m`, `1h30m`, `2d` -> seconds; None when `text` is not a duration."""
    text = text.strip()
    if not text or _DURATION.sub("", text):
        return None
    return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))


def parse_since(text: str, now: float) -> float:
    """`--since`: a duration back from `now`, an RFC 3339 / ISO 8601 time (UTC unless
    it says), or unix seconds -> unix seconds. ValueError says what is accepted."""
    duration = parse_duration(text)
    if duration is not None:
        return now - duration
    value = text.strip()
    with contextlib.suppress(ValueError):
        seconds = float(value)
        if seconds >= 0:
            return seconds
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a duration (30s, 10m, 1h30m, 2d), a time "
            "(2026-12-05T20:00:00Z, 2026-12-05 20:00) or unix seconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


async def merge_sorted(sources: Sequence[AsyncIterator[T]], key: Callable[[T], int]) -> AsyncIterator[T]:
    """Merge streams each in `key` order into one in `key` order (ties: the earlier
    source first). One item per source is held; every source is closed at the end,
    also when the reader stops early or is cancelled."""
    heads: list[tuple[int, int, T]] = []
    try:
        firsts = await asyncio.gather(*(_next(s) for s in sources))
        for i, item in enumerate(firsts):
            if item is not _END:
                heads.append((key(item), i, item))  # type: ignore[arg-type]
        heapq.heapify(heads)
        while heads:
            _, i, item = heads[0]
            yield item
            following = await _next(sources[i])
            if following is _END:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (key(following), i, following))  # type: ignore[arg-type,misc]
    finally:
        await _close_all(sources)


async def fan_in(
    sources: Sequence[AsyncIterator[T]],
    maxsize: int = FAN_IN_QUEUE,
    more: AsyncIterator[Sequence[AsyncIterator[T]]] | None = None,
) -> AsyncIterator[T]:
    """Items of all streams as they come, through one queue of `maxsize`; ends when all
    end. A source that raises ends the whole (its error is raised here); the readers
    of the sources are cancelled when the reader stops or is cancelled. `more` yields
    streams that join later (replicas that start while following): each is read as
    the first ones are; the whole ends when `more` and every stream have ended."""
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue(maxsize)
    done = object()
    sources = list(sources)

    async def pump(source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                await queue.put((0, item))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put((1, exc))
            return
        await queue.put((2, done))

    async def joiners(later: AsyncIterator[Sequence[AsyncIterator[T]]]) -> None:
        try:
            async for fresh in later:
                await queue.put((3, fresh))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put((1, exc))
            return
        await queue.put((2, done))

    tasks = [asyncio.create_task(pump(s)) for s in sources]
    if more is not None:
        sources.append(more)  # type: ignore[arg-type]  # closed with the others at the end
        tasks.append(asyncio.create_task(joiners(more)))
    try:
        left = len(tasks)
        while left:
            kind, item = await queue.get()
            if kind == 2:
                left -= 1
            elif kind == 1:
                raise item  # type: ignore[misc]
            elif kind == 3:
                for source in item:  # type: ignore[attr-defined]
                    sources.append(source)
                    tasks.append(asyncio.create_task(pump(source)))
                    left += 1
            else:
                yield item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # a pump blocked on put ends there
        await _close_all(sources)


BATCH_ITEMS = 500  # items of one batch at most
BATCH_BYTES = 256 * 1024  # bytes of one batch at most (a gRPC message stays far below 4 MiB)
BATCH_BUFFER = 1024  # items read ahead of the batches


async def batches(
    items: AsyncIterator[T],
    size: Callable[[T], int],
    max_items: int = BATCH_ITEMS,
    max_bytes: int = BATCH_BYTES,
    buffer: int = BATCH_BUFFER,
) -> AsyncIterator[list[T]]:
    """The items in lists of those ready now: a batch never waits for more items than
    are there (a followed stream is not delayed), and is at most `max_items` items or
    about `max_bytes`. At most `buffer` items are read ahead; `items` is closed at the
    end, also when the reader stops or is cancelled."""
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue(buffer)

    async def pump() -> None:
        try:
            async for item in items:
                await queue.put((0, item))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put((1, exc))
            return
        await queue.put((2, None))

    task = asyncio.create_task(pump())
    try:
        ended: BaseException | bool = False
        while not ended:
            batch: list[T] = []
            total = 0
            kind, item = await queue.get()
            while True:
                if kind == 0:
                    batch.append(item)  # type: ignore[arg-type]
                    total += size(item)  # type: ignore[arg-type]
                else:
                    ended = item if kind == 1 else True  # type: ignore[assignment]
                    break
                if len(batch) >= max_items or total >= max_bytes or queue.empty():
                    break
                kind, item = queue.get_nowait()
            if batch:
                yield batch
            if isinstance(ended, BaseException):
                raise ended
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await _close_all([items])


_END = object()


async def _next(source: AsyncIterator[T]) -> T | object:
    try:
        return await anext(source)
    except StopAsyncIteration:
        return _END


async def _close_all(sources: Sequence[AsyncIterator[T]]) -> None:
    for source in sources:
        close = getattr(source, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


def interleave(
    batches: Iterable[Sequence[T]], events: Iterable[T], key: Callable[[T], int]
) -> Iterator[list[T]]:
    """`--events` without -f: the batches of lines (merged in `key` order) with the
    service's events (oldest first) put among them in `key` order, an event before a
    line of the same time. An item whose key is 0 (a notice, no time) stays where it is.
    Reads one batch at a time; events after the last line come at the end."""
    pending = iter(events)
    head = next(pending, None)
    for batch in batches:
        out: list[T] = []
        for item in batch:
            stamp = key(item)
            while head is not None and stamp and key(head) <= stamp:
                out.append(head)
                head = next(pending, None)
            out.append(item)
        yield out
    rest = [] if head is None else [head, *pending]
    if rest:
        yield rest
