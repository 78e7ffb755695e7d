"""The dashboard's HTTPS listener: asyncio streams, HTTP/1.1, one request per connection.

No web framework: the page is static files (`static/`, shipped in the package) and
a handful of GET views (`node.dashboard.views`), so a small parser on asyncio streams
does, as the proxy's engines do. Routes:

| request                  | answer                                                      |
|--------------------------|-------------------------------------------------------------|
| `GET /`                  | the page; 401 (the same page, showing its login form) until logged in |
| `GET /static/<file>`     | the page's script and style (no login: they hold no data)   |
| `POST /login`            | a token (JSON `{"token": …}` or a form): a session cookie   |
| `POST /logout`           | ends the session                                            |
| `GET /api/<view>`        | JSON: overview, nodes, services, tasks, events, logs, traffic, usage |

Every `/api/` answer needs a login (`node.dashboard.gate`); none holds a secret. The two
POSTs are refused (403) when a browser says another site's page sent them (`cross_site`:
`Sec-Fetch-Site`, `Origin` against `Host`), so no page elsewhere can log a browser in
with its own token or out of its session. TLS is
the node's own certificate (the cluster CA's), re-read when the file changes (renewal;
a file missing or half written keeps the last one that loaded, logged: `Identity`),
so a browser that trusts the cluster CA trusts every node's page. Bounds: a head of
`MAX_HEAD` bytes read within `HEAD_TIMEOUT`, a body of `MAX_BODY`, `MAX_CONNECTIONS`
open at once and `MAX_PER_SOURCE` from one address (more are closed at once), an answer
read by the client within `SEND_TIMEOUT`, `Connection: close` after each answer.
Headers forbid caching, framing, sniffing and any script or style not from the page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from node.dashboard.gate import COOKIE, SESSION_TTL, Gate, Refused
from node.dashboard.views import METHODS, ViewError, Views
from node.model.errors import ShoalError, status_of
from node.store import StoreUnavailable

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 4096
MAX_DIGITS = 18  # of a number in a query (`limit`, `tail`): the views bound them far lower
HEAD_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0  # s an answer may take to be read by the client
MAX_CONNECTIONS = 64
MAX_PER_SOURCE = 32  # open at once from one address: one client cannot take every slot
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
)
_HTTP = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "PERMISSION_DENIED": 403,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_REASONS = {
    200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout",
}  # fmt: skip


def static_file(name: str) -> bytes:
    return resources.files("node.dashboard").joinpath("static", name).read_bytes()


class IdentityError(OSError):
    """The node's identity file cannot make a TLS server context (missing, unreadable, or
    not a key and certificate: half written). The message names the file."""


class Identity:
    """The server TLS context of the node's identity file, reloaded when the file changes.

    `context` (the listener's) hands each handshake the last identity that loaded
    (`sni_callback`, called for every ClientHello, with or without a server name). A
    change is loaded into a fresh context and swapped in only whole: a file missing or
    half written by a renewal keeps the last good certificate, logged once per change
    of the file, and is taken as soon as it loads. At start there is no last good one:
    `IdentityError`, naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._failed: tuple[tuple[int, int] | None] | None = None  # (stamp,) of the last failure
        self.current = self._load()  # fails at start (IdentityError) when it cannot be read
        self.context = self.current
        self.context.sni_callback = self._pick

    def _load(self) -> ssl.SSLContext:
        try:
            st = self.path.stat()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.path)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise IdentityError(
                f"the node's TLS identity {self.path} cannot be loaded ({exc}); it holds the node's "
                "key and certificate, written at join and renewed by the daemon"
            ) from None
        self._stamp = (st.st_mtime_ns, st.st_size)
        return context

    def _pick(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        if self.current is not context:
            connection.context = self.current

    def refresh(self) -> None:
        """Load the file again when it changed; on failure keep the last good identity."""
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return
        try:
            self.current = self._load()  # new handshakes use it; open ones keep theirs
            self._failed = None
        except IdentityError as exc:
            if self._failed != (stamp,):
                log.warning("dashboard: %s; serving the last certificate that loaded", exc)
            self._failed = (stamp,)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    cookies: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    extra: list[tuple[str, str]] = field(default_factory=list)


def _json(status: int, data: Any, extra: list[tuple[str, str]] | None = None) -> Answer:
    return Answer(status, json.dumps(data, separators=(",", ":")).encode(), extra=extra or [])


def _error(status: int, message: str) -> Answer:
    return _json(status, {"error": message})


class Dashboard:
    def __init__(self, views: Views, gate: Gate, identity: Identity | None) -> None:
        self.views = views
        self.gate = gate
        self.identity = identity
        self.open = 0
        self.by_source: dict[str, int] = {}  # address -> connections open from it
        self._api: dict[str, Callable[[Request], Awaitable[Any]]] = {
            "overview": lambda r: views.overview(),
            "nodes": lambda r: views.nodes(),
            "services": lambda r: views.services(),
            "tasks": lambda r: views.tasks(r.query.get("service", "")),
            "events": lambda r: views.events(_int(r.query, "limit", 50), r.query.get("service", "")),
            "logs": lambda r: views.logs(r.query.get("service", ""), _int(r.query, "tail", 50)),
            "traffic": lambda r: views.traffic(),
            "usage": lambda r: views.usage(r.query.get("service", "")),
        }

    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Bind (OSError when the address is taken) and serve until the server is closed."""
        return await asyncio.start_server(
            self._connection,
            host,
            port,
            ssl=self.identity.context if self.identity is not None else None,
            ssl_handshake_timeout=HEAD_TIMEOUT if self.identity is not None else None,
            limit=MAX_HEAD,
        )

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        self.open += 1
        self.by_source[source] = self.by_source.get(source, 0) + 1
        try:
            if self.open > MAX_CONNECTIONS or self.by_source[source] > MAX_PER_SOURCE:
                log.warning(
                    "dashboard: connection from %s closed: %d open from it (bound %d), %d in all (bound %d)",
                    source, self.by_source[source], MAX_PER_SOURCE, self.open, MAX_CONNECTIONS,
                )  # fmt: skip
                return
            if self.identity is not None:
                self.identity.refresh()  # for the next handshakes: this one is done
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    request = await _read(reader)
            except Refused as refused:
                answer = _error(refused.status, refused.message)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                return
            else:
                answer = await self.answer(request)
            writer.write(_encode(answer))
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await writer.drain()
            except TimeoutError:  # a client that stops reading: drop what it did not take
                writer.transport.abort()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.open -= 1
            left = self.by_source[source] - 1
            if left:
                self.by_source[source] = left
            else:
                del self.by_source[source]
            writer.close()

    async def answer(self, request: Request) -> Answer:
        """The answer to one request (the routing, apart from the sockets)."""
        try:
            return await self._route(request)
        except Refused as refused:
            return _error(refused.status, refused.message)
        except ViewError as exc:
            return _error(_HTTP.get(exc.code, 500), exc.message)
        except ShoalError as exc:
            return _error(_HTTP.get(status_of(exc), 500), str(exc))
        except StoreUnavailable as exc:
            return _error(503, f"{exc}; the cluster state cannot be read now")
        except Exception as exc:
            log.exception("dashboard: %s %s failed", request.method, request.path)
            return _error(500, f"internal error: {type(exc).__name__}")

    async def _route(self, request: Request) -> Answer:
        path = request.path
        if path in STATIC:
            if request.method != "GET":
                return _error(405, f"{path} answers GET only")
            name, kind = STATIC[path]
            status = 200
            if path == "/":
                try:
                    await self.gate.admit(request.headers, request.cookies, "WhoAmI")
                except Refused as refused:
                    status = refused.status  # the page then shows its login form
            return Answer(status, static_file(name), kind)
        if path in ("/login", "/logout"):
            if request.method != "POST":
                return _error(405, f"POST to {path}")
            if (why := cross_site(request)) is not None:
                return _error(403, f"{path} is for this page only: {why}")
            if path == "/login":
                return await self._login(request)
            self.gate.logout(request.cookies.get(COOKIE, ""))
            gone = f"{COOKIE}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Strict"
            return _json(200, {"ok": True}, [("Set-Cookie", gone)])
        view = path.removeprefix("/api/")
        if path.startswith("/api/") and view in self._api:
            if request.method != "GET":
                return _error(405, f"{path} answers GET only: the dashboard changes nothing")
            viewer = None
            for method in METHODS[view]:
                viewer = await self.gate.admit(request.headers, request.cookies, method)
            data = await self._api[view](request)
            if viewer is not None:
                data["viewer"] = {"token": viewer.token_id, "role": str(viewer.role)}
            return _json(200, data)
        return _error(404, f"no page at {path[:100]}; the dashboard is at /")

    async def _login(self, request: Request) -> Answer:
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/x-www-form-urlencoded"):
            token = urllib.parse.parse_qs(request.body.decode("utf-8", "replace")).get("token", [""])[0]
        else:
            try:  # RecursionError: a body of 4 KiB of `[` nests deeper than the parser goes
                token = str(json.loads(request.body or b"{}").get("token", ""))
            except (ValueError, AttributeError, RecursionError):
                return _error(400, 'send {"token": "shoal_…"} as JSON, or a form with a token field')
        session, viewer = await self.gate.login(token)
        cookie = f"{COOKIE}={session}; Max-Age={int(SESSION_TTL)}; Path=/; Secure; HttpOnly; SameSite=Strict"
        if kind.startswith("application/x-www-form-urlencoded"):
            return Answer(303, b"", "text/plain", [("Set-Cookie", cookie), ("Location", "/")])
        return _json(200, {"token": viewer.token_id, "role": str(viewer.role)}, [("Set-Cookie", cookie)])


def cross_site(request: Request) -> str | None:
    """Why a POST comes from another site's page, or None: a browser names the page that
    sent it (`Sec-Fetch-Site`, `Origin`); a script that sends neither is not a browser."""
    site = request.headers.get("sec-fetch-site", "")
    if site in ("cross-site", "same-site"):
        return f"sent from another site's page (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin", "")
    if origin and urllib.parse.urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        return f"sent from a page of {origin[:100]!r}, not of this node"
    return None


def _int(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name, "")
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS:
        raise Refused(400, f"{name}: {text[:20]!r} is not a whole number of at most {MAX_DIGITS} digits")
    return int(text)  # within MAX_DIGITS: Python's int() refuses strings of over 4300 digits


async def _read(reader: asyncio.StreamReader) -> Request:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(version)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    parts = urllib.parse.urlsplit(target)
    query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_BODY or length < 0:
        raise Refused(413, f"a request body of at most {MAX_BODY} bytes")
    body = await reader.readexactly(length) if length else b""
    cookies: dict[str, str] = {}
    for pair in headers.get("cookie", "").split(";"):
        name, _, value = pair.strip().partition("=")
        if name:
            cookies[name] = value
    return Request(method.upper(), parts.path, query, headers, body, cookies)


def _encode(answer: Answer) -> bytes:
    head = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Unknown')}"]
    head += [f"Content-Type: {answer.content_type}", f"Content-Length: {len(answer.body)}"]
    head += ["Connection: close", *(f"{k}: {v}" for k, v in (*HEADERS, *answer.extra))]
    if answer.status == 401:
        head.append('WWW-Authenticate: Bearer realm="shoal"')
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body
