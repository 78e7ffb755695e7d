"""Ingress at the edges: the API refuses a route another service holds (apply and
rollback), the node settings are checked, and the certificates ride out an etcd outage."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest

from node.api.services import ServiceWriter
from node.model.config import ConfigError, load
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.proxy.ingress_tls import IngressCerts
from node.security.ca import ClusterCA
from node.security.objects import ObjectRecord
from node.security.sealing import Sealer, secret_ad
from node.security.site_cert import issue_site
from node.store import KV, StoreUnavailable
from node.store.memory import MemoryStore

KEYS = Keys("/i/")


def spec(name: str, *rules: dict[str, Any], image: str = "web:1") -> str:
    return json.dumps({"name": name, "image": image, "ports": [{"container": 8080}], "ingress": list(rules)})


async def test_apply_refuses_a_route_of_another_service_and_writes_nothing() -> None:
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    await writer.apply(spec("api", {"host": "a.test", "path": "/api", "port": 8080}), "api.json")
    with pytest.raises(FailedPrecondition) as refused:
        await writer.apply(spec("web", {"host": "a.test", "path": "/api", "port": 8080}), "web.json")
    assert str(refused.value) == (
        "web: ingress[0]: a.test/api is already routed to service 'api'; choose another host or path, "
        "or remove it from 'api'"
    )
    assert await store.get(KEYS.service("web")) is None
    # the owner may change itself; another path of the host is free
    await writer.apply(
        spec("api", {"host": "a.test", "path": "/api", "port": 8080}, image="web:2"), "api.json"
    )
    await writer.apply(spec("web", {"host": "a.test", "port": 8080}), "web.json")


async def test_a_rollback_cannot_bring_back_a_route_another_service_took_since() -> None:
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    await writer.apply(spec("web", {"host": "a.test", "path": "/x", "port": 8080}), "web.json")
    await writer.apply(spec("web", {"host": "a.test", "path": "/y", "port": 8080}, image="web:2"), "web.json")
    await writer.apply(spec("other", {"host": "a.test", "path": "/x", "port": 8080}), "other.json")
    with pytest.raises(FailedPrecondition, match=r"a\.test/x is already routed to service 'other'"):
        await writer.rollback("web")


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ({"ingress_http_port": 7070}, "ingress_http_port: 7070 must be a port of its own (also grpc_port)"),
        (
            {"ingress_https_port": 7071},
            "ingress_https_port: 7071 must be a port of its own (also metrics_port)",
        ),
        (
            {"ingress_http_port": 8000, "ingress_https_port": 8000},
            "ingress_https_port: 8000 must be a port of its own (also ingress_http_port)",
        ),
        ({"ingress_http_port": 70000}, "ingress_http_port: 70000 must be a port of its own, or 0 (off)"),
    ],
)
def test_ingress_ports_are_checked(flags: dict[str, int], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load(flags, {})
    assert load({"ingress_http_port": 80, "ingress_https_port": 443}, {}).ingress_https_port == 443
    assert load({}, {}).ingress_http_port == 0  # off unless set


class FlakyStore(MemoryStore):
    down = False

    async def get(self, key: str) -> KV | None:
        if self.down:
            raise StoreUnavailable("etcd is not answering")
        return await super().get(key)


async def test_certificates_are_kept_while_etcd_does_not_answer(tmp_path: Path) -> None:
    store = FlakyStore()
    ca = ClusterCA.create("t")
    sealer = Sealer(lambda: b"0123456789abcdef-passphrase")

    async def authority() -> ClusterCA:
        return ca

    key, chain, _ = issue_site(ca, "a.test")
    record = ObjectRecord("secret", "a", "u", 1, 1, "t", "t", sealer.seal(chain + key, secret_ad("a")))
    await store.put(KEYS.object("secret", "a"), record.to_json())
    certs = IngressCerts(store, KEYS, sealer, authority, tmp_path / "ingress", "127.0.0.1")
    assert await certs.refresh({"a.test": "a", "b.test": None}) == {}
    before = dict(certs.contexts)
    store.down = True
    problems = await certs.refresh({"a.test": "a", "b.test": None})
    assert list(problems) == ["a.test"] and "etcd is not answering" in problems["a.test"]
    assert certs.contexts == before  # the last good certificates go on being served
    assert isinstance(certs.contexts["a.test"], ssl.SSLContext)
    assert list((tmp_path / "ingress").iterdir()) == []  # no PEM left on disk


def test_a_pem_file_left_by_a_killed_process_is_removed_at_start(tmp_path: Path) -> None:
    workdir = tmp_path / "ingress"
    workdir.mkdir()
    (workdir / ".cert-abc123").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    (workdir / "other").write_bytes(b"not ours")
    IngressCerts(MemoryStore(), KEYS, None, None, workdir, "127.0.0.1")
    assert sorted(p.name for p in workdir.iterdir()) == ["other"]


async def test_a_secret_with_an_encrypted_key_is_a_clear_problem_never_a_passphrase_prompt(
    tmp_path: Path,
) -> None:
    """OpenSSL asked for the passphrase on the daemon's terminal (a daemon run in the
    foreground waited there, its loop with it, at each refresh); now it is refused at once."""
    from cryptography.hazmat.primitives import serialization

    store, ca = MemoryStore(), ClusterCA.create("t")
    sealer = Sealer(lambda: b"0123456789abcdef-passphrase")
    key, chain, _ = issue_site(ca, "a.test")
    encrypted = serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    data = sealer.seal(chain + encrypted, secret_ad("a"))
    await store.put(
        KEYS.object("secret", "a"), ObjectRecord("secret", "a", "u", 1, 1, "t", "t", data).to_json()
    )
    certs = IngressCerts(store, KEYS, sealer, None, tmp_path / "ingress", "127.0.0.1")
    problems = await certs.refresh({"a.test": "a"})
    assert "the private key is encrypted" in problems["a.test"], problems
    assert "a.test" not in certs.contexts


async def test_the_default_certificate_is_renewed_like_the_hosts(tmp_path: Path) -> None:
    """It was issued once, at start, and expired after 30 days up: clients without SNI
    (health checks by address) then failed the handshake."""
    from datetime import UTC, datetime, timedelta

    ca = ClusterCA.create("t")

    async def authority() -> ClusterCA:
        return ca

    certs = IngressCerts(MemoryStore(), KEYS, None, authority, tmp_path / "ingress", "127.0.0.1")
    start = datetime.now(UTC)
    assert await certs.refresh({"b.test": None}, start) == {}
    first = certs.default_pem
    assert await certs.refresh({"b.test": None}, start + timedelta(days=1)) == {}
    assert certs.default_pem == first, "not issued again before it is due"
    assert await certs.refresh({"b.test": None}, start + timedelta(days=45)) == {}
    assert certs.default_pem != first
