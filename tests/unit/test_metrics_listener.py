"""The /metrics listener: `/metrics` only, an optional bearer token, optional TLS with the
node's certificate (issue 11, 15e: it used to answer every path with the metrics)."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from node.proxy import metrics
from node.security import bootstrap
from node.security.ca import ClusterCA
from node.security.files import write_secret


def _mesh() -> Any:
    return SimpleNamespace(
        stats={}, bind_errors={}, read_counters=lambda: 0.0, backend_counts=dict, ingress_counters=list
    )


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Any] = []

    def start(**kwargs: Any) -> int:
        server = metrics.serve(_mesh(), "127.0.0.1", 0, **kwargs)
        servers.append(server)
        return int(server.server_port)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def fetch(url: str, token: str = "", context: ssl.SSLContext | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=5, context=context
        ) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_only_the_metrics_path_is_served(serve: Any) -> None:
    port = serve()
    status, body = fetch(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and "python_info" not in body  # the mesh's registry only
    for path in ("/", "/etc/passwd", "/metrics/x", "/favicon.ico", "/anything?x=1"):
        status, body = fetch(f"http://127.0.0.1:{port}{path}")
        assert status == 404 and "/metrics only" in body, path


def test_a_token_is_required_when_configured(serve: Any) -> None:
    port = serve(token="s3cret-token")
    url = f"http://127.0.0.1:{port}/metrics"
    for given in ("", "wrong", "s3cret-token-longer"):
        status, body = fetch(url, given)
        assert status == 401 and "Bearer" in body, given
    assert fetch(url, "s3cret-token")[0] == 200
    assert fetch(f"http://127.0.0.1:{port}/other", "s3cret-token")[0] == 404


def test_tls_with_the_node_certificate(serve: Any, tmp_path: Path) -> None:
    authority = ClusterCA.create("unit")
    node = bootstrap.node_identity(authority, "n1", ["127.0.0.1"])
    identity = tmp_path / "node.pem"
    write_secret(identity, node.key.rstrip(b"\n") + b"\n" + node.cert)
    port = serve(identity=identity, token="t")
    trust = ssl.create_default_context(cadata=authority.cert_pem.decode())
    assert fetch(f"https://127.0.0.1:{port}/metrics", "t", trust)[0] == 200
    assert fetch(f"https://127.0.0.1:{port}/metrics", "", trust)[0] == 401
    with pytest.raises(OSError):  # plaintext gets no answer
        fetch(f"http://127.0.0.1:{port}/metrics", "t")
    # A renewed certificate is served without a restart.
    renewed = bootstrap.node_identity(authority, "n1", ["127.0.0.1"])
    write_secret(identity, renewed.key.rstrip(b"\n") + b"\n" + renewed.cert)
    with urllib.request.urlopen(
        urllib.request.Request(f"https://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer t"}),
        timeout=5,
        context=trust,
    ) as resp:
        served = resp.fp.raw._sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert served == ssl.PEM_cert_to_DER_cert(renewed.cert.decode())


def test_the_daemon_reads_the_token_file(tmp_path: Path) -> None:
    from node.daemon.wiring import metrics_guard
    from node.model.config import NodeConfig

    token = tmp_path / "metrics.token"
    write_secret(token, b"abc\n")
    assert metrics_guard(NodeConfig(data_dir=tmp_path, metrics_token_file=str(token))) == (None, "abc")
    identity, _ = metrics_guard(NodeConfig(data_dir=tmp_path, metrics_tls=True))
    assert identity == tmp_path / "tls" / "node.pem"
    token.chmod(0o644)
    with pytest.raises(OSError, match="chmod 600"):
        metrics_guard(NodeConfig(data_dir=tmp_path, metrics_token_file=str(token)))
    write_secret(token, b"")
    with pytest.raises(OSError, match="empty"):
        metrics_guard(NodeConfig(data_dir=tmp_path, metrics_token_file=str(token)))


def test_binding_asks_no_dns(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """http.server looks the address up in DNS (getfqdn) when it binds; on a host whose
    resolver does not answer that held the daemon's event loop for 10 s at start (found
    on the test bed, deploy/testbed/). The listener must never ask."""

    def no_dns(*_: Any) -> str:
        raise AssertionError("the metrics listener asked DNS for its name")

    monkeypatch.setattr(metrics.socket, "getfqdn", no_dns)
    port = serve()
    assert fetch(f"http://127.0.0.1:{port}/metrics")[0] == 200
