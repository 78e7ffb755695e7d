"""The example application's web tier (deploy/examples/app): a visit counter kept in
redis. Standard library only: the shoal-deb/python image runs it as a config mounted
read-only at /app/web.py.

    GET /         INCR visits in redis; answers "visit N, served by HOST"
    GET /health   "ok" (the process answers; redis is not asked, so a redis restart
                  does not take the web tier out of rotation)

Redis is reached by its service name (`redis:6379`, shoal's name server and VIP), with
the password from /run/secrets/redis_pw. A tiny RESP client: one connection per
thread, opened again after any error."""

from __future__ import annotations

import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REDIS = (os.environ.get("REDIS_HOST", "redis"), int(os.environ.get("REDIS_PORT", "6379")))
PASSWORD_FILE = os.environ.get("REDIS_PASSWORD_FILE", "/run/secrets/redis_pw")
HOST = socket.gethostname()
GREETING = os.environ.get("GREETING", "visit")
_local = threading.local()


class RedisError(Exception):
    pass


def _encode(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _reply(f) -> object:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise RedisError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else f.read(size + 2)[:-2].decode()
    if kind == b"*":
        return [_reply(f) for _ in range(max(int(rest), 0))]
    raise RedisError(f"unexpected reply {line[:40]!r}")


def _connect():
    sock = socket.create_connection(REDIS, timeout=3)
    f = sock.makefile("rb")
    with open(PASSWORD_FILE) as pw:
        password = pw.read().strip()
    sock.sendall(_encode("AUTH", password))
    _reply(f)
    return sock, f


def command(*args: str) -> object:
    """Send one command on this thread's connection; on any error close it, connect again
    and send once more (INCR is sent at most twice: a lost reply may count a visit twice)."""
    for attempt in (1, 2):
        try:
            if getattr(_local, "conn", None) is None:
                _local.conn = _connect()
            sock, f = _local.conn
            sock.sendall(_encode(*args))
            return _reply(f)
        except (OSError, RedisError) as e:
            conn, _local.conn = getattr(_local, "conn", None), None
            if conn is not None:
                conn[0].close()
            if attempt == 2 or (isinstance(e, RedisError) and not str(e).startswith("connection")):
                raise
    raise AssertionError("unreachable")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, "ok\n")
            return
        try:
            visits = command("INCR", "visits")
        except (OSError, RedisError) as e:
            self._send(503, f"redis unavailable ({type(e).__name__}), served by {HOST}\n")
            return
        self._send(200, f"{GREETING} {visits}, served by {HOST}\n")

    def _send(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would flood the logs under load


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler)
    server.daemon_threads = True
    print(f"web on {HOST}: port {server.server_address[1]}, redis at {REDIS[0]}:{REDIS[1]}", flush=True)
    server.serve_forever()
