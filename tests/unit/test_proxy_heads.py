"""Head rewriting of the L7 engine (`node.proxy.heads`), as tables: head in, head out.

Plus, end to end through a real proxy, `Transfer-Encoding: gzip, chunked` (issue 11,
item 12): the body stays chunked and the gzip coding is kept, both ways.
"""

from __future__ import annotations

import asyncio
import gzip

import pytest

from node.proxy.balancer import Balancer
from node.proxy.heads import (
    REQ_SPECIAL,
    RESP_SPECIAL,
    codings,
    error_response,
    origin_form,
    request_head,
    response_head,
)
from node.proxy.http import HttpProxy
from tests.unit.test_proxy_http import HOST, Client, HttpBackend, Message, encode

XFF = b"10.1.1.1"
PROTO = b"X-Forwarded-Proto: http"


def split(headers: list[tuple[bytes, bytes]], special: frozenset[bytes]) -> tuple[list[bytes], list]:
    """As `_Client.on_header` fills them: the head list and the special headers aside."""
    head: list[bytes] = [b""]
    aside = []
    for name, value in headers:
        if name.lower() in special:
            aside.append((name.lower(), value))
        else:
            head += [name, b": ", value, b"\r\n"]
    return head, aside


def lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


REQUESTS = [
    # (headers in, lines out after the request line, chunked, body follows, keep-alive asked)
    ([(b"Host", b"a")], [b"Host: a", b"X-Forwarded-For: 10.1.1.1", PROTO], False, False, False),
    (
        [(b"Host", b"a"), (b"Content-Length", b"3")],
        [b"Host: a", b"Content-Length: 3", b"X-Forwarded-For: 10.1.1.1", PROTO],
        False, True, False,
    ),
    (
        [(b"Host", b"a"), (b"Content-Length", b"0")],
        [b"Host: a", b"Content-Length: 0", b"X-Forwarded-For: 10.1.1.1", PROTO],
        False, False, False,
    ),
    (
        [(b"Transfer-Encoding", b"chunked")],
        [b"Transfer-Encoding: chunked", b"X-Forwarded-For: 10.1.1.1", PROTO],
        True, True, False,
    ),
    (  # the gzip coding is kept in front of chunked
        [(b"Transfer-Encoding", b"gzip, chunked")],
        [b"Transfer-Encoding: gzip, chunked", b"X-Forwarded-For: 10.1.1.1", PROTO],
        True, True, False,
    ),
    (  # over two header lines, any case
        [(b"transfer-encoding", b"gzip"), (b"TRANSFER-ENCODING", b"Chunked")],
        [b"Transfer-Encoding: gzip, chunked", b"X-Forwarded-For: 10.1.1.1", PROTO],
        True, True, False,
    ),
    (  # hop-by-hop dropped, and what Connection names
        [(b"Connection", b"keep-alive, X-Secret"), (b"X-Secret", b"s"), (b"Keep-Alive", b"5"), (b"TE", b"x"),
         (b"Upgrade", b"h2c"), (b"X-Ok", b"1")],
        [b"X-Ok: 1", b"X-Forwarded-For: 10.1.1.1", PROTO],
        False, False, True,
    ),
    (  # X-Forwarded-For appended to, X-Forwarded-Proto replaced
        [(b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-Proto", b"gopher")],
        [b"X-Forwarded-For: 1.2.3.4, 10.1.1.1", PROTO],
        False, False, False,
    ),
]  # fmt: skip


@pytest.mark.parametrize(("given", "out", "chunked", "body", "keep"), REQUESTS)
def test_request_head(
    given: list[tuple[bytes, bytes]], out: list[bytes], chunked: bool, body: bool, keep: bool
) -> None:
    head, special = split(given, REQ_SPECIAL)
    got, got_chunked, got_body, got_keep = request_head(
        b"GET / HTTP/1.1\r\n", head, special, XFF, PROTO + b"\r\n"
    )
    assert lines(got) == [b"GET / HTTP/1.1", *out]
    assert (got_chunked, got_body, got_keep) == (chunked, body, keep)


RESPONSES = [
    # (headers in, http10, no body, close) -> (lines out after the status line, chunk out, until eof, close)
    ([(b"Content-Length", b"2")], False, False, False, [b"Content-Length: 2"], False, False, False),
    ([], False, False, False, [b"Transfer-Encoding: chunked"], True, True, False),  # until EOF, re-chunked
    ([], False, False, True, [b"Connection: close"], False, True, True),  # until EOF, to a closed client
    ([(b"Transfer-Encoding", b"chunked")], False, False, False, [b"Transfer-Encoding: chunked"],
     True, False, False),
    (  # the gzip coding is kept in front of chunked
        [(b"Transfer-Encoding", b"gzip, chunked")], False, False, False,
        [b"Transfer-Encoding: gzip, chunked"], True, False, False,
    ),
    (  # and without chunked to a client read until the close
        [(b"Transfer-Encoding", b"gzip, chunked")], False, False, True,
        [b"Transfer-Encoding: gzip", b"Connection: close"], False, False, True,
    ),
    (  # HTTP/1.0 client: no chunked, closed after
        [(b"Transfer-Encoding", b"gzip, chunked")], True, False, False,
        [b"Transfer-Encoding: gzip", b"Connection: close"], False, False, True,
    ),
    (  # Transfer-Encoding overrides Content-Length: only one is sent
        [(b"Content-Length", b"9"), (b"Transfer-Encoding", b"chunked")], False, False, False,
        [b"Transfer-Encoding: chunked"], True, False, False,
    ),
    ([(b"Content-Length", b"9")], False, True, False, [b"Content-Length: 9"], False, False, False),  # HEAD
    ([(b"Content-Length", b"2")], True, False, False, [b"Content-Length: 2", b"Connection: keep-alive"],
     False, False, False),
    ([(b"Connection", b"close, X-A"), (b"X-A", b"1"), (b"X-B", b"2"), (b"Content-Length", b"0")],
     False, False, False, [b"X-B: 2", b"Content-Length: 0"], False, False, False),
]  # fmt: skip


@pytest.mark.parametrize(("given", "http10", "no_body", "close", "out", "chunk", "eof", "closed"), RESPONSES)
def test_response_head(
    given: list[tuple[bytes, bytes]],
    http10: bool,
    no_body: bool,
    close: bool,
    out: list[bytes],
    chunk: bool,
    eof: bool,
    closed: bool,
) -> None:
    head, special = split(given, RESP_SPECIAL)
    got, chunk_out, until_eof, close_after = response_head(200, head, special, http10, no_body, close)
    assert lines(got) == [b"HTTP/1.1 200 OK", *out]
    assert (chunk_out, until_eof, close_after) == (chunk, eof, closed)


@pytest.mark.parametrize(
    ("value", "kept"),
    [(b"chunked", b""), (b" Chunked ", b""), (b"gzip, chunked", b"gzip, "),
     (b"x-a,deflate , chunked", b"x-a, deflate, ")],
)  # fmt: skip
def test_codings_kept_in_front_of_chunked(value: bytes, kept: bytes) -> None:
    assert codings(value) == kept


def test_error_response() -> None:
    assert error_response(431, b"too big\n", True) == (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 8\r\nConnection: close\r\n\r\ntoo big\n"
    )
    assert error_response(503, b"none\n", False, head_only=True).endswith(b"Content-Length: 5\r\n\r\n")


# -- end to end --------------------------------------------------------------------------------


async def test_gzip_chunked_keeps_its_gzip_coding_both_ways() -> None:
    raw = gzip.compress(b"hello " * 1000)

    async def echo_gzip(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        half = len(req.body) // 2
        w.write(encode("HTTP/1.1 200 OK", [("Transfer-Encoding", "gzip, chunked")]))
        w.write(
            b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (half, req.body[:half], len(req.body) - half, req.body[half:])
        )
        return True

    b = HttpBackend("a", echo_gzip)
    bal = Balancer()
    bal.set_endpoints([await b.start()])
    proxy = HttpProxy(HOST, 0, bal, service="web")
    await proxy.start()
    c = await Client.open(proxy.port)
    c.writer.write(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(raw), raw)
    )
    r = await c.response()
    seen = b.seen[0]
    assert seen.get("transfer-encoding") == ["gzip, chunked"]  # still chunked, gzip kept
    assert seen.body == raw
    assert r.get("transfer-encoding") == ["gzip, chunked"] and r.body == raw
    assert gzip.decompress(r.body) == b"hello " * 1000
    await c.close()
    await proxy.close()
    await b.close()


@pytest.mark.parametrize(
    ("url", "origin"),
    [(b"http://h/p?q#f", b"/p?q"), (b"https://h:8443", b"/"), (b"http://h?q", b"/?q"), (b"/p", b"/p"),
     (b"*", b"*"), (b"h:443", b"h:443")],
)  # fmt: skip
def test_origin_form(url: bytes, origin: bytes) -> None:
    assert origin_form(url) == origin
