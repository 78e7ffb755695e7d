"""Usage per task: CPU, memory and network of this node's shoal containers, sampled apart.

A daemon thread of its own, on a Docker client of its own, asks the engine for
one-shot stats (`GET /containers/{id}/stats?stream=0&one-shot=1`: the cgroup
counters, no one-second wait) of each running container of this node's cluster, one
round every `interval` seconds. It never runs inside the agent's pass and never holds
a pool thread the agent needs: a slow or hung engine delays only the next round (each
call is bounded by the client's `timeout`, a round by `interval`: the containers not
reached in time are sampled in the next round, the last figures kept meanwhile).

`UsageSampler.latest` is a dict replaced whole at the end of each round (readers, the
`/metrics` collector in another thread, take the reference and never see a half-made
one); so is `history`, the last `HISTORY` samples of each container (the short
in-memory history `shoal top` and `service ps` read: CPU % is the difference of two
samples, `cpu_percent`). A container that is gone drops out at the next round.

`usage_of` turns one stats answer into `Usage` (pure; unit-tested with recorded
answers): CPU seconds since the container started (a counter: it restarts at 0 with a
new container, which Prometheus' `rate` takes as a counter reset), memory in use as
`docker stats` shows it (usage less the inactive page cache), the memory limit, and
the network bytes received and sent summed over its interfaces, and the block I/O
bytes read and written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from node.runtime.base import LABELS

log = logging.getLogger(__name__)

INTERVAL = 10.0  # s between rounds
TIMEOUT = 5.0  # s one stats call may take
HISTORY = 30  # samples kept per container (5 minutes at the default interval)


@dataclass(frozen=True)
class Usage:
    service: str
    slot: int
    task_id: str
    cpu_seconds: float  # since the container started
    memory_bytes: int  # in use (without the inactive page cache), as `docker stats` shows it
    memory_limit: int  # bytes; the host's memory when the container has no limit
    rx_bytes: int
    tx_bytes: int
    at: float  # time.time() of the sample
    block_read: int = 0  # bytes, since the container started
    block_write: int = 0


def block_io(stats: Mapping[str, Any]) -> tuple[int, int]:
    """(bytes read, bytes written) from `blkio_stats` (cgroup v1 "Read", v2 "read")."""
    read = write = 0
    for entry in (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or ():
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read += int(entry.get("value") or 0)
        elif op == "write":
            write += int(entry.get("value") or 0)
    return read, write


def cpu_percent(before: Usage, after: Usage) -> float:
    """CPU between two samples of one container, 100 = one core busy (as `docker stats`);
    0 when the counter went back (a new container) or no time passed."""
    elapsed = after.at - before.at
    used = after.cpu_seconds - before.cpu_seconds
    if elapsed <= 0 or used < 0:
        return 0.0
    return 100.0 * used / elapsed


def usage_of(labels: Mapping[str, str], stats: Mapping[str, Any], at: float) -> Usage:
    """One container's `Usage` from its labels and one stats answer (cgroup v1 or v2)."""
    cpu = stats.get("cpu_stats") or {}
    mem = stats.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))  # v1, v2
    used = int(mem.get("usage") or 0)
    nets = (stats.get("networks") or {}).values()
    read, write = block_io(stats)
    try:
        slot = int(labels.get(LABELS.SLOT, "0"))
    except ValueError:
        slot = 0
    return Usage(
        service=labels.get(LABELS.SERVICE, ""),
        slot=slot,
        task_id=labels.get(LABELS.TASK, ""),
        cpu_seconds=int((cpu.get("cpu_usage") or {}).get("total_usage") or 0) / 1e9,
        memory_bytes=max(0, used - int(inactive or 0)) if used else 0,
        memory_limit=int(mem.get("limit") or 0),
        rx_bytes=sum(int(n.get("rx_bytes") or 0) for n in nets),
        tx_bytes=sum(int(n.get("tx_bytes") or 0) for n in nets),
        at=at,
        block_read=read,
        block_write=write,
    )


# (labels of each running container of ours by id) and (stats of one container id)
Lister = Callable[[], dict[str, dict[str, str]]]
Fetcher = Callable[[str], Mapping[str, Any]]


class UsageSampler:
    """Samples in a daemon thread; `start()` once, `stop()` to end it (it ends within one call)."""

    def __init__(
        self,
        lister: Lister,
        fetch: Fetcher,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lister, self.fetch, self.interval, self.clock = lister, fetch, interval, clock
        self.latest: dict[str, Usage] = {}  # container id -> its last sample; replaced whole
        self.history: dict[str, tuple[Usage, ...]] = {}  # container id -> its last samples, oldest first
        self.rounds = 0
        self.errors = 0  # calls that failed (the engine away, a container gone meanwhile)
        self.last_round_seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> None:
        """One round: every running container, until the round's deadline (`interval`)."""
        start = self.clock()
        deadline = start + self.interval
        try:
            listed = self.lister()
        except Exception as exc:  # the engine away: keep nothing stale past one round
            self.errors += 1
            log.debug("usage: cannot list containers: %s", exc)
            self.latest, self.history = {}, {}
            return
        out: dict[str, Usage] = {}
        for cid, labels in listed.items():
            if self._stop.is_set() or self.clock() > deadline:
                old = self.latest.get(cid)  # not reached this round: its last figures stand
                if old is not None:
                    out[cid] = old
                continue
            try:
                out[cid] = usage_of(labels, self.fetch(cid), time.time())
            except Exception as exc:
                self.errors += 1
                log.debug("usage: no stats for %s: %s", cid[:12], exc)
        history = {}
        for cid, usage in out.items():
            past = self.history.get(cid, ())
            history[cid] = past if past and past[-1] is usage else (*past[-(HISTORY - 1) :], usage)
        self.latest, self.history = out, history  # readers take either whole, never half-made
        self.rounds += 1
        self.last_round_seconds = self.clock() - start

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def docker_sampler(url: str | None, cluster: str, node: str, interval: float = INTERVAL) -> UsageSampler:
    """A sampler of this node's shoal containers on the engine at `url`, with a client of its own."""
    import docker  # here: the pure parts above stay importable without the SDK's start-up cost

    client: Any = None

    def api() -> Any:
        nonlocal client
        if client is None:
            client = (
                docker.DockerClient(base_url=url, timeout=TIMEOUT)
                if url
                else docker.from_env(timeout=TIMEOUT)
            )
        return client.api

    def lister() -> dict[str, dict[str, str]]:
        filters = {"label": [f"{LABELS.CLUSTER}={cluster}", f"{LABELS.NODE}={node}"], "status": "running"}
        return {c["Id"]: c.get("Labels") or {} for c in api().containers(filters=filters)}

    def fetch(cid: str) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = api().stats(cid, stream=False, one_shot=True)
        return answer

    return UsageSampler(lister, fetch, interval)
