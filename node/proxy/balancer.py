"""Round-robin over the healthy endpoints of one service port, with passive outlier ejection.

Pure: no sockets, no asyncio, no grpc/docker/etcd. The clock is passed in (`now`, in
seconds of any monotonic clock), so every rule below is tested with a table.

Rotation. Backends are kept sorted by key (the task id) and the cursor is the key of
the last backend picked; `pick` returns the first eligible backend whose key sorts
after the cursor, wrapping around. The cursor is a key, not an index, so
`set_endpoints` (replicas added or removed by a watch, a whole node removed by gossip)
moves nothing: the rotation goes on from where it was. Guarantees:

- with every backend eligible, any n consecutive picks (n backends, no update between
  them) return each backend exactly once, whatever happened before; so k*n picks give
  each backend exactly k;
- after an update the next n' picks again cover the new n' backends exactly once;
- every proxy of the cluster walks the same order (sorted task ids).

Outlier ejection (Envoy's "consecutive failures", simplified). The caller reports the
outcome of every use of a backend (`report(backend, ok, now)`, e.g. a TCP connect).
`consecutive_failures` failures in a row eject it for
`min(base_ejection * 2**(ejections - 1), max_ejection)` seconds, `ejections` counting
the ejections since its last success. An ejected backend is never picked until that
time has passed; then it is back in the rotation on probation: one success clears its
record, one failure ejects it again for twice as long. Reports about an ejected backend
(from connections begun before it was ejected) are ignored. The last eligible backend of
a set is never ejected: traffic is better tried on a doubtful replica than refused.

Dead nodes. `remove_nodes` drops at once every backend on nodes gossip declared dead,
and keeps them out of later `set_endpoints` calls (etcd may still list them for a
while) until `restore_nodes`.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum

CONSECUTIVE_FAILURES = 3
"""Failures in a row that eject a backend. Lower reacts faster, higher tolerates blips."""
BASE_EJECTION = 1.0
"""Seconds of the first ejection; each further one (without a success between) doubles it."""
MAX_EJECTION = 30.0
"""Cap on one ejection, seconds: a replica that recovers is back within this time."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One routable replica: `key` is its task id, `node` the node it runs on."""

    key: str
    address: str
    port: int
    node: str = ""


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    consecutive_failures: int = CONSECUTIVE_FAILURES
    base_ejection: float = BASE_EJECTION
    max_ejection: float = MAX_EJECTION

    def ejection_time(self, ejections: int) -> float:
        """Seconds the `ejections`-th ejection in a row lasts (1-based)."""
        return min(self.base_ejection * 2.0 ** max(0, ejections - 1), self.max_ejection)


@dataclass(slots=True)
class _Health:
    failures: int = 0  # consecutive failures since the last success or ejection
    ejections: int = 0  # ejections since the last success
    ejected_until: float = 0.0


class Balancer:
    """The endpoint set of one service port and its round-robin cursor."""

    def __init__(self, outlier: OutlierConfig | None = None) -> None:
        self.outlier = outlier or OutlierConfig()
        self._given: dict[str, Backend] = {}  # the last set_endpoints, dead nodes included
        self._dead_nodes: set[str] = set()
        self._backends: dict[str, Backend] = {}  # routable: given minus dead nodes
        self._keys: list[str] = []  # sorted keys of _backends
        self._health: dict[str, _Health] = {}
        self._cursor: str | None = None

    # -- the endpoint set ------------------------------------------------------------

    @property
    def backends(self) -> list[Backend]:
        """The routable backends, in rotation order (ejected ones included)."""
        return [self._backends[k] for k in self._keys]

    def __len__(self) -> int:
        return len(self._keys)

    def set_endpoints(self, backends: Iterable[Backend]) -> list[Backend]:
        """Replace the set; returns the backends that left it (to drain them).

        A backend whose key stays with the same address and port keeps its health
        record; one whose address or port changed is a new replica (fresh record) and
        the old one is returned as removed.
        """
        self._given = {b.key: b for b in backends}
        return self._rebuild()

    def remove_nodes(self, nodes: Iterable[str]) -> list[Backend]:
        """Drop every backend on `nodes` at once (gossip declared them dead)."""
        self._dead_nodes.update(nodes)
        return self._rebuild()

    def restore_nodes(self, nodes: Iterable[str]) -> None:
        """Let backends on `nodes` back in (gossip sees them alive again)."""
        self._dead_nodes.difference_update(nodes)
        self._rebuild()

    def _rebuild(self) -> list[Backend]:
        new = {k: b for k, b in self._given.items() if b.node not in self._dead_nodes}
        removed = [b for k, b in self._backends.items() if new.get(k) != b]
        for b in removed:
            self._health.pop(b.key, None)
        for k in new:
            self._health.setdefault(k, _Health())
        self._backends = new
        self._keys = sorted(new)
        return removed

    # -- picking -------------------------------------------------------------------------

    def is_ejected(self, backend: Backend, now: float) -> bool:
        h = self._health.get(backend.key)
        return h is not None and h.ejected_until > now

    def pick(self, now: float, exclude: Collection[str] = ()) -> Backend | None:
        """The next eligible backend after the cursor, or None if there is none.

        `exclude` holds keys not to pick (those a retrying caller already tried).
        """
        keys = self._keys
        n = len(keys)
        if n == 0:
            return None
        start = 0 if self._cursor is None else bisect.bisect_right(keys, self._cursor)
        for i in range(n):
            key = keys[(start + i) % n]
            if self._health[key].ejected_until > now or key in exclude:
                continue
            self._cursor = key
            return self._backends[key]
        return None

    # -- outcomes ------------------------------------------------------------------------

    def report(self, backend: Backend, ok: bool, now: float) -> bool:
        """Record one outcome; True when this report ejected the backend."""
        if self._backends.get(backend.key) != backend:
            return False  # no longer in the set, or a replica with the same key replaced it
        h = self._health[backend.key]
        if h.ejected_until > now:
            return False
        if ok:
            h.failures = 0
            h.ejections = 0
            return False
        h.failures += 1
        threshold = 1 if h.ejections else self.outlier.consecutive_failures
        if h.failures < threshold or not self._others_eligible(backend.key, now):
            return False
        h.failures = 0
        h.ejections += 1
        h.ejected_until = now + self.outlier.ejection_time(h.ejections)
        return True

    def _others_eligible(self, key: str, now: float) -> bool:
        return any(k != key and h.ejected_until <= now for k, h in self._health.items())


class Failure(StrEnum):
    """Why one attempt at a backend failed."""

    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CLOSED_BEFORE_RESPONSE = "closed_before_response"  # HTTP: the backend closed, no answer
    OTHER = "other"  # anything after the backend answered: never retried


IDEMPOTENT_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which failed attempts are tried again on another backend.

    A failed connect never reached the application, so it is always safe to retry
    (up to `max_attempts` attempts in all). A backend that closed an HTTP request's
    connection before answering may have acted on it, so only an idempotent request
    (GET, HEAD) is retried, and only `closed_retries` times.
    """

    max_attempts: int = 3
    closed_retries: int = 1

    def start(self, method: str | None = None) -> Attempts:
        return Attempts(self, method)


class Attempts:
    """The attempts of one connection or request: what was tried and what may come next."""

    __slots__ = ("_closed", "count", "method", "policy", "tried")

    def __init__(self, policy: RetryPolicy, method: str | None = None) -> None:
        self.policy = policy
        self.method = method.upper() if method else None
        self.tried: set[str] = set()
        self.count = 0  # failed attempts so far
        self._closed = 0

    def failed(self, backend: Backend, failure: Failure) -> bool:
        """Record a failed attempt; True when another backend may be tried."""
        self.tried.add(backend.key)
        self.count += 1
        if self.count >= self.policy.max_attempts:
            return False
        if failure in (Failure.CONNECT_REFUSED, Failure.CONNECT_TIMEOUT):
            return True
        if failure is Failure.CLOSED_BEFORE_RESPONSE and self.method in IDEMPOTENT_METHODS:
            self._closed += 1
            return self._closed <= self.policy.closed_retries
        return False
