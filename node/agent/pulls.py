"""Image pulls, apart from the agent's passes: one background pull per image.

Why: a pull can take minutes (a large image, a slow registry). Awaited inside a pass,
it held up every other task's withdrawal, restart and health replacement on the node.
Here a start whose image is missing asks `Pulls.ready(image)`: it answers at once,
True when the image is present, else False after starting (once) a background pull,
and raises `ImageError` once when the last pull of that image failed (the agent then
backs off and asks again, which starts a new pull). A finished pull wakes a pass.

Each pull has a deadline (`timeout`): past it, it is abandoned and reported failed.
`progress(image)` says how far it is ("12 of 40 MB"), for the task's status
(`pulling` in `shoal ps`). At most `limit` images are tracked; pulls run in the
runtime's own pull threads, never in the pool that lists, starts and stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.runtime.base import EngineError, ImageError, Runtime

log = logging.getLogger(__name__)


@dataclass
class Pull:
    image: str
    started: float
    progress: str = ""
    error: str = ""
    task: asyncio.Task[None] | None = None

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
    ) -> None:
        self.runtime = runtime
        self.wake = wake
        self.timeout = timeout
        self.clock = clock
        self.limit = limit
        self._pulls: dict[str, Pull] = {}

    async def ready(self, image: str) -> bool:
        """True when `image` is present; else start its pull (once) and answer False.

        Raises ImageError (once per failed pull) with the reason the last pull failed,
        EngineError when the engine cannot be asked.
        """
        pull = self._pulls.get(image)
        if pull is not None and pull.running:
            return False
        if pull is not None and pull.error:
            del self._pulls[image]
            raise ImageError(pull.error)
        if await self.runtime.has_image(image):
            self._pulls.pop(image, None)
            return True
        self._begin(image)
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

    def _begin(self, image: str) -> None:
        if len(self._pulls) >= self.limit:  # forget finished ones first; running ones are bounded by passes
            for old in [i for i, p in self._pulls.items() if not p.running][: len(self._pulls) // 2 + 1]:
                del self._pulls[old]
        pull = Pull(image, self.clock())
        pull.task = asyncio.get_running_loop().create_task(self._pull(pull), name=f"pull-{image}")
        self._pulls[image] = pull

    async def _pull(self, pull: Pull) -> None:
        def progress(text: str) -> None:  # called from the pull's thread: one assignment, no lock needed
            pull.progress = text

        try:
            async with asyncio.timeout(self.timeout):
                await self.runtime.pull(pull.image, self.timeout, progress)
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
        self.wake()

    def cancel(self) -> None:
        for pull in self._pulls.values():
            if pull.task is not None:
                pull.task.cancel()
