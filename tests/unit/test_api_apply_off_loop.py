"""`shoal service apply` parses its spec (up to 512 KiB of pure-Python YAML, seconds) in
a worker thread, not on the daemon's event loop (`ServiceWriter.parse_off_loop`)."""

from __future__ import annotations

import threading

import pytest

from node.api import services
from node.api.services import ServiceWriter
from node.model.keys import Keys
from node.store.memory import MemoryStore

KEYS = Keys()
V1 = "name: web\nimage: img:1\nreplicas: 2\n"


async def test_a_spec_is_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 512 KiB spec takes seconds of pure-Python YAML: parsed on the loop, `apply` stalled
    the daemon's lease keep-alives and gossip. It is parsed in a worker thread."""
    threads: list[int] = []
    real = services.parse_spec

    def recording(*args: object) -> object:
        threads.append(threading.get_ident())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(services, "parse_spec", recording)
    writer = ServiceWriter(MemoryStore(), KEYS, "n1")
    record, changed = await writer.apply(V1, "web.yaml")
    assert changed and record.version == 1
    assert threads and threading.get_ident() not in threads
