"""What kept exited containers cost an agent's listing (decision 71).

    .venv/bin/python bench/kept_listing.py [--exited 40] [--running 5] [--runs 20]

A node keeps up to `task_history_limit` exited containers per slot; the agent lists
its containers every pass (every second). This makes `--exited` exited and `--running`
running containers of the demo image, labelled as one node's, and times
`DockerRuntime.list` of them, median of `--runs`:

- **inspect all exited** (before decision 71: every listing inspected every container
  that was not running, for its exit code): the runtime's memory of inspects cleared
  before each listing;
- **remembered** (now, `node.runtime.docker_seen`): an exited container is inspected
  once, then read from memory while the list endpoint says it is still exited;
- **list call only**: Docker's list endpoint alone (`docker ps -a` with the label
  filter), the floor: no listing can cost less.

Reported, not asserted: the ratios to the floor. The containers carry the label
`shoal.bench=<id>` and are removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import docker

from node.runtime.base import LABELS
from node.runtime.docker import DockerRuntime

IMAGE = "shoal-demo/base:1"


def make(client: docker.DockerClient, bench: str, exited: int, running: int) -> None:
    labels = {"shoal.bench": bench, LABELS.CLUSTER: bench, LABELS.NODE: "n1", LABELS.SERVICE: "kept"}
    for i in range(exited):
        client.containers.run(
            IMAGE, ["sh", "-c", f"echo run {i}"], labels={**labels, LABELS.SLOT: str(i % 5)}
        )
    for _ in range(running):
        client.containers.run(IMAGE, ["sleep", "600"], labels=labels, detach=True)


async def timed(runtime: DockerRuntime, bench: str, runs: int, forget: bool) -> list[float]:
    out = []
    labels = {LABELS.CLUSTER: bench, LABELS.NODE: "n1"}
    await runtime.list(labels)  # the client made, the running ones' start times learnt
    for _ in range(runs):
        if forget:
            runtime._seen._still.clear()  # as before: start times remembered, exited ones not
        start = time.perf_counter()
        await runtime.list(labels)
        out.append(time.perf_counter() - start)
    return out


def raw(client: docker.DockerClient, bench: str, runs: int) -> list[float]:
    out = []
    filters = {"label": [f"{LABELS.CLUSTER}={bench}", f"{LABELS.NODE}=n1"]}
    for _ in range(runs):
        start = time.perf_counter()
        client.api.containers(all=True, filters=filters)
        out.append(time.perf_counter() - start)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exited", type=int, default=40)
    parser.add_argument("--running", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    bench = f"shoal-bench-{uuid.uuid4().hex[:8]}"
    client = docker.DockerClient.from_env()
    runtime = DockerRuntime()
    try:
        make(client, bench, args.exited, args.running)
        before = await timed(runtime, bench, args.runs, forget=True)
        now = await timed(runtime, bench, args.runs, forget=False)
        floor = raw(client, bench, args.runs)
        ms = {
            name: statistics.median(xs) * 1000
            for name, xs in (("before", before), ("now", now), ("floor", floor))
        }
        print(f"{args.exited} exited + {args.running} running containers, median of {args.runs} listings")
        for name, label in (("before", "inspect all exited (before)"), ("now", "remembered (now)")):
            print(f"  {label:28} {ms[name]:7.1f} ms  {ms[name] / ms['floor']:5.1f}x the list call")
        print(f"  {'list call only (floor)':28} {ms['floor']:7.1f} ms")
        print(f"  now / before: {ms['now'] / ms['before']:.3f}")
    finally:
        await runtime.close()
        for c in client.containers.list(all=True, filters={"label": f"shoal.bench={bench}"}):
            c.remove(force=True)
        client.close()


if __name__ == "__main__":
    asyncio.run(main())
