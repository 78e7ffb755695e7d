"""The dashboard's gate (tokens, sessions, roles), its traffic rates, and its JSON views
and routes on a `MemoryStore` (no sockets but the TLS test's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from node.api.servicer import ShoalServicer
from node.dashboard import server as server_module
from node.dashboard.gate import COOKIE, PER_TOKEN, Gate, Refused
from node.dashboard.server import Dashboard, Identity, Request
from node.dashboard.traffic import Totals, Traffic
from node.dashboard.views import Views
from node.model.config import ConfigError, NodeConfig, validate
from node.model.keys import Keys
from node.security import bootstrap
from node.security.auth import MemoryCredentials
from node.security.ca import ClusterCA
from node.security.files import write_secret
from node.security.sealing import Sealer
from node.security.tokens import Role, StoredToken
from node.store.memory import MemoryStore
from tests.helpers import wait_until

SECRET = "unit-hunter2-never-shown"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tokens() -> tuple[MemoryCredentials, dict[Role, str]]:
    credentials = MemoryCredentials()
    made = {}
    for role in Role:
        token, record = StoredToken.issue(role, f"unit {role}")
        credentials.add(record)
        made[role] = str(token)
    return credentials, made


async def test_bearer_tokens_and_roles() -> None:
    credentials, tokens = _tokens()
    gate = Gate(credentials)
    viewer = await gate.admit({"authorization": f"Bearer {tokens[Role.VIEWER]}"}, {}, "ListServices")
    assert viewer.role is Role.VIEWER
    for headers in ({}, {"authorization": "Basic x"}, {"authorization": "Bearer nonsense"}):
        with pytest.raises(Refused) as refused:
            await gate.admit(headers, {}, "ListServices")
        assert refused.value.status == 401, headers
    wrong = tokens[Role.VIEWER][:-4] + "aaaa"
    with pytest.raises(Refused) as refused:
        await gate.admit({"authorization": f"Bearer {wrong}"}, {}, "ListServices")
    assert refused.value.status == 401 and "secret is wrong" in refused.value.message
    assert wrong not in refused.value.message
    with pytest.raises(Refused) as refused:  # a view of an admin-only method: not for a viewer
        await gate.admit({"authorization": f"Bearer {tokens[Role.VIEWER]}"}, {}, "CreateToken")
    assert refused.value.status == 403
    assert (
        await gate.admit({"authorization": f"Bearer {tokens[Role.ADMIN]}"}, {}, "CreateToken")
    ).role is Role.ADMIN
    credentials.unavailable = True
    with pytest.raises(Refused) as refused:
        await gate.admit({"authorization": f"Bearer {tokens[Role.VIEWER]}"}, {}, "ListServices")
    assert refused.value.status == 503  # never open


async def test_sessions_end_by_time_logout_and_revocation() -> None:
    credentials, tokens = _tokens()
    clock = Clock()
    gate = Gate(credentials, ttl=60, max_sessions=2, clock=clock)
    session, who = await gate.login(tokens[Role.VIEWER])
    assert who.role is Role.VIEWER and tokens[Role.VIEWER] not in session
    assert (await gate.admit({}, {COOKIE: session}, "ListNodes")).token_id == who.token_id
    clock.now += 61
    with pytest.raises(Refused):
        await gate.admit({}, {COOKIE: session}, "ListNodes")
    session, _ = await gate.login(tokens[Role.VIEWER])
    gate.logout(session)
    with pytest.raises(Refused):
        await gate.admit({}, {COOKIE: session}, "ListNodes")
    session, _ = await gate.login(tokens[Role.VIEWER])
    credentials.revoke(who.token_id)
    with pytest.raises(Refused) as refused:
        await gate.admit({}, {COOKIE: session}, "ListNodes")
    assert "revoked" in refused.value.message
    with pytest.raises(Refused):
        await gate.login(tokens[Role.VIEWER])
    for _ in range(5):  # bounded
        await gate.login(tokens[Role.DEPLOYER])
    assert len(gate._sessions) == 2


async def test_a_wrong_bearer_header_is_refused_alone_and_ends_no_session() -> None:
    """A request with a logged-in browser's cookie and a wrong `Authorization: Bearer`
    (a script, an extension) is refused; the browser's session was ended with it."""
    credentials, tokens = _tokens()
    gate = Gate(credentials)
    session, who = await gate.login(tokens[Role.VIEWER])
    wrong = tokens[Role.ADMIN][:-4] + "aaaa"
    unknown = "shoal_" + "0" * 12 + "_" + "a" * 32
    for token in (wrong, unknown):
        with pytest.raises(Refused) as refused:
            await gate.admit({"authorization": f"Bearer {token}"}, {COOKIE: session}, "ListNodes")
        assert refused.value.status == 401
    assert (await gate.admit({}, {COOKIE: session}, "ListNodes")).token_id == who.token_id


async def test_one_tokens_logins_push_out_its_own_sessions_not_anothers() -> None:
    """Any valid token (a viewer's) could log in 1,000 times and push out every other
    user's session, admins included."""
    credentials, tokens = _tokens()
    gate = Gate(credentials)
    admin, _ = await gate.login(tokens[Role.ADMIN])
    for _ in range(1200):
        await gate.login(tokens[Role.VIEWER])
    assert (await gate.admit({}, {COOKIE: admin}, "ListNodes")).role is Role.ADMIN
    assert len(gate._sessions) == 1 + PER_TOKEN


def test_traffic_rates_latency_and_a_counter_that_went_back() -> None:
    clock = Clock()
    counts = {"web": Totals(0, 0, 0, 0.0)}
    traffic = Traffic(lambda: dict(counts), clock, keep=3)
    traffic.sample()
    clock.now += 2
    counts["web"] = Totals(20, 2, 20, 1.0)
    traffic.sample()
    assert traffic.series() == {"web": [{"at": 1002.0, "rate": 10.0, "errors": 1.0, "latency": 0.05}]}
    clock.now += 2
    counts["web"] = Totals(4, 0, 4, 0.1)  # republished: counts from zero
    traffic.sample()
    assert traffic.series()["web"][-1] == {"at": 1004.0, "rate": 0.0, "errors": 0.0, "latency": 0.0}
    for _ in range(5):
        clock.now += 2
        traffic.sample()
    assert len(traffic.samples) == 3 and len(traffic.series()["web"]) == 2


async def _dashboard() -> tuple[Dashboard, dict[Role, str]]:
    store = MemoryStore()
    servicer = ShoalServicer(store, Keys(), "n1")
    servicer.writer.objects.sealer = Sealer(lambda: b"unit passphrase for sealing")
    await servicer.writer.apply(
        f"name: web\nimage: shoal-demo/web:1\nreplicas: 2\nsecret_env: {{PW: {SECRET}}}\n", "web.yaml"
    )
    credentials, tokens = _tokens()

    async def traffic() -> dict[str, Any]:
        return {"services": {"web": [{"at": 1.0, "rate": 3.0, "errors": 0.0, "latency": 0.0}]}, "notices": []}

    views = Views(servicer, "n1", traffic)
    return Dashboard(views, Gate(credentials), None), tokens


def _request(path: str, token: str = "", method: str = "GET", body: bytes = b"", **headers: str) -> Request:
    if token:
        headers["authorization"] = f"Bearer {token}"
    return Request(
        method,
        path.partition("?")[0],
        dict(q.split("=") for q in path.partition("?")[2].split("&") if q),
        headers,
        body,
    )


async def test_views_answer_a_viewer_and_hold_no_secret() -> None:
    dashboard, tokens = await _dashboard()
    for path in ("/", "/api/overview", "/api/services", "/api/tasks", "/api/events", "/api/traffic"):
        answer = await dashboard.answer(_request(path))
        assert answer.status == 401, path
        answer = await dashboard.answer(_request(path, tokens[Role.VIEWER]))
        assert answer.status == 200, (path, answer.body[:200])
        assert SECRET.encode() not in answer.body, path
    overview = json.loads((await dashboard.answer(_request("/api/overview", tokens[Role.VIEWER]))).body)
    (web,) = overview["services"]
    assert web["name"] == "web" and web["replicas"] == 2 and "spec_json" not in web and web["rollout"] is None
    assert overview["traffic"]["services"]["web"][0]["rate"] == 3.0
    assert overview["viewer"]["role"] == "viewer"
    bad = await dashboard.answer(_request("/api/events?limit=100000", tokens[Role.VIEWER]))
    assert bad.status == 400 and b"limit" in bad.body
    bad = await dashboard.answer(_request("/api/logs?service=Not_A_Name", tokens[Role.VIEWER]))
    assert bad.status == 400
    assert (await dashboard.answer(_request("/api/services", tokens[Role.VIEWER], "POST"))).status == 405
    assert (await dashboard.answer(_request("/api/nope", tokens[Role.VIEWER]))).status == 404


async def test_login_sets_a_cookie_that_then_works() -> None:
    dashboard, tokens = await _dashboard()
    body = json.dumps({"token": tokens[Role.VIEWER]}).encode()
    answer = await dashboard.answer(_request("/login", method="POST", body=body))
    assert answer.status == 200
    (cookie,) = [v for k, v in answer.extra if k == "Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
    assert tokens[Role.VIEWER] not in cookie
    session = cookie.split(";")[0].partition("=")[2]
    request = _request("/api/nodes")
    request.cookies = {COOKIE: session}
    assert (await dashboard.answer(request)).status == 200
    bad = await dashboard.answer(_request("/login", method="POST", body=b'{"token": "shoal_x"}'))
    assert bad.status == 401


async def test_served_over_tls_with_the_node_certificate(tmp_path: Path) -> None:
    dashboard, tokens = await _dashboard()
    authority = ClusterCA.create("unit")
    node = bootstrap.node_identity(authority, "n1", ["127.0.0.1"])
    identity = tmp_path / "node.pem"
    write_secret(identity, node.key.rstrip(b"\n") + b"\n" + node.cert)
    dashboard.identity = Identity(identity)
    server = await dashboard.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    trust = ssl.create_default_context(cadata=authority.cert_pem.decode())

    def fetch(path: str, token: str = "") -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"https://127.0.0.1:{port}{path}"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=5, context=trust
            ) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        status, page = await asyncio.to_thread(fetch, "/")
        assert status == 401 and b'<form id="login"' in page
        status, _ = await asyncio.to_thread(fetch, "/static/app.js")
        assert status == 200
        status, body = await asyncio.to_thread(fetch, "/api/services", tokens[Role.VIEWER])
        assert status == 200 and SECRET.encode() not in body
    finally:
        server.close()
        await server.wait_closed()


async def test_a_half_written_or_missing_certificate_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file is re-read when it changes (renewal). Half written or missing, it closed
    every connection silently; now the last certificate that loaded goes on serving, the
    failure is logged once, and the renewed one is taken as soon as it loads. At start
    there is no last good one: a clear error naming the file."""
    dashboard, _ = await _dashboard()
    authority = ClusterCA.create("unit")
    identity = tmp_path / "node.pem"

    def write(name: str) -> bytes:
        made = bootstrap.node_identity(authority, name, ["127.0.0.1"])
        text = made.key.rstrip(b"\n") + b"\n" + made.cert
        write_secret(identity, text)
        return text

    for broken in (b"", b"-----BEGIN PRIVATE KEY-----\nMIIE"):
        identity.write_bytes(broken)
        with pytest.raises(OSError, match=f"TLS identity {identity} cannot be loaded"):
            Identity(identity)
    identity.unlink()
    with pytest.raises(OSError, match="cannot be loaded"):
        Identity(identity)
    good = write("n1")
    dashboard.identity = Identity(identity)
    server = await dashboard.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    trust = ssl.create_default_context(cadata=authority.cert_pem.decode())

    async def get() -> tuple[bytes, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust)
        subject = dict(x[0] for x in writer.get_extra_info("peercert")["subject"])["commonName"]
        writer.write(b"GET /static/app.js HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.read()
        writer.close()
        return answer.split(b"\r\n", 1)[0], subject

    try:
        assert (await get())[0] == b"HTTP/1.1 200 OK"
        identity.write_bytes(good[: len(good) // 2])  # a renewal caught half way
        for _ in range(2):
            assert await get() == (b"HTTP/1.1 200 OK", "n1")
        assert caplog.text.count("cannot be loaded") == 1
        identity.unlink()
        assert await get() == (b"HTTP/1.1 200 OK", "n1")
        write("n1-renewed")
        await get()  # the file is looked at after each handshake: the next one has it
        assert await get() == (b"HTTP/1.1 200 OK", "n1-renewed")
    finally:
        server.close()
        await server.wait_closed()


def test_the_port_is_checked_against_the_node_s_others() -> None:
    assert validate(NodeConfig(dashboard_port=7072)).dashboard_port == 7072
    assert validate(NodeConfig()).dashboard_port == 0  # off by default
    for port in (7070, 7071, 70000, -1):
        with pytest.raises(ConfigError, match="dashboard_port"):
            validate(NodeConfig(dashboard_port=port))


async def test_bad_requests_get_no_answer_or_a_clear_one() -> None:
    dashboard, tokens = await _dashboard()
    server = await dashboard.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def exchange(raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        return answer

    try:
        assert await exchange(b"garbage\r\n\r\n") == b""
        assert await exchange(b"GET / SPDY/3\r\n\r\n") == b""
        too_big = await exchange(b"POST /login HTTP/1.1\r\nContent-Length: 99999\r\n\r\n")
        assert too_big.startswith(b"HTTP/1.1 413")
        assert await exchange(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n") == b""  # head over 16 KiB
        ok = await exchange(
            f"GET /api/nodes HTTP/1.1\r\nAuthorization: Bearer {tokens[Role.VIEWER]}\r\n\r\n".encode()
        )
        assert ok.startswith(b"HTTP/1.1 200") and b"no-store" in ok and b"default-src 'self'" in ok
    finally:
        server.close()
        await server.wait_closed()


async def test_one_address_cannot_take_every_connection_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections that send nothing hold a slot for up to HEAD_TIMEOUT: from one address
    at most MAX_PER_SOURCE do, and a client from another address is still answered."""
    monkeypatch.setattr(server_module, "MAX_PER_SOURCE", 4)
    dashboard, tokens = await _dashboard()
    server = await dashboard.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
    try:
        async with asyncio.timeout(5):  # the two over the bound are closed at once
            closed = 0
            while closed < 2:
                closed = sum(1 for r, _ in silent if r.at_eof())
                for r, _ in silent:
                    if not r.at_eof():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.05):
                                await r.read()
        assert dashboard.by_source == {"127.0.0.1": 4}
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        writer.write(
            f"GET /api/nodes HTTP/1.1\r\nAuthorization: Bearer {tokens[Role.VIEWER]}\r\n\r\n".encode()
        )
        async with asyncio.timeout(5):
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        for _, w in silent:
            w.close()
        server.close()
        await server.wait_closed()
    await wait_until(lambda: dashboard.by_source == {} and dashboard.open == 0, 3.0, message="all let go")


async def test_a_client_that_stops_reading_its_answer_lets_go_after_the_send_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_module, "SEND_TIMEOUT", 0.3)
    dashboard, tokens = await _dashboard()

    async def huge() -> dict[str, Any]:
        return {"blob": "x" * (32 * 1024 * 1024)}  # more than the socket buffers hold

    dashboard._api["overview"] = lambda r: huge()
    server = await dashboard.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    writer.transport.pause_reading()  # type: ignore[attr-defined]  # and never reads
    writer.write(
        f"GET /api/overview HTTP/1.1\r\nAuthorization: Bearer {tokens[Role.VIEWER]}\r\n\r\n".encode()
    )
    try:
        await wait_until(lambda: dashboard.open == 0, 10.0, message="the stalled answer dropped")
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_malformed_login_bodies_and_numbers_are_refused_not_internal_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A login body of 4 KiB of `[` (no token needed) and a query number of 5,000 digits
    were answered 500 with a traceback in the log: a 400 saying what to send is the answer."""
    dashboard, tokens = await _dashboard()
    for body in (b"[" * 4000, b'{"a":' * 800):
        answer = await dashboard.answer(_request("/login", method="POST", body=body))
        assert answer.status == 400 and b"token" in answer.body, answer.body[:200]
    for path in ("/api/events?limit=" + "9" * 5000, "/api/logs?service=web&tail=" + "1" * 5000):
        answer = await dashboard.answer(_request(path, tokens[Role.VIEWER]))
        assert answer.status == 400 and b"whole number" in answer.body, answer.body[:200]
    assert not [r for r in caplog.records if r.exc_info], "no traceback logged"


async def test_another_sites_page_cannot_log_a_browser_in_or_out() -> None:
    """A form on another site posted an attacker's token to /login (the browser then held
    the attacker's session), and a link to /logout (any method) cleared the cookie."""
    dashboard, tokens = await _dashboard()
    form = f"token={tokens[Role.VIEWER]}".encode()
    kind = "application/x-www-form-urlencoded"
    for headers in (
        {"origin": "https://evil.example", "host": "node1:7072"},
        {"origin": "null", "host": "node1:7072"},
        {"sec-fetch-site": "cross-site", "host": "node1:7072"},
    ):
        answer = await dashboard.answer(
            _request("/login", method="POST", body=form, **{"content-type": kind, **headers})
        )
        assert answer.status == 403 and not answer.extra, (headers, answer.body)
        answer = await dashboard.answer(_request("/logout", method="POST", **headers))
        assert answer.status == 403 and not answer.extra, headers
    assert (await dashboard.answer(_request("/logout"))).status == 405  # a GET changes nothing
    same = {"origin": "https://node1:7072", "host": "node1:7072", "sec-fetch-site": "same-origin"}
    answer = await dashboard.answer(
        _request("/login", method="POST", body=form, **{"content-type": kind, **same})
    )
    assert answer.status == 303  # the page's own form
    answer = await dashboard.answer(_request("/logout", method="POST", **same))
    (cookie,) = [v for k, v in answer.extra if k == "Set-Cookie"]
    assert answer.status == 200 and "Max-Age=0" in cookie and "SameSite=Strict" in cookie
    scripted = await dashboard.answer(  # no browser headers: a script, as before
        _request("/login", method="POST", body=json.dumps({"token": tokens[Role.VIEWER]}).encode())
    )
    assert scripted.status == 200


async def test_the_start_error_names_the_file_for_a_tls_identity_and_the_port_for_a_bind(
    tmp_path: Path,
) -> None:
    """The daemon's refusal to start ended with "choose --dashboard-port" whatever failed;
    for a TLS identity that cannot load another port fails the same way: it names the file
    and what to do about it instead, and only a listener that cannot bind names the port."""
    from types import SimpleNamespace

    from node.dashboard import serve

    missing = tmp_path / "identity.pem"
    with pytest.raises(OSError) as err:
        servicer = ShoalServicer(MemoryStore(), Keys(), "n1")
        traffic = SimpleNamespace(series=dict)
        await serve.start(servicer, MemoryCredentials(), traffic, "n1", missing, "127.0.0.1", 0)  # type: ignore[arg-type]
    text = serve.start_problem(err.value, "127.0.0.1", 8443)
    assert str(missing) in text and "--dashboard-port 0" in text
    assert "choose --dashboard-port" not in text and "another port would not help" in text
    bind = OSError(98, "Address already in use")
    assert serve.start_problem(bind, "127.0.0.1", 8443) == (
        "cannot serve the dashboard on 127.0.0.1:8443: Address already in use; "
        "choose --dashboard-port (0 turns it off)"
    )
