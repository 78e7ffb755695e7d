"""Secrets stay secret: the config's repr, log lines, spec `secret_env`, the client's messages."""

from __future__ import annotations

import io
import logging

import grpc
import pytest

from node.api.convert import MASK, masked
from node.model.config import ConfigError, NodeConfig, load
from node.model.spec import SpecError, parse_spec, spec_to_dict
from node.security.tokens import ClientToken, JoinToken
from node.telemetry.logs import JsonFormatter, _Redacting, redact
from node.wire.client import Unavailable, error_from_rpc

TOKEN = str(ClientToken.new())
JOIN = str(JoinToken.new("ab" * 32))
KEY = (
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----"
)


def test_the_join_token_is_not_in_the_configs_repr() -> None:
    config = load({}, {"SHOAL_JOIN_TOKEN": JOIN})
    assert config.join_token == JOIN and JOIN not in repr(config) and JOIN not in str(config)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SHOAL_JOIN_TOKEN": JOIN, "SHOAL_JOIN_TOKEN_FILE": "/x"}, "one way, not both"),
        ({"SHOAL_CERT_LIFETIME": "5"}, "cert_lifetime"),
        ({"SHOAL_ETCD_CERT": "/c.pem"}, "etcd_ca, etcd_cert and etcd_key"),
    ],
)
def test_security_settings_are_checked(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        load({}, env)
    assert JOIN not in str(err.value)


def test_defaults_are_secure_and_long_lived() -> None:
    c = NodeConfig()
    assert c.cert_lifetime == 30 * 86400 and not c.join_token and not c.etcd_ca


# ids by name: the tokens are drawn anew in every process, and pytest-xdist needs the same ids in each
@pytest.mark.parametrize(
    "text",
    [TOKEN, JOIN, f"Bearer {TOKEN}", KEY, f"x {KEY} y"],
    ids=["client token", "join token", "bearer client token", "private key", "private key in a line"],
)
def test_log_lines_never_carry_a_secret(text: str) -> None:
    line = redact(f"oops: {text}")
    assert TOKEN.split("_")[2] not in line and JOIN not in line and "MIGHAgEA" not in line
    assert TOKEN.split("_")[1] in redact(TOKEN)  # the token id stays: it is what people grep for


def test_the_formatters_redact_messages_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Redacting(JsonFormatter("n1")))
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    try:
        log.warning("token %s", TOKEN)
        try:
            raise ValueError(JOIN)
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert TOKEN not in out and JOIN not in out and "<redacted>" in out


def test_secret_env_is_its_own_map_and_masked_in_answers() -> None:
    typed = parse_spec("name: db\nimage: x\nenv: {A: '1'}\nsecret_env: {PW: hunter2, N: 5}\n")
    spec = spec_to_dict(typed)
    assert spec["secret_env"] == {"PW": "hunter2", "N": "5"} and spec["env"] == {"A": "1"}
    shown = masked(typed)
    assert shown["secret_env"] == {"PW": MASK, "N": MASK} and typed.secret_env == {"PW": "hunter2", "N": "5"}
    plain = parse_spec("name: x\nimage: x\n")
    assert masked(plain) == spec_to_dict(plain)
    assert "secret_env" not in spec_to_dict(parse_spec("name: db\nimage: x\n"))  # old specs unchanged
    with pytest.raises(SpecError, match=r"secret_env\.A: A is in env too"):
        parse_spec("name: db\nimage: x\nenv: {A: '1'}\nsecret_env: {A: hunter2}\n")
    with pytest.raises(SpecError, match="secret_env") as err:
        parse_spec("name: db\nimage: x\nsecret_env: {'bad key': hunter2}\n")
    assert "hunter2" not in str(err.value)


class _Err(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("details", "fragment"),
    [
        (
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:7070: Socket closed",
            "closed the connection during the TLS handshake",
        ),
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:7070: "
            "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
            "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK",
            "(unable to get local issuer certificate): its certificate is not signed by the CA",
        ),
    ],
)
def test_a_refused_handshake_says_what_to_check(details: str, fragment: str) -> None:
    err = error_from_rpc(_Err(details), "127.0.0.1:7070")
    assert type(err) is Unavailable and fragment in str(err) and "SHOAL_CONTEXT_FILE" in str(err)
