"""Hands what the agent observed to `status/` and `endpoints/`, on the node lease.

The writes go through a `WriteQueue` (node.agent.writes): `publish` never waits on
etcd, so a pass goes on while etcd is away and its latest view is written when etcd
answers again. Only what changed since the last publication on the current lease is
queued; when the lease is replaced everything is queued again (the old keys died with
the old lease). Endpoints are withdrawn *before* a container is stopped, so no one is
sent to a replica that is going away: `withdraw` waits (bounded) for the delete to be
in etcd when the caller needs it to be.
"""

from __future__ import annotations

import asyncio
import logging

from node.agent.writes import WriteQueue
from node.model.domain import EndpointRecord, TaskStatus
from node.model.keys import Keys
from node.store import Store, StoreError
from node.store.session import Session

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, store: Store, keys: Keys, session: Session) -> None:
        self.store = store
        self.keys = keys
        self.session = session
        self.writes = WriteQueue(store, session)
        self._lease = 0
        self._status: dict[str, bytes] = {}  # key -> value queued for _lease
        self._endpoints: dict[str, bytes] = {}

    async def withdraw(self, service: str, task_id: str, timeout: float | None = None) -> None:
        """Delete the task's endpoint, also one a previous life of this daemon published.

        Task ids are unique per assignment, so the key is this node's to delete. With a
        `timeout`, wait that long for the delete to be in etcd (StoreError if it is not
        yet; it stays queued); without, just queue it.
        """
        key = self.keys.endpoint(service, task_id)
        self._endpoints.pop(key, None)
        self.writes.delete(key)
        if timeout is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self.writes.flush()  # this one now, with whatever else is pending
        except TimeoutError:
            pass
        if self.writes.pending(key):
            raise StoreError(f"the withdrawal of {key} is not in etcd yet: etcd did not answer")

    async def publish(self, statuses: list[TaskStatus], endpoints: list[EndpointRecord]) -> None:
        lease = self.session.lease
        if lease != self._lease:
            self._lease, self._status, self._endpoints = lease, {}, {}
        want_status = {self.keys.status(s.task_id): _value(s) for s in statuses}
        want_endpoints = {self.keys.endpoint(e.service, e.task_id): e.to_json() for e in endpoints}
        for published, want in ((self._endpoints, want_endpoints), (self._status, want_status)):
            for k in published:
                if k not in want:
                    self.writes.delete(k)
            for k, v in want.items():
                if published.get(k) != v:
                    self.writes.put(k, v)
        self._status, self._endpoints = want_status, want_endpoints

    async def flush(self) -> None:
        """Write what is queued now (tests, and callers that want it in etcd at once)."""
        await self.writes.flush()


def _value(status: TaskStatus) -> bytes:
    return status.to_json()
