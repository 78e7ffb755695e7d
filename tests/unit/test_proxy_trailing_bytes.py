"""Bytes a replica sends after a whole response, before the next request was sent on that
connection, answer nothing: the L7 engine forwards the response, drops them and does not
reuse the connection. Real sockets on 127.0.0.1.

llhttp used to parse them as the next response: a body after a 204 cut the client off, a
second response in the same read became the answer to the client's next request (the
connection was pooled), a partial head left the pooled connection mid-parse (the next
request, maybe another client's, got a 502 and the healthy replica was reported failing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from node.proxy.balancer import Balancer
from tests.unit.test_proxy_http import Backends, Client, HttpBackend, Message, Respond, started

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    yield b
    await b.close()


def first_then_ok(first: bytes) -> Respond:
    """A backend's answers: `first` to the first request it reads, `OK` to the others."""

    async def respond(b: HttpBackend, req: Message, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(first if len(b.seen) == 1 else OK)
        return True

    return respond


async def two_requests(backends: Backends, first: bytes) -> tuple[HttpBackend, Message, Message, bool]:
    """Two GETs on one client connection to a backend answering `first` then `OK`; also
    whether the replica was reported failing."""
    b, backend = await backends.start("a", first_then_ok(first))
    bal = Balancer()
    bal.set_endpoints([backend])
    proxy = await started(bal)
    c = await Client.open(proxy.port)
    one = await c.get("/1")
    two = await c.get("/2")
    failing = bool(proxy.failing)
    await c.close()
    await proxy.close()
    return b, one, two, failing


async def test_a_second_response_in_the_same_read_is_not_the_answer_to_the_next_request(
    backends: Backends,
) -> None:
    evil = b"HTTP/1.1 302 Found\r\nLocation: http://evil/\r\nContent-Length: 0\r\n\r\n"
    b, one, two, _ = await two_requests(backends, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" + evil)
    assert (one.status, one.body) == (200, b"hi")
    assert (two.status, two.body) == (200, b"yes")
    assert b.accepts == 2  # the connection that sent more was not reused


async def test_a_body_after_a_no_content_response_is_dropped_and_the_response_forwarded(
    backends: Backends,
) -> None:
    b, one, two, _ = await two_requests(
        backends, b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert one.status == 204
    assert (two.status, two.body) == (200, b"yes")
    assert b.accepts == 2


@pytest.mark.parametrize("tail", [b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\n", b"HTTP/1.1 200 OK\r\n", b"H"])
async def test_a_partial_head_after_a_response_does_not_fail_the_next_request(
    backends: Backends, tail: bytes
) -> None:
    b, one, two, failing = await two_requests(
        backends, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + tail
    )
    assert (one.status, one.body) == (200, b"ok")
    assert (two.status, two.body) == (200, b"yes")
    assert not failing
    assert b.accepts == 2


async def test_line_ends_after_a_response_are_harmless(backends: Backends) -> None:
    """llhttp skips CR and LF between messages: the connection is reused as before."""
    b, one, two, failing = await two_requests(backends, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n")
    assert (one.body, two.body, failing) == (b"ok", b"yes", False)
    assert b.accepts == 1
