"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`):
fd 3 takes commands, fd 4 gives answers, each a JSON text ending in NUL. No websocket
client needed. One page; `evaluate` runs JavaScript in it, `screenshot` saves a PNG."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tenacity import Retrying, stop_after_attempt, wait_exponential


class Browser:
    def __init__(self, profile: Path, timeout: float = 30.0) -> None:
        binary = shutil.which("chromium")
        assert binary, "chromium is not installed (deploy/install.sh installs Debian's)"
        self.timeout = timeout
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def plumb() -> None:  # in the child: its fd 3 reads our commands, fd 4 writes its answers
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen(
            [
                binary, "--headless", "--no-sandbox", "--ignore-certificate-errors", "--disable-gpu",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,1600",
                "--no-first-run", "about:blank",
            ],
            preexec_fn=plumb,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, _, self._buffer = self._buffer.partition(b"\0")
                answer = json.loads(raw)
                if answer.get("id") == self._next:
                    assert "error" not in answer, f"{method}: {answer['error']}"
                    return answer["result"]
            left = deadline - time.monotonic()
            assert left > 0, f"{method}: no answer from chromium within {self.timeout}s"
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                assert chunk, f"{method}: chromium closed the pipe (exit {self.proc.poll()})"
                self._buffer += chunk

    def page(self, method: str, **params: Any) -> Any:
        return self.call(method, self.session, **params)

    def open(self, url: str, tries: int = 5) -> None:
        """Navigate; a load that failed (`errorText`: the node did not answer in time on a
        loaded machine) is tried again, up to `tries` times with a growing pause."""
        for attempt in Retrying(
            stop=stop_after_attempt(tries), wait=wait_exponential(0.5, max=4), reraise=True
        ):
            with attempt:
                error = self.page("Page.navigate", url=url).get("errorText")
                assert not error, f"{url}: {error}"

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.page("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        os.close(self._out)
        os.close(self._in)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
