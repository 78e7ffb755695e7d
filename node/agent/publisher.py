"""Writes what the agent observed to `status/` and `endpoints/`, on the node lease.

Writes only what changed since the last publication on the current lease; when
the lease is replaced everything is written again (the old keys died with the old
lease). Endpoints are withdrawn *before* a container is stopped, so no one is
sent to a replica that is going away.
"""

from __future__ import annotations

import logging

from node.domain import EndpointRecord, TaskStatus
from node.keys import Keys
from node.store import Delete, Put, Store
from node.store.base import MAX_TXN_OPS, Op
from node.store.session import Session

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, store: Store, keys: Keys, session: Session) -> None:
        self.store = store
        self.keys = keys
        self.session = session
        self._lease = 0
        self._status: dict[str, bytes] = {}  # key -> value published on _lease
        self._endpoints: dict[str, bytes] = {}

    async def _write(self, ops: list[Op]) -> None:
        for i in range(0, len(ops), MAX_TXN_OPS):
            await self.store.txn([], ops[i : i + MAX_TXN_OPS])

    async def withdraw(self, service: str, task_id: str) -> None:
        """Delete the task's endpoint, also one a previous life of this daemon published.

        Task ids are unique per assignment, so the key is this node's to delete.
        """
        key = self.keys.endpoint(service, task_id)
        await self.store.delete(key)
        self._endpoints.pop(key, None)

    async def publish(self, statuses: list[TaskStatus], endpoints: list[EndpointRecord]) -> None:
        lease = self.session.lease
        if not self.session.valid.is_set():
            return  # nothing can be written on a lost lease; the next lease republishes
        if lease != self._lease:
            self._lease, self._status, self._endpoints = lease, {}, {}
        want_status = {self.keys.status(s.task_id): _value(s) for s in statuses}
        want_endpoints = {self.keys.endpoint(e.service, e.task_id): e.to_json() for e in endpoints}
        ops: list[Op] = []
        for published, want in ((self._endpoints, want_endpoints), (self._status, want_status)):
            ops += [Delete(k) for k in published if k not in want]
            ops += [Put(k, v, lease=lease) for k, v in want.items() if published.get(k) != v]
        if not ops:
            return
        await self._write(ops)
        self._status, self._endpoints = want_status, want_endpoints


def _value(status: TaskStatus) -> bytes:
    return status.to_json()
