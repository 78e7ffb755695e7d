"""What a Docker runtime remembers of its containers between two listings, so that a
listing inspects only the containers that may have changed (decision 71).

Docker's list endpoint lacks what the agent needs of some containers (a start time, an
exit code and error, a finish time, a HEALTHCHECK verdict); an inspect per container
costs ~2-7 ms. Two facts hold between listings, with restart policy "no" (shoal's
restarts are its own decision):
- a running container keeps its start time while it is seen running;
- an exited (or dead) container does not change at all: only a person's `docker start`
  could change it, and the next listing then sees it running and forgets it.
So a running container without a HEALTHCHECK is read from the summary plus its
remembered start time, and an exited one is the record inspected when it was first seen
exited. A node that keeps exited containers for their logs (`task_history_limit`) thus
pays one list call per pass, not an inspect per kept container.

Pure: plain dicts in, `Container` records out; `node.runtime.docker` makes the calls.
"""

from __future__ import annotations

from typing import Any

from node.runtime.base import Container
from node.runtime.docker_records import from_summary, has_health

SEEN_MAX = 10_000  # containers remembered at most; past it, forgotten and learnt again
STILL = frozenset({"exited", "dead"})  # states in which a container does not change by itself


class Seen:
    def __init__(self) -> None:
        self._started_at: dict[str, str] = {}  # id -> StartedAt, while seen running
        self._still: dict[str, Container] = {}  # id -> its inspect, while seen exited or dead

    def known(self, summary: dict[str, Any]) -> Container | None:
        """The container of a list summary without an inspect, when nothing can have changed."""
        cid, state = summary["Id"], summary.get("State")
        if state == "running" and cid in self._started_at and not has_health(summary):
            return from_summary(summary, self._started_at[cid])
        if state in STILL:
            kept = self._still.get(cid)
            if kept is not None and kept.state == state:
                return kept
        return None

    def inspected(self, c: Container) -> None:
        """Remember what an inspect said."""
        if c.running:
            self._started_at[c.id] = c.started_at
            self._still.pop(c.id, None)
            return
        self._started_at.pop(c.id, None)
        if c.state in STILL:
            self._still[c.id] = c
        else:
            self._still.pop(c.id, None)
        if len(self._still) + len(self._started_at) > SEEN_MAX:  # ids removed behind our back
            self._still.clear()
            self._started_at.clear()

    def forget(self, container_id: str) -> None:
        self._started_at.pop(container_id, None)
        self._still.pop(container_id, None)
