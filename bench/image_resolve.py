"""Resolving a tag to a digest at deploy: at the registry (shoal's way) or through the engine.

    .venv/bin/python bench/image_resolve.py [--runs 30] [--size 20000000]

Starts Debian's `docker-registry` on a free port of 127.0.0.1 (`tests.integration.registry`),
pushes an image of `--size` random bytes over `shoal-demo/web:1`, removes it from the
local engine, then times, `--runs` times each:

- registry: `node.api.registry.resolve_digest`, one `HEAD /v2/<name>/manifests/<tag>`
  (a fresh HTTP session each time, as `apply` does);
- engine, image absent: `docker pull <tag>` then `RepoDigests` (the layers downloaded
  on the node that answers the API; the image removed before each run);
- engine, image present: the same once the image is there (the engine still asks the
  registry for the manifest).

It prints the median and p90 of each, and checks the three give the same digest.
Needs dockerd, `docker-registry` and the demo images, as the integration tests do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import requests

from node.api.registry import resolve_digest
from node.model.images import parse_image
from tests.helpers import free_port
from tests.integration.registry import LocalRegistry, images_from, remove_pulled


def timed(
    runs: int, once: Callable[[], str], before: Callable[[], None] = lambda: None
) -> tuple[list[float], str]:
    times, answer = [], ""
    for _ in range(runs):
        before()
        start = time.perf_counter()
        answer = once()
        times.append((time.perf_counter() - start) * 1000)
    return times, answer


def row(what: str, times: list[float]) -> str:
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]
    return f"{what:<34} median {statistics.median(times):8.1f} ms   p90 {p90:8.1f} ms   (n={len(times)})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--size", type=int, default=20_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        registry = LocalRegistry(free_port(), Path(tmp) / "registry")
        registry.workdir.mkdir(parents=True)
        registry.start()
        engine = docker.from_env()
        try:
            image = f"{registry.address}/{registry.push('bench-resolve', '1', size=args.size)}"
            ref = parse_image(image)

            def at_registry() -> str:
                with requests.Session() as http:
                    return resolve_digest(http, ref, None)  # type: ignore[arg-type]

            def through_engine() -> str:
                engine.api.pull(ref.name, tag=ref.tag)
                digests = engine.api.inspect_image(image)["RepoDigests"]
                return str(digests[0].split("@", 1)[1])

            def absent() -> None:
                remove_pulled(images_from(registry.address))

            head, d1 = timed(args.runs, at_registry)
            cold, d2 = timed(max(3, args.runs // 5), through_engine, absent)
            warm, d3 = timed(args.runs, through_engine)
        finally:
            remove_pulled(images_from(registry.address))
            engine.close()
            registry.stop()
    print(f"image {image}, a {args.size / 1e6:.0f} MB layer over shoal-demo/web:1")
    print(row("registry HEAD (shoal)", head))
    print(row("engine pull + RepoDigests, absent", cold))
    print(row("engine pull + RepoDigests, present", warm))
    same = d1 == d2 == d3
    print(f"same digest: {same} ({d1})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
