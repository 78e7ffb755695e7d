"""The chaos suite's collectors: they record what etcd, the engines and the load saw
into the checker's dataclasses (tests/chaos/checker.py) and judge nothing themselves.

- `EtcdHistory`: a watch on the cluster's prefix from the run's first revision (with
  the live leader key as it was then), in a thread of its own, until the end's head
  revision is reached. Watching from the start, not reading from revision 1 at the end,
  keeps the history whole even when the leader compacts etcd during a long soak.
- `EngineSampler`: every `interval` s, `docker ps` on each host's engine socket, the
  running containers with shoal's labels (service, slot, task).
- `Load`: a bounded client inside one host's namespace that GETs a URL through that
  host's mesh every `interval` s, `count` times at most, and prints `t ok` per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import subprocess
import sys
import threading
import time

from deploy.testbed.bed import ETCD_NAME, Bed
from node.model.keys import DEFAULT_PREFIX
from node.runtime.base import LABELS
from node.store.etcd import EtcdStore, EtcdTls
from tests.chaos.checker import Container, Request, Sample, Write


def store_of(bed: Bed) -> EtcdStore:
    pki = bed.pki
    tls = EtcdTls(
        ca=(pki / "ca.crt").read_bytes(),
        cert=(pki / "client-h1.crt").read_bytes(),
        key=(pki / "client-h1.key").read_bytes(),
        server_name=ETCD_NAME,
    )
    return EtcdStore(bed.etcd_endpoints, timeout=5.0, tls=tls)


class EtcdHistory:
    def __init__(self, bed: Bed, prefix: str = DEFAULT_PREFIX) -> None:
        self.bed, self.prefix = bed, prefix
        self.writes: list[Write] = []
        self.seen = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._task: concurrent.futures.Future[None] | None = None
        self._ready = threading.Event()  # set once the state is read and the watch starts after it

    def start(self, timeout: float = 60.0) -> None:
        """Returns once every later write is sure to be seen: the run's first apply came
        before the watch's start revision once (web v1 "lost" in the 10-minute soak)."""
        self._thread.start()
        self._task = asyncio.run_coroutine_threadsafe(self._watch(), self._loop)
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self._task.done():
                self._task.result()  # raises what stopped the watch
                raise RuntimeError("the etcd history watch ended before it started")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the etcd history watch did not start within {timeout:.0f}s")

    async def _watch(self) -> None:
        store = store_of(self.bed)
        await store.connect()
        try:
            leader = await store.get(self.prefix + "leader")
            tasks, head = await store.range(self.prefix + "tasks/")  # what a rewrite is checked against
            if leader is not None:
                self.writes.append(Write(leader.mod_revision, "leader", leader.value, leader.create_revision))
            for kv in tasks:
                key = kv.key.removeprefix(self.prefix)
                self.writes.append(Write(kv.mod_revision, key, kv.value, kv.create_revision))
            self._ready.set()  # the watch below starts at head + 1 whenever it connects
            async for batch in store.watch(self.prefix, head + 1):
                for ev in batch.events:
                    key = ev.kv.key.removeprefix(self.prefix)
                    value = ev.kv.value if ev.kind == "put" else None
                    self.writes.append(Write(ev.kv.mod_revision, key, value, ev.kv.create_revision))
                self.seen = batch.revision
        finally:
            await store.close()

    def head(self) -> int:
        async def ask() -> int:
            store = store_of(self.bed)
            await store.connect()
            try:
                return (await store.range(self.prefix + "leader"))[1]
            finally:
                await store.close()

        return asyncio.run_coroutine_threadsafe(ask(), self._loop).result(30)

    def stop(self, timeout: float = 60.0) -> list[Write]:
        """Wait until the watch has seen the current head revision, then stop it."""
        head, deadline = self.head(), time.monotonic() + timeout
        while self.seen < head and time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                self._task.result()  # the watch failed: say why
            time.sleep(0.2)
        if self.seen < head:
            raise RuntimeError(f"the etcd watch reached revision {self.seen} of {head} in {timeout:.0f}s")
        if self._task is not None:  # cancelled and its store closed before the loop stops
            self._task.cancel()
            with contextlib.suppress(concurrent.futures.CancelledError, concurrent.futures.TimeoutError):
                self._task.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        return self.writes


FORMAT = f'{{{{.Label "{LABELS.SERVICE}"}}}} {{{{.Label "{LABELS.SLOT}"}}}} {{{{.Label "{LABELS.TASK}"}}}}'


def sample(bed: Bed, i: int, t: float) -> Sample:
    if not bed.engine_running(i):  # a stopped engine stopped its containers
        return Sample(t, i, ())
    argv = ["docker", "-H", bed.docker_host(i), "ps", "--filter", f"label=io.shoal.cluster={bed.cluster}",
            "--format", FORMAT]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except subprocess.TimeoutExpired:
        return Sample(t, i, (), ok=False)
    if done.returncode != 0:
        return Sample(t, i, (), ok=False)
    found = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            found.append(Container(parts[0], int(parts[1]), parts[2]))
    return Sample(t, i, tuple(found))


class EngineSampler:
    def __init__(self, bed: Bed, interval: float = 2.0) -> None:
        self.bed, self.interval = bed, interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = float(math.ceil(time.time()))  # one sweep shares one time: the checker groups by it
            self.samples += [sample(self.bed, i, t) for i in range(1, self.bed.hosts + 1)]
            self._stop.wait(self.interval)

    def latest(self) -> list[Sample]:
        if not self.samples:
            return []
        last = self.samples[-1].t
        return [s for s in self.samples if s.t == last]

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(30)
        return self.samples


# Runs inside a host's netns: GET argv[1] at most argv[2] times, every argv[3] s, for at
# most argv[4] s; print "<time> 1|0" per request.
_LOAD = """
import sys, time, urllib.request
url, count, every, until = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), time.time() + float(sys.argv[4])
for _ in range(count):
    if time.time() > until:
        break
    t, ok = time.time(), 0
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            ok = int(r.status == 200)
    except Exception:
        pass
    print(f"{t:.3f} {ok}", flush=True)
    time.sleep(max(0.0, every - (time.time() - t)))
"""


class Load:
    def __init__(self, bed: Bed, host: int, url: str, seconds: float, interval: float = 0.1) -> None:
        count = int(seconds / interval) + 1
        argv = [*bed.in_host(host), sys.executable, "-c", _LOAD, url, str(count), str(interval), str(seconds)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> list[Request]:
        with contextlib.suppress(ProcessLookupError):
            self._proc.terminate()
        out, _ = self._proc.communicate(timeout=30)
        reqs = []
        for line in out.splitlines():
            t, ok = line.split()
            reqs.append(Request(float(t), ok == "1"))
        return reqs
