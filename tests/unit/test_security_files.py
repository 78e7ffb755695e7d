"""Secrets on disk (0600, atomic) and the CLI's credential resolution."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from node.security import bootstrap, context, files
from node.security.context import Context, MissingCredentials
from node.security.tokens import Role


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_written_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files.write_secret(tmp_path / "d" / "s", b"one")
        files.write_secret(tmp_path / "d" / "s", b"two")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "d" / "s") == 0o600 and _mode(tmp_path / "d") == 0o700
    assert files.read_secret(tmp_path / "d" / "s") == b"two"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["s"]  # no temporary left behind


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"x")
    path.chmod(0o644)
    with pytest.raises(files.InsecureFile, match=f"chmod 600 {path}"):
        files.read_secret(path)


def test_a_node_keeps_its_key_and_certificate_in_one_file(tmp_path: Path) -> None:
    authority, secrets = bootstrap.init_cluster("prod")
    issued = bootstrap.node_identity(authority, "n1", ["10.0.0.1"])
    where = files.NodeFiles.of(tmp_path)
    assert not where.exists()
    where.save(secrets.ca_cert, issued.key, issued.cert)
    assert where.exists() and _mode(where.identity) == 0o600 and _mode(where.ca_cert) == 0o644
    ca_pem, key, cert = where.load()
    assert ca_pem == secrets.ca_cert and cert == issued.cert and key.strip() == issued.key.strip()


def _context(tmp_path: Path) -> tuple[Context, dict[str, str]]:
    authority, secrets = bootstrap.init_cluster("prod")
    admin = bootstrap.client_credentials(authority, "admin", Role.ADMIN)
    ctx = Context(
        "127.0.0.1:7070", secrets.ca_cert.decode(), admin.cert.decode(), admin.key.decode(), str(admin.token)
    )
    return ctx, {"SHOAL_CONTEXT_FILE": str(tmp_path / "context.json")}


def test_the_context_file_round_trips_and_is_private(tmp_path: Path) -> None:
    ctx, env = _context(tmp_path)
    path = context.save_context("dev", ctx, context.context_path(env))
    assert _mode(path) == 0o600
    assert context.resolve(env) == ctx
    assert ctx.token not in repr(ctx)
    assert ctx.tls().token == ctx.token


def test_flags_and_environment_win_over_the_file(tmp_path: Path) -> None:
    ctx, env = _context(tmp_path)
    context.save_context("dev", ctx, context.context_path(env))
    (tmp_path / "ca.pem").write_text("OTHER CA")
    env |= {
        "SHOAL_TOKEN": "shoal_from_env",
        "SHOAL_CA": str(tmp_path / "ca.pem"),
        "SHOAL_ADDR": "10.0.0.1:7070",
    }
    resolved = context.resolve(env, token="shoal_from_flag")
    assert (resolved.token, resolved.ca, resolved.endpoint) == (
        "shoal_from_flag",
        "OTHER CA",
        "10.0.0.1:7070",
    )
    assert resolved.cert == ctx.cert


def test_missing_credentials_are_named_with_how_to_get_them(tmp_path: Path) -> None:
    env = {"SHOAL_CONTEXT_FILE": str(tmp_path / "none.json"), "SHOAL_TOKEN": "shoal_x"}
    with pytest.raises(MissingCredentials) as info:
        context.resolve(env)
    message = str(info.value)
    assert message.startswith("missing credentials: ca, cert, key.")
    assert "SHOAL_CA" in message and "shoal dev" in message and "token" not in message.split(".")[0]


def test_a_key_and_certificate_in_one_file_are_split(tmp_path: Path) -> None:
    ctx, env = _context(tmp_path)
    files.write_secret(tmp_path / "me.pem", (ctx.key + ctx.cert).encode())
    (tmp_path / "ca.pem").write_text(ctx.ca)
    env |= {
        "SHOAL_TOKEN": ctx.token,
        "SHOAL_CA": str(tmp_path / "ca.pem"),
        "SHOAL_CERT": str(tmp_path / "me.pem"),
    }
    resolved = context.resolve(env)
    assert resolved.cert == ctx.cert and resolved.key.strip() == ctx.key.strip()


def test_an_unknown_context_name_lists_the_known_ones(tmp_path: Path) -> None:
    ctx, env = _context(tmp_path)
    context.save_context("dev", ctx, context.context_path(env))
    with pytest.raises(MissingCredentials, match=r"no context 'prod' .* \(known: dev\)"):
        context.resolve(env | {"SHOAL_CONTEXT": "prod"})
