"""Steady HTTP load for the integration tests: bounded in count and time, loopback only.

`Load(url, rate)` sends GET requests from one thread at a steady rate (one keep-alive
connection, opened again after any failure) and records every one: when it started,
when it ended, whether it succeeded (status 200) and the body (the demo image names
its container in it). `stop()` ends it; it also ends by itself after `max_seconds` or
`max_requests`, whichever comes first.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Result:
    start: float  # time.monotonic()
    end: float
    ok: bool
    status: int  # 0 when no response came
    body: str  # the response body, or the error


class Load:
    def __init__(
        self,
        url: str,
        rate: float = 50.0,
        max_seconds: float = 60.0,
        max_requests: int = 5000,
        timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if not (parts.hostname or "").startswith("127."):
            raise ValueError(f"load goes to loopback only, not {url}")
        self.host, self.port, self.path = parts.hostname or "", parts.port or 80, parts.path or "/"
        self.rate, self.max_seconds, self.max_requests, self.timeout = (
            rate,
            max_seconds,
            max_requests,
            timeout,
        )
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Result]:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return self.results

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        began = time.monotonic()
        interval = 1.0 / self.rate
        for i in range(self.max_requests):
            due = began + i * interval
            if self._stop.is_set() or due - began > self.max_seconds:
                break
            if (pause := due - time.monotonic()) > 0 and self._stop.wait(pause):
                break
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            start = time.monotonic()
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace").strip()
                self.results.append(Result(start, time.monotonic(), resp.status == 200, resp.status, body))
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.results.append(Result(start, time.monotonic(), False, 0, f"{type(exc).__name__}: {exc}"))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    # -- views ---------------------------------------------------------------------------

    def failed(self, after: float = 0.0) -> list[Result]:
        """Failed requests that started at or after `after` (monotonic)."""
        return [r for r in self.results if not r.ok and r.start >= after]

    def served_by(self, after: float = 0.0) -> dict[str, int]:
        """Successful responses by body (the replica that answered) since `after`."""
        out: dict[str, int] = {}
        for r in self.results:
            if r.ok and r.start >= after:
                out[r.body] = out.get(r.body, 0) + 1
        return out
