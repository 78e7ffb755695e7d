"""The shared HTTP(S) entrance (issue 17 item 3) on a real 2-node cluster: two host names
over TLS with SNI (one certificate from a secret, signed by a CA of the test's own; one
issued by the cluster CA), path prefix routing, the HTTP->HTTPS redirect, the
X-Forwarded-* headers a real replica (Python's http.server in shoal-deb/python) sees,
404 for an unknown host, a sticky cookie keeping a client on one of two replicas, and a
route conflict refused at apply naming the other service; through every node's entrance.
And PROXY protocol v2 ahead of a tcp port's connections, read by a real replica."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from node.dev.devcluster import DevCluster
from node.security.ca import ClusterCA
from node.security.site_cert import issue_site
from tests.helpers import free_port_on_all, wait_until_sync
from tests.integration.test_websocket import PYTHON_IMAGE, python_image  # noqa: F401  (a fixture)

pytestmark = pytest.mark.integration

HOSTS = ["127.0.0.1", "127.0.0.2"]

# Answers every GET with JSON: which service, which replica, the path and the headers it got.
SERVER = """
import http.server, json, os, socket
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = json.dumps({"service": os.environ["NAME"], "replica": socket.gethostname(),
                           "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def spec(name: str, rules: list[dict[str, Any]], replicas: int = 1) -> str:
    return json.dumps(
        {
            "name": name,
            "replicas": replicas,
            "image": PYTHON_IMAGE,
            "command": ["python3", "-c", SERVER],
            "env": {"NAME": name},
            "ports": [{"container": 8080}],
            "ingress": rules,
        }
    )


def get(
    address: str,
    port: int,
    host: str,
    path: str = "/",
    tls: ssl.SSLContext | None = None,
    sni: str = "",
    cookie: str = "",
) -> tuple[int, dict[str, str], bytes]:
    """One GET on a new connection to `address:port` for `host`: (status, headers, body)."""
    with socket.create_connection((address, port), timeout=5) as raw:
        conn: socket.socket = tls.wrap_socket(raw, server_hostname=sni or host) if tls else raw
        jar = f"Cookie: {cookie}\r\n" if cookie else ""
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{jar}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    line, *rest = head.decode("latin-1").split("\r\n")
    return int(line.split()[1]), {k.lower(): v for k, v in (h.split(": ", 1) for h in rest)}, body


def test_ingress_routes_hosts_and_paths_over_tls_with_sni_on_every_node(
    make_cluster: Callable[..., DevCluster],
    python_image: str,  # noqa: F811
) -> None:
    http_port = free_port_on_all(HOSTS)
    https_port = free_port_on_all(HOSTS)
    while https_port == http_port:
        https_port = free_port_on_all(HOSTS)
    flags = ["--ingress-http-port", str(http_port), "--ingress-https-port", str(https_port)]
    cluster = make_cluster(2, extra_args=flags)

    own_ca = ClusterCA.create("outside")  # a CA the cluster knows nothing of: the secret's
    key, chain, _ = issue_site(own_ca, "shop.example.test")
    shop_rule = {"host": "shop.example.test", "port": 8080, "tls": {"secret": "shop-tls", "redirect": True}}
    with cluster.client() as c:
        c.put_object("secret", "shop-tls", chain + key)
        c.apply(spec("shop", [shop_rule]), "shop.json")
        c.apply(spec("docs", [{"host": "docs.example.test", "port": 8080}]), "docs.json")
        api_rule = {"host": "docs.example.test", "path": "/api", "port": 8080, "sticky": True}
        c.apply(spec("docs-api", [api_rule], replicas=2), "api.json")

        # a (host, path) another service routes is refused at apply, naming it
        with pytest.raises(Exception) as refused:
            c.apply(spec("thief", [{"host": "docs.example.test", "path": "/api/", "port": 8080}]), "t.json")
        assert "docs.example.test/api is already routed to service 'docs-api'" in str(refused.value)
        assert "thief" not in {s.name for s in c.list_services()}

    shop_tls = ssl.create_default_context(cadata=own_ca.cert_pem.decode())
    cluster_tls = ssl.create_default_context(cadata=cluster.tls.ca_pem.decode())

    for address in HOSTS:
        cases = [
            ("shop.example.test", "/cart?id=7", shop_tls, "shop"),
            ("docs.example.test", "/guide", cluster_tls, "docs"),
            ("docs.example.test", "/api/v1/items", cluster_tls, "docs-api"),
            ("docs.example.test", "/apiary", cluster_tls, "docs"),
        ]
        for host, path, tls, service in cases:

            def served(
                a: str = address, h: str = host, p: str = path, t: ssl.SSLContext = tls
            ) -> dict[str, Any] | None:
                try:
                    status, _, body = get(a, https_port, h, p, t)  # verifies chain and name (SNI)
                except (OSError, ssl.SSLError):
                    return None
                return json.loads(body) if status == 200 else None

            seen = wait_until_sync(served, 90, interval=0.5, message=f"{host}{path} through {address}")
            assert (seen["service"], seen["path"]) == (service, path)
            h = seen["headers"]
            assert h["x-forwarded-proto"] == "https"
            assert h["x-forwarded-host"] == host
            assert h["x-forwarded-for"].startswith("127.")
            assert h["host"] == host

        # sticky: without the cookie both replicas answer; with it, always the one it names
        def both(a: str = address) -> set[str] | None:
            replicas = {
                json.loads(get(a, http_port, "docs.example.test", "/api")[2])["replica"] for _ in range(4)
            }
            return replicas if len(replicas) == 2 else None

        wait_until_sync(both, 60, interval=0.5, message=f"both docs-api replicas through {address}")
        _, headers, body = get(address, http_port, "docs.example.test", "/api")
        pinned, jar = json.loads(body)["replica"], headers["set-cookie"].partition(";")[0]
        for _ in range(4):
            _, headers, body = get(address, http_port, "docs.example.test", "/api", cookie=jar)
            assert json.loads(body)["replica"] == pinned and "set-cookie" not in headers

        # SNI picks the certificate: the shop's (from the secret) is not valid for docs
        with pytest.raises(ssl.SSLCertVerificationError):
            get(address, https_port, "docs.example.test", "/", shop_tls)

        # plain HTTP: the shop's rule redirects, docs is served as is
        status, headers, _ = get(address, http_port, "shop.example.test", "/cart?id=7")
        assert (status, headers["location"]) == (308, f"https://shop.example.test:{https_port}/cart?id=7")
        status, _, body = get(address, http_port, "docs.example.test", "/api/x")
        assert status == 200 and json.loads(body)["headers"]["x-forwarded-proto"] == "http"

        # an unknown host: 404 with a clear body, over HTTP and over HTTPS
        status, _, body = get(address, http_port, "nope.example.test")
        assert (status, body) == (
            404,
            b"shoal ingress: no service is routed for host 'nope.example.test' on this cluster\n",
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        assert get(address, https_port, "nope.example.test", "/", insecure)[0] == 404


# Reads the PROXY v2 header ahead of the connection and answers what it says, as JSON.
PROXY_SERVER = """
import ipaddress, json, socket, struct
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5000)); s.listen(16)
while True:
    c, _ = s.accept()
    data = b""
    while len(data) < 28 + 5:
        more = c.recv(4096)
        if not more:
            break
        data += more
    ok = data[:12] == b"\\r\\n\\r\\n\\x00\\r\\nQUIT\\n" and data[12] == 0x21 and data[13] == 0x11
    src, dst = ipaddress.ip_address(data[16:20]), ipaddress.ip_address(data[20:24])
    sp, dp = struct.unpack("!HH", data[24:28])
    seen = {"ok": ok, "src": [str(src), sp], "dst": [str(dst), dp], "rest": data[28:].decode()}
    c.sendall(json.dumps(seen).encode())
    c.close()
"""


def test_proxy_protocol_v2_gives_a_tcp_replica_the_client_address(
    make_cluster: Callable[..., DevCluster],
    python_image: str,  # noqa: F811
) -> None:
    cluster = make_cluster(2)
    published = free_port_on_all(HOSTS)
    service = {
        "name": "pp",
        "image": PYTHON_IMAGE,
        "command": ["python3", "-c", PROXY_SERVER],
        "ports": [{"container": 5000, "published": published}],
        "proxy_protocol": [5000],
    }
    with cluster.client() as c:
        c.apply(json.dumps(service), "pp.json")

    for address in HOSTS:

        def answer(a: str = address) -> tuple[dict[str, Any], tuple[str, int]] | None:
            try:
                with socket.create_connection((a, published), timeout=5) as conn:
                    me = conn.getsockname()
                    conn.sendall(b"hello")
                    data = conn.recv(4096)
            except OSError:
                return None
            return (json.loads(data), me) if data else None

        seen, me = wait_until_sync(answer, 90, interval=0.5, message=f"the tcp replica through {address}")
        assert seen == {"ok": True, "src": [me[0], me[1]], "dst": [address, published], "rest": "hello"}
