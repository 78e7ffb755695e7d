"""The agent's shell around `node.agent.history`: remove the exited containers a node
keeps no longer, and free a task's container name from a kept one (decision 71).

Every pass hands `prune` the retired containers it listed (exited, no task's current
one) and the services it knows (a mirror of `services/`, shared through the daemon's
watch hub), and removes what the core names, oldest first. The engine not answering a
removal ends this pass's removals; the next pass names them again. Nothing here is
recorded anywhere but in the engine: a kept container is found again by its labels
after a daemon restart, so no crash leaves one that the next pass does not see.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence

from node.agent.history import Known, history_name, prune
from node.runtime.base import Container, EngineError, Runtime
from node.store.cache import PrefixCache

log = logging.getLogger(__name__)


class Kept:
    def __init__(self, runtime: Runtime, services: PrefixCache, limit: int) -> None:
        self.runtime = runtime
        self.services = services  # services/: which exist, of which incarnation, jobs or not
        self.limit = limit  # exited containers kept per slot (`task_history_limit`); 0: none
        self.removed = 0  # kept containers removed (tests, metrics)
        self._known: dict[str, tuple[int, str, Known]] = {}  # key -> (mod revision, name, what)

    def known(self) -> dict[str, Known] | None:
        """Each service that exists: its uid and whether it is a job; None before the first
        listing (then nothing is removed for being of a removed service). A record is read
        again only when it changed (a pass reads no spec it read before)."""
        if not self.services.ready.is_set():
            return None
        out: dict[str, Known] = {}
        fresh: dict[str, tuple[int, str, Known]] = {}
        for kv in self.services.values():
            seen = self._known.get(kv.key)
            if seen is None or seen[0] != kv.mod_revision:
                seen = (kv.mod_revision, *_read(kv.key, kv.value))
            fresh[kv.key] = seen
            if seen[1]:
                out[seen[1]] = seen[2]
        self._known = fresh
        return out

    async def prune(self, retired: Sequence[Container], cleared: Collection[tuple[str, str]] = ()) -> int:
        """Remove the retired containers past the limit, and those of the `cleared`
        (service, slot) pairs (their volumes are being removed); how many were removed."""
        if not retired:
            return 0
        done = 0
        for cid in prune(retired, self.limit, self.known(), cleared):
            try:
                await self.runtime.remove(cid)
            except EngineError as exc:  # the engine away: the next pass names it again
                log.warning("exited container %s not removed yet: %s", cid[:12], exc)
                break
            done += 1
        self.removed += done
        return done

    async def free_name(self, name: str, found: Sequence[Container]) -> None:
        """Rename an exited container that holds `name` (a kept one of the same task), so
        the task's next container can have it. EngineError when the engine refuses."""
        for c in found:
            if c.name == name and not c.running:
                await self.runtime.rename(c.id, history_name(c))


def _read(key: str, value: bytes) -> tuple[str, Known]:
    """(name, Known) of a `services/<name>` record, read without checking the whole spec
    (a record that cannot be read counts as a service that exists, of any incarnation:
    nothing of it goes for being of a removed service)."""
    name = key.rstrip("/").rsplit("/", 1)[-1]
    try:
        data = json.loads(value)
        spec = data.get("spec") or {}
        return str(data.get("name") or name), Known(str(data.get("uid") or ""), spec.get("kind") == "job")
    except (ValueError, TypeError, AttributeError):
        return name, Known("")
