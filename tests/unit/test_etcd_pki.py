"""etcd's own PKI (`node.security.etcd_pki`, `deploy/etcd/make-certs.sh`): what it makes,
with which modes, and that a re-run keeps the CA (issue 11, items 12 and 15a)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from node.security.etcd_pki import EtcdPki, main

REPO = Path(__file__).resolve().parents[2]


def test_makes_a_ca_a_server_and_client_certificates_with_private_keys(tmp_path: Path) -> None:
    pki = EtcdPki(tmp_path / "pki")
    pki.make(["10.0.0.5", "etcd1.internal"], ["n1", "n2"])
    assert pki.root.stat().st_mode & 0o777 == 0o700
    for key in (pki.ca_key, pki.server_key, pki.client_key("n1"), pki.client_key("n2")):
        assert key.stat().st_mode & 0o777 == 0o600, key
    server = x509.load_pem_x509_certificate(pki.server.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert sans.get_values_for_type(x509.DNSName) == ["etcd1.internal"]
    client = x509.load_pem_x509_certificate(pki.client("n2").read_bytes())
    client.verify_directly_issued_by(x509.load_pem_x509_certificate(pki.ca.read_bytes()))
    ctx = ssl.create_default_context(cafile=str(pki.ca))  # each pair loads as a TLS identity
    ctx.load_cert_chain(pki.client("n1"), pki.client_key("n1"))
    ctx.load_cert_chain(pki.server, pki.server_key)
    assert "--client-cert-auth" in pki.server_flags() and "--peer-client-cert-auth" in pki.server_flags()
    cert, key = str(pki.client("n1")), str(pki.client_key("n1"))
    assert pki.client_flags("n1") == ["--etcd-ca", str(pki.ca), "--etcd-cert", cert, "--etcd-key", key]
    tls = pki.tls("n1")
    assert tls.cert == pki.client("n1").read_bytes()


def test_a_rerun_keeps_the_ca_and_adds_a_client(tmp_path: Path) -> None:
    pki = EtcdPki(tmp_path)
    pki.make(["127.0.0.1"])
    ca, server = pki.ca.read_bytes(), pki.server.read_bytes()
    pki.make(["127.0.0.1"], ["n3"])
    assert pki.ca.read_bytes() == ca and pki.server.read_bytes() == server
    new = x509.load_pem_x509_certificate(pki.client("n3").read_bytes())
    new.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    assert pki.exists(("shoal", "n3"))


@pytest.mark.parametrize("name", ["../x", "a/b", "", "UPPER", "-x", ".hidden"])
def test_a_client_name_that_is_no_file_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="client name"):
        EtcdPki(tmp_path).make(["127.0.0.1"], [name])
    assert main(["--out", str(tmp_path / "o"), "--host", "127.0.0.1", f"--client={name}"]) == 1


def test_the_script_prints_etcds_flags_and_shoalds_settings(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(REPO / "deploy" / "etcd" / "make-certs.sh"), str(tmp_path / "out"),
         "--host", "10.0.0.5", "--client", "n1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "https://10.0.0.5:2379" in done.stdout and "--client-cert-auth" in done.stdout
    assert f'etcd_cert = "{tmp_path / "out" / "client-n1.crt"}"' in done.stdout
    assert (tmp_path / "out" / "client-n1.key").stat().st_mode & 0o777 == 0o600


def test_a_dev_etcd_will_not_start_on_a_port_something_else_holds(tmp_path: Path) -> None:
    """With TLS, another cluster's etcd (another CA) does not answer our health check; the
    port being held is enough to refuse, with the hint, instead of an etcd that exits."""
    import socket

    from node.dev.devcluster import DevError, EtcdProcess

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        etcd = EtcdProcess(tmp_path / "data", port, port + 1, pki=EtcdPki(tmp_path / "pki"))
        with pytest.raises(DevError, match="choose another --etcd-port"):
            etcd.start()
    assert etcd.proc is None
