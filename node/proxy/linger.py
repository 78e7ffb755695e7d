"""Lingering close for the L7 engine (nginx's `lingering_close`).

When the engine answers a request it could not read whole (400, 408, 413, 431, or a
502/503 before the body was in) and closes, the client may still be sending. A socket
closed with unread bytes in its receive queue, or one that gets more bytes after the
close, sends an RST, and a client that gets the RST before it has read the answer loses
the answer: it sees "connection reset" instead of the 413 that says what to fix.

So such a connection is not closed at once: after the answer the write side is shut
(`write_eof`, a FIN), and what the client still sends is read and dropped, until the
client's own EOF, `QUIET` s without a byte, `LONGEST` s in all or `MOST` bytes (256 KiB),
whichever comes first; then it is closed. `Lingerer` takes the client transport over
(`transport.set_protocol`), so the engine's hot path carries no test for it. A transport
that cannot half-close (TLS) is closed as before.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

QUIET = 1.0
"""Seconds without a byte from the client after which a lingering connection is closed."""
LONGEST = 5.0
"""Seconds a connection lingers at most."""
MOST = 256 * 1024
"""Bytes read and dropped at most: past them the connection is closed (an RST, then)."""
SHUT: bytes = bytes(bytearray(b"shut the write side"))
"""Queued with the engine's writes (`HttpProxy.send`), this object, compared by identity,
shuts the write side after what was queued before it."""


class Owner(Protocol):
    """The client connection that lingers: told when its transport is gone."""

    def connection_lost(self, exc: Exception | None) -> None: ...


class Lingerer(asyncio.Protocol):
    """Reads and drops what a client still sends after its last answer (see the module)."""

    __slots__ = ("dropped", "end", "last", "loop", "owner", "timer", "transport")

    def __init__(self, owner: Owner, transport: asyncio.Transport) -> None:
        self.owner = owner
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.end = self.last + LONGEST
        self.dropped = 0
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(QUIET, self._check)
        transport.set_protocol(self)
        transport.resume_reading()  # it may have been paused for back-pressure

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        self.dropped += len(data)
        if self.dropped > MOST:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def pause_writing(self) -> None:
        pass  # nothing else is written: the answer waits in the buffer

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.owner.connection_lost(exc)

    def _check(self) -> None:
        now = self.loop.time()
        quiet_end = self.last + QUIET
        if now >= quiet_end or now >= self.end:
            self.timer = None
            self.transport.close()
            return
        self.timer = self.loop.call_at(min(quiet_end, self.end), self._check)


def linger(owner: Owner, transport: asyncio.Transport) -> bool:
    """Start lingering on `transport` (its write side is shut by the engine's queue, after
    the answer); False when it cannot half-close or is closing already."""
    if transport.is_closing() or not transport.can_write_eof():
        return False
    Lingerer(owner, transport)
    return True
