"""Cluster events: one log in etcd, `events/<time-ns>/<node>/<seq>`, bounded by count and age.

Every node writes its own events under keys that sort by its wall clock (nanoseconds,
20 digits), so writers never contend and a reader gets the whole cluster's history in
time order from one range. The log outlives the node that wrote an entry: nothing is
deleted when a node goes; the leader (`leader.upkeep`) trims the log, fenced, in one
range delete to `events_max` entries and `events_max_age` seconds (`trim_cut` is the
rule). Emitting never blocks the caller and never fails it: events go through a
queue, written in batches (one transaction per batch, so a burst costs etcd one
revision per `MAX_TXN_OPS` events, not one per event), and a write that fails is
logged and dropped (events are for people, not for correctness).

An event holds names, ids and a message the daemon wrote; never a spec, an env value
or a secret (tests/integration/test_events_durable.py greps for one). Messages are cut
to `MAX_MESSAGE` characters, so an entry is at most about 1.4 KB.

`select` is the readers' filter (since, service, kind, cause), used by the API before
anything is sent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from node.model.domain import Event, ServiceRecord, UnreadableRecord
from node.model.keys import Keys
from node.store import KV, Put, Store, StoreError
from node.store.base import MAX_TXN_OPS

log = logging.getLogger(__name__)

QUEUE = 1000  # events waiting to be written; more are dropped (and logged)
MAX_MESSAGE = 1000  # characters of a message kept


class EventLog:
    def __init__(self, store: Store, keys: Keys, node: str) -> None:
        self.store = store
        self.keys = keys
        self.node = node
        self._seq = itertools.count()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE)
        self.dropped = 0  # events not recorded (queue full, or etcd refused the write)

    async def start(self) -> None:
        """Nothing to read back: keys carry the time and a per-process sequence."""

    def emit(self, kind: str, message: str, service: str = "", task: str = "", cause: str = "") -> None:
        event = Event(time.time(), kind, self.node, message[:MAX_MESSAGE], service, task, cause)
        log.info("event %s: %s", kind, message, extra={"service": service, "task": task, "cause": cause})
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def _key(self, event: Event) -> str:
        return self.keys.event(int(event.time * 1e9), self.node, next(self._seq))

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_TXN_OPS and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self.write(batch)

    async def write(self, batch: Sequence[Event]) -> None:
        """One transaction for the batch; on a store error the batch is dropped."""
        try:
            await self.store.txn([], [Put(self._key(e), e.to_json()) for e in batch])
        except StoreError as exc:
            self.dropped += len(batch)
            log.warning("%d event(s) not recorded (%s ...): %s", len(batch), batch[0].kind, exc)


class Caused:
    """Emits through `log`; an event about a service that names no cause gets the cause id
    of the service's current version (`cause_of`): how the leader's placements, rollouts
    and pending reasons name the apply that led to them (issue 14)."""

    def __init__(self, log: EventLog, cause_of: Callable[[str], str]) -> None:
        self.log, self.cause_of = log, cause_of

    def emit(self, kind: str, message: str, service: str = "", task: str = "", cause: str = "") -> None:
        self.log.emit(kind, message, service, task, cause or (self.cause_of(service) if service else ""))


def cause_of(kv: KV | None) -> str:
    """The cause id of a stored service record ("" when absent or unreadable)."""
    try:
        return ServiceRecord.from_json(kv.value).cause if kv is not None else ""
    except UnreadableRecord:
        return ""


# -- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """What a reader asks for; empty fields match everything."""

    since: float = 0.0  # unix seconds: events at or after
    service: str = ""
    kind: str = ""  # an exact kind ("task.started"), or a prefix ending in "." ("task.")
    cause: str = ""

    def match(self, e: Event) -> bool:
        if e.time < self.since or (self.service and e.service != self.service):
            return False
        if self.cause and e.cause != self.cause:
            return False
        if self.kind:
            return e.kind.startswith(self.kind) if self.kind.endswith(".") else e.kind == self.kind
        return True


def decode(kvs: Iterable[KV], want: Filter | str | None = None) -> list[tuple[int, Event]]:
    """Events from log entries, oldest first (by time, then revision), those `want` matches
    (a `Filter`, or a service name as before issue 14)."""
    want = Filter(service=want) if isinstance(want, str) else want or Filter()
    out: list[tuple[int, Event]] = []
    for kv in kvs:
        try:
            event = Event.from_json(kv.value)
        except (ValueError, TypeError):
            continue
        if want.match(event):
            out.append((kv.mod_revision, event))
    out.sort(key=lambda item: (item[1].time, item[0]))
    return out


# -- trimming (the leader's rule; leader.upkeep runs it) ---------------------------------


def event_time_ns(key: str, prefix: str) -> int | None:
    """The time in a log key (`<prefix><time-ns>/<node>/<seq>`); None for another key
    (e.g. an entry of the per-node rings before issue 14)."""
    head = key[len(prefix) :].split("/", 1)[0] if key.startswith(prefix) else ""
    return int(head) if len(head) == 20 and head.isdigit() else None


def trim_cut(times_ns: Sequence[int], now: float, max_count: int, max_age: float) -> int:
    """The time (ns) before which every event goes: older than `max_age` seconds (0: no
    age bound), and the oldest beyond the newest `max_count`. 0: nothing to delete.
    `times_ns` need not be sorted."""
    cut = int((now - max_age) * 1e9) if max_age > 0 else 0
    if len(times_ns) > max_count:
        ordered = sorted(times_ns)
        cut = max(cut, ordered[len(ordered) - max_count])  # the oldest kept
    return cut if any(t < cut for t in times_ns) else 0
