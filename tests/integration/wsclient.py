"""A minimal blocking RFC 6455 client for the tests: the handshake (checked), masked
text frames out, text and close frames in. No dependency: the host venv has no
WebSocket library, and a hand-written client shows exactly what crosses the proxy."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class Closed(Exception):
    """The server sent a close frame (`code`), or the connection ended without one
    (`code` None)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with code {code}" if code else "connection ended without a close frame")
        self.code = code


class WebSocket:
    def __init__(self, host: str, port: int, path: str = "/", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (path.encode(), host.encode(), port, key)
        )
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            self.sock.close()
            raise ConnectionError(f"no upgrade: {lines[0]!r}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            self.sock.close()
            raise ConnectionError(f"bad Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}")

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise Closed(None)
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        else:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, text: str) -> None:
        self._send(OP_TEXT, text.encode())

    def recv(self) -> str:
        """The next text message; answers pings; a close frame is answered and raised."""
        while True:
            b0, b1 = self._take(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._take(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._take(8))
            payload = self._take(n)
            opcode = b0 & 0x0F
            if opcode == OP_TEXT:
                return payload.decode()
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self._send(OP_CLOSE, payload[:2])
                raise Closed(code)

    def wait_end(self) -> bytes:
        """After a close: what is left until the other side closes the connection."""
        rest = self.buf
        while data := self.sock.recv(65536):
            rest += data
        return rest

    def close(self) -> None:
        self.sock.close()
