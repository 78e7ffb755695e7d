"""The lifecycle sections of a spec (`health`, `restart`, `update`, `stop_grace`):
durations with units stored as seconds, defaults, and bad input refused with the field."""

from __future__ import annotations

import json

import pytest

from node.model.spec import FieldError, SpecError, parse_spec, spec_from_dict, spec_to_dict
from node.model.spec_lifecycle import format_duration, parse_duration

FULL = """\
name: web
image: shoal-demo/web:1
ports: [{container: 8080, published: 18080, protocol: http}]
health:
  http: {port: 8080, path: /health, status: 200}
  interval: 2s
  timeout: 1s
  retries: 3
  start_period: 5s
restart: {condition: on-failure, max_attempts: 5, window: 1m, delay: 500ms}
update:
  parallelism: 2
  delay: 1s
  order: start-first
  monitor: 5s
  failure_action: rollback
  max_failure_ratio: 0
  drain: 5s
stop_grace: 10s
"""


def doc(*lines: str) -> str:
    return "\n".join(("name: web", "image: shoal-demo/web:1", *lines)) + "\n"


def errors_of(text: str) -> list[FieldError]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "web.yaml")
    return info.value.errors


def test_every_field_parses_and_is_stored_in_seconds() -> None:
    stored = spec_to_dict(parse_spec(FULL))
    assert stored["health"] == {
        "http": {"port": 8080, "path": "/health", "status": 200},
        "interval": 2.0,
        "timeout": 1.0,
        "retries": 3,
        "start_period": 5.0,
    }
    assert stored["restart"] == {"condition": "on-failure", "max_attempts": 5, "window": 60.0, "delay": 0.5}
    assert stored["update"] == {
        "parallelism": 2,
        "delay": 1.0,
        "order": "start-first",
        "monitor": 5.0,
        "failure_action": "rollback",
        "max_failure_ratio": 0.0,
        "drain": 5.0,
    }
    assert stored["stop_grace"] == 10.0


def test_round_trips_through_json() -> None:
    spec = parse_spec(FULL)
    stored = json.loads(json.dumps(spec_to_dict(spec)))
    assert spec_from_dict(stored) == spec
    assert parse_spec(json.dumps(stored)) == spec


def test_absent_sections_are_not_stored_and_defaults_fill_the_rest() -> None:
    assert not {"health", "restart", "update", "stop_grace"} & set(spec_to_dict(parse_spec(doc())))
    stored = spec_to_dict(parse_spec(doc("health: {tcp: {port: 9000}}", "update: {parallelism: 3}")))
    assert stored["health"] == {
        "tcp": {"port": 9000},
        "interval": 2.0,
        "timeout": 1.0,
        "retries": 3,
        "start_period": 0.0,
    }
    assert stored["update"] == {
        "parallelism": 3,
        "delay": 0.0,
        "order": "start-first",
        "monitor": 5.0,
        "failure_action": "rollback",
        "max_failure_ratio": 0.0,
    }, "no drain: the node's"


def test_exec_check_is_an_argv() -> None:
    stored = spec_to_dict(parse_spec(doc('health: {exec: ["test", "-f", "/tmp/healthy"], interval: 1}')))
    assert stored["health"]["exec"] == ["test", "-f", "/tmp/healthy"]
    assert stored["health"]["interval"] == 1.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        (" 3s ", 3.0),
        ("0s", 0.0),
        ("-1s", -1.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2", "2x", "s", "1 s", "1s2", "", "--1s", "1e3s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.5, 2.0, 90.0, 120.0, 7200.0, 0.0, -1.0)] == [
        "500ms",
        "2s",
        "90s",
        "2m",
        "2h",
        "0s",
        "-1s",
    ]


@pytest.mark.parametrize(
    ("lines", "path", "message"),
    [
        (["update: {parallelism: 0}"], "update.parallelism", "must be at least 1, got 0"),
        (["update: {parallelism: -3}"], "update.parallelism", "must be at least 1, got -3"),
        (["update: {delay: -1s}"], "update.delay", "must not be negative, got -1s"),
        (["update: {monitor: -0.5}"], "update.monitor", "must not be negative, got -500ms"),
        (["stop_grace: -10s"], "stop_grace", "must not be negative, got -10s"),
        (["update: {order: sideways}"], "update.order", "must be 'start-first' or 'stop-first'"),
        (["update: {failure_action: panic}"], "update.failure_action", "'rollback', 'pause' or 'continue'"),
        (["update: {max_failure_ratio: 1.5}"], "update.max_failure_ratio", "must be between 0 and 1"),
        (["update: {drain: 2d}"], "update.drain", "must be a duration"),
        (["update: {paralelism: 2}"], "update.paralelism", "did you mean 'parallelism'?"),
        (["health: {interval: 2s}"], "health", "must have exactly one of http, tcp, exec or grpc, got none"),
        (["health: {http: {port: 80}, exec: [x]}"], "health", "got http and exec"),
        (["health: {exec: test -f x}"], "health.exec", "must be a list of strings (run without a shell)"),
        (["health: {exec: []}"], "health.exec", "must not be empty"),
        (["health: {tcp: {port: 0}}"], "health.tcp.port", "must be at least 1, got 0"),
        (["health: {http: {port: 80, path: health}}"], "health.http.path", "starting with '/'"),
        (["health: {http: {port: 80, status: 99}}"], "health.http.status", "must be at least 100"),
        (["health: {grpc: {port: 50051, service: 'a b'}}"], "health.grpc.service", "gRPC service name"),
        (["health: {grpc: {port: 50051}, tcp: {port: 1}}"], "health", "got tcp and grpc"),
        (["health: {grpc: {port: 50051, service: shop.v1.Cart}}"], None, None),
        (["ports: [{container: 50051, published: 15051, protocol: grpc}]"], None, None),
        (
            ["ports: [{container: 8443, protocol: h3}]"],
            "ports[0].protocol",
            "'tcp', 'http', 'grpc' or 'http2'",
        ),
        (["health: {tcp: {port: 80}, interval: 0}"], "health.interval", "must be at least 100ms, got 0s"),
        (["health: {tcp: {port: 80}, retries: 0}"], "health.retries", "must be at least 1, got 0"),
        (["health: {tcp: {port: 80}, timeout: true}"], "health.timeout", "got boolean true"),
        (
            ["health: {tcp: {port: 80}, start_period: .inf}"],
            "health.start_period",
            "must be a finite duration",
        ),
        (["restart: {condition: sometimes}"], "restart.condition", "'always', 'on-failure' or 'never'"),
        (["restart: {max_attempts: -1}"], "restart.max_attempts", "must be at least 0, got -1"),
        (["restart: {delay: 2h}"], "restart.delay", "must be at most 1h, got 2h"),
        (["stop_grace: 10"], None, None),
        (["on_disconnect: {stop_after: 1m}"], None, None),
        (["on_disconnect: {stop_after: -1s}"], "on_disconnect.stop_after", "must not be negative, got -1s"),
        (["on_disconnect: {stop_after: 2d}"], "on_disconnect.stop_after", "must be a duration"),
        (["on_disconnect: {}"], "on_disconnect.stop_after", "required"),
        (["on_disconnect: {stop_after: 1m, stop: 1m}"], "on_disconnect.stop", "unknown field 'stop'"),
    ],
)
def test_bad_settings_name_the_field(lines: list[str], path: str | None, message: str | None) -> None:
    if path is None:
        parse_spec(doc(*lines))
        return
    errors = errors_of(doc(*lines))
    assert [e.path for e in errors] == [path], errors
    assert message is not None and message in errors[0].message, errors[0].message
    assert errors[0].line == 3


def test_the_message_reads_well() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(doc("update:", "  parallelism: 0"), "web.yaml")
    assert str(info.value) == "web.yaml:4:3: update.parallelism: must be at least 1, got 0"


def test_the_example_web_service_documents_a_health_check() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "web.yaml"
    stored = spec_to_dict(parse_spec(example.read_text(), str(example)))
    assert stored["health"]["http"] == {"port": 8080, "path": "/health", "status": 200}
    assert {"restart", "update", "stop_grace"} <= set(stored)


def test_on_disconnect_is_stored_in_seconds_and_absent_by_default() -> None:
    assert spec_to_dict(parse_spec(doc("on_disconnect: {stop_after: 1m30s}")))["on_disconnect"] == {
        "stop_after": 90.0
    }
    assert "on_disconnect" not in spec_to_dict(parse_spec(doc())), "default: keep running when cut off"
