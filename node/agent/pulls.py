"""Image pulls, apart from the agent's passes: one background pull per image.

Why: a pull can take minutes (a large image, a slow registry). Awaited inside a pass,
it held up every other task's withdrawal, restart and health replacement on the node.
Here a start whose image is missing asks `Pulls.ready(image)`: it answers at once,
True when the image is present, else False after starting (once) a background pull,
and raises `ImageError` once when the last pull of that image failed (the agent then
backs off and asks again, which starts a new pull). A finished pull wakes a pass.

The pull policy (issue 13, `node.model.images.needs_pull`): `missing` (the default) as
above; `always` pulls before a start even when the image is present (a pull that
finished within `fresh` seconds counts, so replicas starting together share one);
`never` pulls nothing, and a missing image is an `ImageError` saying so. `auth` gives
the (user, password) for the image's registry, asked only when a pull starts (a start
that needs no pull reads no secret, so it works while etcd is away) and handed to the
engine's pull only.

Each pull has a deadline (`timeout`): past it, it is abandoned and reported failed.
`progress(image)` says how far it is ("12 of 40 MB"), for the task's status
(`pulling` in `shoal ps`). At most `limit` images are tracked; pulls run in the
runtime's own pull threads, never in the pool that lists, starts and stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from node.model.images import needs_pull
from node.runtime.base import EngineError, ImageError, Runtime

log = logging.getLogger(__name__)
Auth = Callable[[], Awaitable[tuple[str, str] | None]]


@dataclass
class Pull:
    image: str
    started: float
    progress: str = ""
    error: str = ""
    task: asyncio.Task[None] | None = None
    finished: float | None = None  # when it succeeded

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


class Pulls:
    def __init__(
        self,
        runtime: Runtime,
        wake: Callable[[], None],
        timeout: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        limit: int = 256,
        fresh: float = 30.0,
    ) -> None:
        self.fresh = fresh
        self.runtime = runtime
        self.wake = wake
        self.timeout = timeout
        self.clock = clock
        self.limit = limit
        self._pulls: dict[str, Pull] = {}

    async def ready(self, image: str, policy: str | None = None, auth: Auth | None = None) -> bool:
        """True when `image` may start now (present, and pulled just now under `always`);
        else start its pull (once) and answer False.

        Raises ImageError (once per failed pull) with the reason the last pull failed, or
        when the image is missing under `pull: never`; EngineError when the engine cannot be asked.
        """
        pull = self._pulls.get(image)
        if pull is not None and pull.running:
            return False
        if pull is not None and pull.error:
            del self._pulls[image]
            raise ImageError(pull.error)
        present = await self.runtime.has_image(image)
        fresh = pull is not None and pull.finished is not None and self.clock() - pull.finished < self.fresh
        if present and (fresh or not needs_pull(policy, present)):
            if policy != "always":
                self._pulls.pop(image, None)
            return True
        if policy == "never":
            raise ImageError(
                f"image {image} is not on this node's engine and the spec says pull: never "
                "(load it on every node, or use pull: missing)"
            )
        self._begin(image, await auth() if auth is not None else None)  # read only when pulling
        return False

    def progress(self, image: str) -> str:
        """What a task waiting for `image` shows: "pulling <image>: 12 of 40 MB" (coarse: its
        status is rewritten only when this text changes)."""
        pull = self._pulls.get(image)
        if pull is None or not pull.running or not pull.progress:
            return f"pulling {image}"
        return f"pulling {image}: {pull.progress}"

    def pulling(self) -> list[str]:
        return sorted(image for image, pull in self._pulls.items() if pull.running)

    def _begin(self, image: str, auth: tuple[str, str] | None = None) -> None:
        if len(self._pulls) >= self.limit:  # forget finished ones first; running ones are bounded by passes
            for old in [i for i, p in self._pulls.items() if not p.running][: len(self._pulls) // 2 + 1]:
                del self._pulls[old]
        pull = Pull(image, self.clock())
        pull.task = asyncio.get_running_loop().create_task(self._pull(pull, auth), name=f"pull-{image}")
        self._pulls[image] = pull

    async def _pull(self, pull: Pull, auth: tuple[str, str] | None = None) -> None:
        def progress(text: str) -> None:  # called from the pull's thread: one assignment, no lock needed
            pull.progress = text

        try:
            async with asyncio.timeout(self.timeout):
                await self.runtime.pull(pull.image, self.timeout, progress, auth)
        except TimeoutError:
            late = f"it did not finish within {self.timeout:g}s (pull_timeout)"
            pull.error = f"image {pull.image} could not be pulled: {late}"
        except EngineError as exc:
            pull.error = str(exc)
        except Exception as exc:  # a bug or an odd engine answer: reported, never lost in a task
            log.exception("pull of %s failed", pull.image)
            pull.error = f"image {pull.image} could not be pulled: {exc}"
        if pull.error:
            log.warning("%s", pull.error)
        else:
            pull.finished = self.clock()
        self.wake()

    def cancel(self) -> None:
        for pull in self._pulls.values():
            if pull.task is not None:
                pull.task.cancel()
