"""What the h2c engine accepts in a received header block (`node.proxy.h2_fields`, checked
by `node.proxy.h2_peer`'s connection), held to h2's own inbound validation, which it
replaces: every hostile block of the tables, and every generated one, must end the same
way on both (a GOAWAY with PROTOCOL_ERROR, or the same headers passed on), in both
directions (requests from a client, responses and trailers from a replica)."""

from __future__ import annotations

from typing import Literal

import h2.connection
import h2.events
import pytest
from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from node.proxy.h2_fields import Block
from node.proxy.h2_peer import H2Peer, config

Headers = list[tuple[bytes, bytes]]
Outcome = tuple[str, object]

REQUEST: Headers = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/t.T/Who"), (b":authority", b"x:1"),
]  # fmt: skip
RESPONSE: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS: Headers = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
BASE = {Block.REQUEST: REQUEST, Block.RESPONSE: RESPONSE, Block.TRAILERS: TRAILERS}


def _raw(client_side: bool) -> h2.connection.H2Connection:
    """The other end: sends whatever it is given (no outbound checks)."""
    c = h2.connection.H2Connection(
        H2Configuration(
            client_side=client_side, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False,
        )
    )  # fmt: skip
    c.initiate_connection()
    return c


def _receiver(client_side: bool, engine: bool) -> h2.connection.H2Connection:
    """The engine's connection, or plain h2 validating and normalizing (as before)."""
    if engine:
        return H2Peer(client_side, touch=lambda p: None).conn
    c = h2.connection.H2Connection(config(client_side))
    c.initiate_connection()
    return c


def outcome(headers: Headers, block: Block, engine: bool) -> Outcome:
    """Send `headers` as a `block` to a receiver: ("goaway", code) or ("ok", what it got)."""
    if block is Block.REQUEST:
        sender, receiver = _raw(client_side=True), _receiver(client_side=False, engine=engine)
    else:
        sender, receiver = _raw(client_side=False), _receiver(client_side=True, engine=engine)
        receiver.send_headers(1, REQUEST, end_stream=True)
        sender.receive_data(receiver.data_to_send())
        if block is Block.TRAILERS:
            sender.send_headers(1, RESPONSE)
    try:
        sender.send_headers(1, headers, end_stream=True)
    except ProtocolError:
        return "unsendable", None  # h2 will not send it (an informational head with END_STREAM)
    try:
        events = receiver.receive_data(sender.data_to_send())
    except ProtocolError:
        events = sender.receive_data(receiver.data_to_send())
        (ended,) = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        return "goaway", ended.error_code
    kinds = (h2.events.RequestReceived, h2.events.ResponseReceived, h2.events.TrailersReceived)
    heads = [list(map(tuple, e.headers)) for e in events if isinstance(e, kinds)]
    return "ok", heads[-1]


def both(headers: Headers, block: Block) -> tuple[Outcome, Outcome]:
    return outcome(headers, block, engine=False), outcome(headers, block, engine=True)


REFUSED = ("goaway", ErrorCodes.PROTOCOL_ERROR)

# (block, headers) each refused, one rule each
HOSTILE: list[tuple[Block, Headers]] = [
    # names: uppercase, controls, space, DEL, non-ASCII, a colon inside, empty
    (Block.REQUEST, [*REQUEST, (b"X-Evil", b"1")]),
    (Block.REQUEST, [*REQUEST, (b"x\x00y", b"1")]),
    (Block.REQUEST, [*REQUEST, (b"x y", b"1")]),
    (Block.REQUEST, [*REQUEST, (b"x\ty", b"1")]),
    (Block.REQUEST, [*REQUEST, (b"x\x7f", b"1")]),
    (Block.REQUEST, [*REQUEST, (b"x\xc3\xa9", b"1")]),
    (Block.REQUEST, [*REQUEST, (b"x:y", b"1")]),
    (Block.REQUEST, [*REQUEST, (b"", b"1")]),
    # values: NUL, CR, LF, surrounding space or tab (in pseudo-headers too)
    (Block.REQUEST, [*REQUEST, (b"x", b"a\x00b")]),
    (Block.REQUEST, [*REQUEST, (b"x", b"a\r\nx-injected: 1")]),
    (Block.REQUEST, [*REQUEST, (b"x", b"a\nb")]),
    (Block.REQUEST, [*REQUEST, (b"x", b" a")]),
    (Block.REQUEST, [*REQUEST, (b"x", b"a\t")]),
    (Block.REQUEST, [*REQUEST[:2], (b":path", b"/a\r\n"), REQUEST[3]]),
    # connection-specific fields; te other than trailers
    *[
        (Block.REQUEST, [*REQUEST, (name, b"x")])
        for name in (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
    ],
    (Block.REQUEST, [*REQUEST, (b"te", b"gzip")]),
    # pseudo-headers: unknown, repeated, after a regular field
    (Block.REQUEST, [*REQUEST, (b":evil", b"1")]),
    (Block.REQUEST, [(b":", b"1"), *REQUEST]),
    (Block.REQUEST, [*REQUEST, (b":path", b"/other")]),
    (Block.REQUEST, [*REQUEST[:3], (b"x", b"1"), REQUEST[3]]),
    # requests: required pseudo-headers, CONNECT, :status, :protocol, authority, empty path
    (Block.REQUEST, [h for h in REQUEST if h[0] != b":method"]),
    (Block.REQUEST, [h for h in REQUEST if h[0] != b":scheme"]),
    (Block.REQUEST, [h for h in REQUEST if h[0] != b":path"]),
    (Block.REQUEST, [(b":method", b"CONNECT"), (b":authority", b"x:1"), (b":path", b"/")]),
    (Block.REQUEST, [(b":method", b"CONNECT"), (b":authority", b"x:1"), (b":protocol", b"websocket")]),
    (Block.REQUEST, [*REQUEST, (b":status", b"200")]),
    (Block.REQUEST, [*REQUEST, (b":protocol", b"websocket")]),
    (Block.REQUEST, [h for h in REQUEST if h[0] != b":authority"]),
    (Block.REQUEST, [*REQUEST, (b"host", b"y:1")]),
    (Block.REQUEST, [*REQUEST[:3], (b"host", b"x"), (b"host", b"x")]),
    (Block.REQUEST, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"x")]),
    # responses from a replica: the same field rules, :status required, no request pseudo-headers
    (Block.RESPONSE, [*RESPONSE, (b"Content-Type", b"x")]),
    (Block.RESPONSE, [*RESPONSE, (b"x", b"a\r\nset-cookie: b")]),
    (Block.RESPONSE, [*RESPONSE, (b"transfer-encoding", b"chunked")]),
    (Block.RESPONSE, [(b"content-type", b"application/grpc")]),
    (Block.RESPONSE, [*RESPONSE[:1], (b":path", b"/"), *RESPONSE[1:]]),
    (Block.RESPONSE, [*RESPONSE[:1], (b":status", b"204"), *RESPONSE[1:]]),
    # trailers: no pseudo-header, the same field rules
    (Block.TRAILERS, [(b":status", b"200"), *TRAILERS]),
    (Block.TRAILERS, [*TRAILERS, (b"Grpc-Status", b"0")]),
    (Block.TRAILERS, [*TRAILERS, (b"x", b"\x00")]),
    (Block.TRAILERS, [*TRAILERS, (b"connection", b"close")]),
]

# (block, headers) each passed on as sent
ACCEPTED: list[tuple[Block, Headers]] = [
    (Block.REQUEST, REQUEST),
    (Block.REQUEST, [*REQUEST, (b"te", b"trailers"), (b"te", b"TRAILERS"), (b"x", b""), (b"x", b"a b\tc")]),
    (Block.REQUEST, [*REQUEST, (b"host", b"x:1"), (b"x-!#$%&'*+.^_`|~09", b"\x01\xff")]),
    (Block.REQUEST, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"x")]),
    (Block.REQUEST, [(b":method", b"CONNECT"), (b":authority", b"x:1")]),
    (Block.REQUEST, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), *REQUEST[1:]]),
    (Block.RESPONSE, [*RESPONSE, (b"host", b"a"), (b"host", b"b")]),
    (Block.TRAILERS, TRAILERS),
    (Block.TRAILERS, [(b"te", b"trailers")]),
]


@pytest.mark.parametrize(("block", "headers"), HOSTILE)
def test_a_hostile_block_ends_the_connection_as_h2_did(block: Block, headers: Headers) -> None:
    assert both(headers, block) == (REFUSED, REFUSED)


@pytest.mark.parametrize(("block", "headers"), ACCEPTED)
def test_a_valid_block_passes_whole_as_h2_passed_it(block: Block, headers: Headers) -> None:
    assert both(headers, block) == (("ok", headers), ("ok", headers))


@pytest.mark.parametrize("engine", [False, True])
def test_an_informational_response_is_checked_as_a_response(engine: bool) -> None:
    sender, receiver = _raw(client_side=False), _receiver(client_side=True, engine=engine)
    receiver.send_headers(1, REQUEST, end_stream=True)
    sender.receive_data(receiver.data_to_send())
    sender.send_headers(1, [(b":status", b"103"), (b"Link", b"</a>")])
    with pytest.raises(ProtocolError):
        receiver.receive_data(sender.data_to_send())


@pytest.mark.parametrize("engine", [False, True])
def test_the_request_a_push_promise_announces_is_checked_as_a_request(engine: bool) -> None:
    sender, receiver = _raw(client_side=False), _receiver(client_side=True, engine=engine)
    receiver.send_headers(1, REQUEST, end_stream=True)
    sender.receive_data(receiver.data_to_send())
    if engine:  # the engine turns push off towards replicas (ENABLE_PUSH 0): one pushes anyway
        assert sender.remote_settings.enable_push == 0
        sender.remote_settings[SettingCodes.ENABLE_PUSH] = 1
        sender.remote_settings.acknowledge()
    sender.push_stream(1, 2, [*REQUEST, (b"X-Upper", b"1")])
    with pytest.raises(ProtocolError):
        receiver.receive_data(sender.data_to_send())


def test_split_cookie_fields_are_relayed_as_they_came() -> None:
    """Not normalized: joining them is only needed before HTTP/1.1, and the relay speaks HTTP/2."""
    headers = [*REQUEST, (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")]
    assert outcome(headers, Block.REQUEST, engine=True) == ("ok", headers)


NAMES = st.sampled_from([
    b":method", b":scheme", b":path", b":authority", b":status", b":protocol", b":x", b":",
    b"host", b"te", b"connection", b"upgrade", b"content-type", b"x-a", b"X-a", b"x a", b"x:a", b"", b"\xff",
])  # fmt: skip
VALUES = st.sampled_from([
    b"", b"x", b"POST", b"CONNECT", b"http", b"/", b"200", b"100", b"trailers", b"Trailers", b"gzip",
    b"a b", b" a", b"a ", b"\ta", b"a\r", b"a\nb", b"\x00", b"\x7f\xff",
])  # fmt: skip
BLOCKS = st.sampled_from([Block.REQUEST, Block.RESPONSE, Block.TRAILERS])


@settings(max_examples=400, deadline=None)
@given(
    block=BLOCKS,
    start=st.sampled_from(["base", "empty"]),
    fields=st.lists(st.tuples(NAMES, VALUES), max_size=5),
    where=st.sampled_from(["after", "before"]),
)
def test_any_block_ends_the_same_way_as_with_h2s_validation(
    block: Block, start: Literal["base", "empty"], fields: Headers, where: Literal["after", "before"]
) -> None:
    base = BASE[block] if start == "base" else []
    headers = [*base, *fields] if where == "after" else [*fields, *base]
    assume(headers)  # h2 cannot send an empty block
    old, new = both(headers, block)
    assume(old[0] != "unsendable")
    assert new == old
