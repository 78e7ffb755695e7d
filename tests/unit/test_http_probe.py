"""`node.agent.http_probe` and the http check through `Prober`, against real servers on
127.0.0.1: plain HTTP and HTTPS (a self-signed certificate made here with
`cryptography`); the whole answer read (chunked, until EOF, bounded); 2xx-3xx healthy
(a redirect is not followed), 500 not; a slow server times out; garbage is unhealthy.
Also the spec fields `scheme`, `tls_verify` and `host`, refused with clear errors."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.agent import http_probe
from node.agent.health import Check, check_of
from node.agent.http_probe import BODY_LIMIT, BadAnswer, Target
from node.agent.probes import Prober
from node.dev.fakeruntime import FakeRuntime
from node.model.spec import FieldError, SpecError, parse_spec, spec_to_dict
from node.runtime.base import Container

BIG = b"x" * (BODY_LIMIT * 4)


def answer(status: str, body: bytes = b"", *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(*parts: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body


ANSWERS: dict[bytes, bytes] = {
    b"/ok": answer("200 OK", b"fine"),
    b"/moved": answer("301 Moved Permanently", b"", "Location: http://elsewhere.test/"),
    b"/no-content": answer("204 No Content"),
    b"/broken": answer("500 Internal Server Error", b"database is down\n  try later"),
    b"/missing": answer("404 Not Found"),
    b"/chunked": chunked(b"hello ", b"chunked ", b"world"),
    b"/eof": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
    b"/garbage": b"SSH-2.0-OpenSSH_9.6\r\n",
    b"/half-head": b"HTTP/1.1 200 OK\r\nContent-Le",
    b"/huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 100_000 + b"\r\n\r\n",
}


@dataclass
class Server:
    port: int
    seen: list[dict[bytes, bytes]]  # the headers of every request, lowercased names
    release: asyncio.Event  # ends the /hang answers


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    try:
        line = await reader.readline()
        headers: dict[bytes, bytes] = {}
        while (h := await reader.readline()).strip():
            name, _, value = h.partition(b":")
            headers[name.strip().lower()] = value.strip()
        server.seen.append(headers)
        path = line.split()[1] if len(line.split()) > 1 else b""
        if path == b"/hang":
            await server.release.wait()
        elif path == b"/big":
            writer.write(answer("200 OK", BIG))
        elif path == b"/host":
            writer.write(answer("200 OK", headers.get(b"host", b"")))
        elif path == b"/closed":
            pass
        else:
            writer.write(ANSWERS.get(path, answer("404 Not Found")))
        await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass  # the prober aborts once it has what it needs
    finally:
        writer.close()


class running:
    """An HTTP server on 127.0.0.1 (TLS with `tls`), closed on exit."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls

    async def __aenter__(self) -> Server:
        self.server = Server(0, [], asyncio.Event())
        self.srv = await asyncio.start_server(
            lambda r, w: serve(r, w, self.server), "127.0.0.1", 0, ssl=self.tls
        )
        self.server.port = self.srv.sockets[0].getsockname()[1]
        return self.server

    async def __aexit__(self, *_: object) -> None:
        self.server.release.set()
        self.srv.close()
        await self.srv.wait_closed()


def self_signed(tmp: Path, names: tuple[str, ...] = ("localhost",)) -> tuple[Path, Path]:
    """A self-signed certificate for `names` and 127.0.0.1, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@pytest.fixture
async def plain() -> AsyncIterator[Server]:
    async with running(None) as server:
        yield server


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


@pytest.fixture
async def tls_server(cert: tuple[Path, Path]) -> AsyncIterator[Server]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    async with running(ctx) as server:
        yield server


def container() -> Container:
    return Container("c1", "web.1.t1", {}, "running", ip="127.0.0.1")


async def probe(port: int, path: str, **check: object) -> tuple[bool, str]:
    return await Prober(FakeRuntime(), "127.0.0.1").probe(Check("http", port, path, **check), container())  # type: ignore[arg-type]


# -- the answer, read whole ----------------------------------------------------------------


async def test_status_headers_and_body_are_read(plain: Server) -> None:
    got = await http_probe.get(Target("127.0.0.1", plain.port, "/ok"), 2.0)
    assert (got.status, got.reason, got.body, got.truncated) == (200, "OK", b"fine", False)
    assert got.header("content-length") == "4"
    moved = await http_probe.get(Target("127.0.0.1", plain.port, "/moved"), 2.0)
    assert (moved.status, moved.header("Location")) == (301, "http://elsewhere.test/")


async def test_chunked_and_until_eof_bodies_are_decoded(plain: Server) -> None:
    got = await http_probe.get(Target("127.0.0.1", plain.port, "/chunked"), 2.0)
    assert (got.status, got.body) == (200, b"hello chunked world")
    eof = await http_probe.get(Target("127.0.0.1", plain.port, "/eof"), 2.0)
    assert (eof.status, eof.body) == (200, b"until the end")


async def test_a_big_body_is_read_only_up_to_the_bound(plain: Server) -> None:
    got = await http_probe.get(Target("127.0.0.1", plain.port, "/big"), 2.0)
    assert got.status == 200 and got.truncated and len(got.body) == BODY_LIMIT
    assert await probe(plain.port, "/big") == (True, "HTTP 200")


async def test_the_request_names_the_host(plain: Server) -> None:
    got = await http_probe.get(Target("127.0.0.1", plain.port, "/host"), 2.0)
    assert got.body == f"127.0.0.1:{plain.port}".encode()
    got = await http_probe.get(Target("127.0.0.1", plain.port, "/host", host="app.example:8080"), 2.0)
    assert got.body == b"app.example:8080"
    assert plain.seen[-1][b"connection"] == b"close"
    assert plain.seen[-1][b"user-agent"].startswith(b"shoal-health/")


# -- the verdict ---------------------------------------------------------------------------


async def test_2xx_and_3xx_pass_and_redirects_are_not_followed(plain: Server) -> None:
    assert await probe(plain.port, "/ok") == (True, "HTTP 200")
    assert await probe(plain.port, "/no-content") == (True, "HTTP 204")
    assert await probe(plain.port, "/moved") == (True, "HTTP 301")
    assert len(plain.seen) == 3  # the redirect to elsewhere.test was not followed


async def test_500_fails_quoting_the_body(plain: Server) -> None:
    ok, message = await probe(plain.port, "/broken")
    assert not ok
    assert message == "HTTP 500 from GET /broken (expected 2xx or 3xx): database is down try later"
    assert await probe(plain.port, "/missing") == (False, "HTTP 404 from GET /missing (expected 2xx or 3xx)")


async def test_an_explicit_status_must_match_exactly(plain: Server) -> None:
    assert await probe(plain.port, "/missing", status=404) == (True, "HTTP 404")
    ok, message = await probe(plain.port, "/moved", status=200)
    assert (ok, message) == (False, "HTTP 301 from GET /moved (expected 200)")


async def test_a_slow_server_times_out_within_the_timeout(plain: Server) -> None:
    started = time.monotonic()
    ok, message = await probe(plain.port, "/hang", timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert (ok, message) == (False, f"GET :{plain.port}/hang: no answer within 0.2s")
    with pytest.raises(TimeoutError):
        await http_probe.get(Target("127.0.0.1", plain.port, "/hang"), 0.1)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/garbage", "not an HTTP answer (b'SSH-2.0-OpenSSH_9.6\\r'"),
        ("/closed", "closed without an answer"),
        ("/half-head", "closed in the middle of the head"),
        ("/huge-head", "response head over 64 KiB"),
    ],
)
async def test_garbage_is_unhealthy(plain: Server, path: str, words: str) -> None:
    ok, message = await probe(plain.port, path)
    assert not ok and message.startswith(f"GET {path}: ") and words in message, message
    with pytest.raises(BadAnswer):
        await http_probe.get(Target("127.0.0.1", plain.port, path), 2.0)


# -- https ---------------------------------------------------------------------------------


async def test_https_with_a_self_signed_certificate(tls_server: Server) -> None:
    assert await probe(tls_server.port, "/ok", scheme="https") == (True, "HTTP 200")
    ok, message = await probe(tls_server.port, "/broken", scheme="https")
    assert not ok and message.startswith("HTTP 500")
    got = await http_probe.get(Target("127.0.0.1", tls_server.port, "/chunked", "https"), 2.0)
    assert got.body == b"hello chunked world"


async def test_tls_verify_refuses_a_certificate_no_trusted_ca_signed(tls_server: Server) -> None:
    ok, message = await probe(tls_server.port, "/ok", scheme="https", tls_verify=True, host="localhost")
    assert not ok and message.startswith(f"GET :{tls_server.port}/ok (https): TLS: ")
    assert "CERTIFICATE_VERIFY_FAILED" in message, message


async def test_tls_verify_checks_the_name_in_host(
    tls_server: Server, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    trusting = ssl.create_default_context(cafile=str(cert[0]))  # as if a trusted CA signed it
    monkeypatch.setattr(http_probe, "_context", lambda verify: trusting if verify else None)
    assert await probe(tls_server.port, "/host", scheme="https", tls_verify=True, host="localhost:8443") == (
        True,
        "HTTP 200",
    )
    ok, message = await probe(tls_server.port, "/ok", scheme="https", tls_verify=True, host="other.test")
    assert not ok and "TLS" in message and "CERTIFICATE_VERIFY_FAILED" in message, message


async def test_scheme_mismatches_are_unhealthy(plain: Server, tls_server: Server) -> None:
    ok, message = await probe(plain.port, "/ok", scheme="https", timeout=0.5)
    assert not ok, message  # the plain server waits for a request line that never comes

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)  # a TLS ClientHello: answered as most plain servers do
        writer.write(answer("400 Bad Request"))
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    ok, message = await probe(port, "/ok", scheme="https", timeout=2.0)
    srv.close()
    await srv.wait_closed()
    assert not ok and message.startswith(f"GET :{port}/ok (https): TLS: "), message
    ok, message = await probe(tls_server.port, "/ok", timeout=0.5)  # plain HTTP to a TLS port
    assert not ok, message


# -- the spec ------------------------------------------------------------------------------


def spec_with(http: str) -> str:
    return f"name: web\nimage: shoal-demo/web:1\nhealth:\n  http: {http}\n"


def test_https_fields_reach_the_check() -> None:
    spec = parse_spec(spec_with("{port: 8443, scheme: https, tls_verify: true, host: app.example}"))
    check = check_of(spec)
    assert check is not None
    assert (check.scheme, check.tls_verify, check.host, check.status) == ("https", True, "app.example", None)
    plain = check_of(parse_spec(spec_with("{port: 8080}")))
    assert plain is not None and (plain.scheme, plain.tls_verify, plain.host) == ("http", False, None)


def test_fields_left_out_are_not_stored() -> None:
    """So the stored form and template hash of a spec without them do not change."""
    assert spec_to_dict(parse_spec(spec_with("{port: 8080}")))["health"]["http"] == {
        "port": 8080,
        "path": "/",
    }


@pytest.mark.parametrize(
    ("http", "path", "words"),
    [
        ("{port: 80, scheme: ftp}", "health.http.scheme", "must be 'http' or 'https'"),
        ("{port: 80, tls_verify: true}", "health.http", "tls_verify applies only to scheme https"),
        ("{port: 80, scheme: https, tls_verify: true}", "health.http", "tls_verify needs `host`"),
        ("{port: 80, scheme: https, tls_verify: yes please}", "health.http.tls_verify", "boolean"),
        ("{port: 80, host: 'a b'}", "health.http.host", "must be a host name or address"),
        ("{port: 80, host: 'x:1:2'}", "health.http.host", "must be a host name or address"),
        ("{port: 80, hots: x}", "health.http.hots", "did you mean 'host'?"),
    ],
)
def test_bad_http_settings_name_the_field(http: str, path: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with(http), "web.yaml")
    errors: list[FieldError] = info.value.errors
    assert [e.path for e in errors] == [path], errors
    assert words in errors[0].message, errors[0].message
