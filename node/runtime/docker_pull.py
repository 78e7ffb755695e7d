"""One image pull through the Docker SDK, with a deadline and progress (blocking: run it
in a pull thread, `DockerRuntime.pull`).

Progress is the sum over layers of the bytes downloaded and their sizes ("12 of 40 MB"),
reported on each progress event. The deadline is checked on each event; a pull whose
stream stalls (a registry gone silent: no event) ends at the client's read timeout,
which `DockerRuntime` keeps no longer than the deadline, and dockerd cancels it when the
stream closes. Every failure is `ImageError` saying why.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import docker
import requests
import urllib3
from docker.errors import APIError
from docker.utils import parse_repository_tag

from node.runtime.base import ImageError


def pull_image(
    client: docker.DockerClient,
    image: str,
    deadline: float,
    timeout: float,
    progress: Callable[[str], None],
    auth: tuple[str, str] | None = None,
) -> None:
    repository, tag = parse_repository_tag(image)
    auth_config = {"username": auth[0], "password": auth[1]} if auth else None  # to the engine only
    failed = f"image {image} could not be pulled"
    layers: dict[str, tuple[int, int]] = {}  # layer -> (bytes downloaded, its size)
    try:
        events = client.api.pull(
            repository, tag=tag or "latest", stream=True, decode=True, auth_config=auth_config
        )
    except APIError as exc:
        raise ImageError(f"{failed}: {exc.explanation or exc}") from exc
    try:  # the engine answered; a stream that stalls or breaks now is the pull's failure
        for event in events:
            if not isinstance(event, dict):
                continue
            if event.get("error"):
                raise ImageError(f"{failed}: {event['error']}")
            if time.monotonic() > deadline:
                raise ImageError(f"{failed}: it did not finish within {timeout:g}s (pull_timeout)")
            detail = event.get("progressDetail") or {}
            if event.get("id") and detail.get("total"):
                if event.get("status") == "Downloading":
                    layers[event["id"]] = (int(detail.get("current") or 0), int(detail["total"]))
                progress(pulled(layers))
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        stalled = f"no progress for {min(60.0, timeout):g}s, or the stream broke off"
        raise ImageError(f"{failed}: {stalled} ({exc})") from exc


def pulled(layers: dict[str, tuple[int, int]]) -> str:
    done, total = sum(c for c, _ in layers.values()), sum(t for _, t in layers.values())
    return f"{done / 1e6:.0f} of {total / 1e6:.0f} MB"
