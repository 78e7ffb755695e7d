"""One HTTP(S) GET for a health check, its answer read in full by llhttp (`httptools`,
the parser the proxy uses): status, headers and body, chunked or not, within bounds.

- The request is `GET <path> HTTP/1.1` with `Connection: close`; the `Host` header is
  the check's `host`, or `address:port`. Redirects are not followed.
- `https`: TLS with the server name `host` (without its port) when given. Without
  `tls_verify` (the default) any certificate is accepted, as a replica's is often
  self-signed; with it, the certificate must chain to the system's trusted CAs and name
  `host`. The two SSL contexts are made once per process.
- The answer is read until the message ends, the peer closes, or `BODY_LIMIT` bytes of
  body are in (the rest is not waited for: the status decides). A head over
  `HEAD_LIMIT` bytes, or anything llhttp refuses, is `BadAnswer`.
- `verdict` turns an answer into (passed, message): `status` exactly when the check
  names one, else any 2xx or 3xx (Kubernetes' rule; a redirect counts as healthy).

`get` raises `TimeoutError` past `timeout`, `OSError` (refused, reset, TLS failures:
`ssl.SSLError` is one) and `BadAnswer`; `node.agent.probes` turns them into results.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from functools import cache

from httptools import HttpParserError, HttpResponseParser

HEAD_LIMIT = 64 * 1024  # bytes of status line and headers
BODY_LIMIT = 64 * 1024  # bytes of body kept; reading stops there
READ_SIZE = 16 * 1024
SNIPPET = 120  # characters of a failing answer's body quoted in its message
USER_AGENT = "shoal-health/1"


class BadAnswer(Exception):
    """The peer answered something that is not a complete HTTP response head."""


@dataclass(frozen=True)
class Target:
    address: str  # IP or name to connect to
    port: int
    path: str = "/"
    scheme: str = "http"  # "http" or "https"
    tls_verify: bool = False
    host: str | None = None  # Host header (and TLS server name); None: address:port


@dataclass
class Answer:
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    truncated: bool = False  # the body went on past BODY_LIMIT and was not read further

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class _Reader:
    """httptools callbacks: collect one response."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.body = bytearray()
        self.head_done = False
        self.complete = False

    def on_status(self, reason: bytes) -> None:
        self.answer.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answer.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, chunk: bytes) -> None:
        room = BODY_LIMIT - len(self.body)
        self.body += chunk[:room]
        if len(chunk) > room:
            self.answer.truncated = True

    def on_message_complete(self) -> None:
        self.complete = True


def request_bytes(target: Target) -> bytes:
    host = target.host or _authority(target.address, target.port)
    return (
        f"GET {target.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1", "replace")


async def get(target: Target, timeout: float) -> Answer:
    """GET `target` and read its answer, all within `timeout` seconds."""
    async with asyncio.timeout(timeout):
        ctx, server_name = _tls(target)
        reader, writer = await asyncio.open_connection(
            target.address, target.port, ssl=ctx, server_hostname=server_name
        )
        try:
            writer.write(request_bytes(target))
            return await _read(reader)
        finally:
            writer.transport.abort()


async def _read(reader: asyncio.StreamReader) -> Answer:
    got = _Reader()
    parser = HttpResponseParser(got)
    head_bytes = 0
    # Bounded: every pass reads at least one byte, and the head and body limits end it.
    while not got.complete and not got.answer.truncated:
        data = await reader.read(READ_SIZE)
        if not data:
            break
        if not got.head_done:
            head_bytes += len(data)
        try:
            parser.feed_data(data)
        except HttpParserError as exc:
            if got.head_done:  # a broken body after a whole head: the status still tells
                break
            raise BadAnswer(f"not an HTTP answer ({_first_line(data)}: {exc})") from None
        if not got.head_done and head_bytes > HEAD_LIMIT:
            raise BadAnswer(f"response head over {HEAD_LIMIT // 1024} KiB")
    if not got.head_done:
        raise BadAnswer("closed without an answer" if head_bytes == 0 else "closed in the middle of the head")
    got.answer.status = parser.get_status_code()
    got.answer.body = bytes(got.body)
    return got.answer


def passes(status: int, expected: int | None) -> bool:
    """The check's `status` exactly, or any 2xx or 3xx without one."""
    return status == expected if expected is not None else 200 <= status < 400


def verdict(target: Target, expected: int | None, answer: Answer) -> tuple[bool, str]:
    if passes(answer.status, expected):
        return True, f"HTTP {answer.status}"
    wanted = str(expected) if expected is not None else "2xx or 3xx"
    message = f"HTTP {answer.status} from GET {target.path} (expected {wanted})"
    snippet = " ".join(answer.body[: SNIPPET * 4].decode("utf-8", "replace").split())[:SNIPPET]
    return False, message + (f": {snippet}" if snippet else "")


def _tls(target: Target) -> tuple[ssl.SSLContext | None, str | None]:
    if target.scheme != "https":
        return None, None
    name = _hostname(target.host) if target.host else None
    return _context(target.tls_verify), name or target.address


@cache
def _context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _hostname(host: str) -> str:
    """`name:port` -> name, `[::1]:8443` -> ::1."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if ":" in host else host


def _authority(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _first_line(data: bytes) -> str:
    return repr(data.split(b"\n", 1)[0][:60])
