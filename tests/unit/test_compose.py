"""Compose files -> shoal stack documents (node.compose.translate), with files written the
way real projects write them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from node.compose.interpolate import InterpolationError, interpolate, parse_duration, parse_size
from node.compose.translate import ComposeError, translate

FILES = {".env.web": "# web settings\nLOG_LEVEL=info\nexport SECRET_KEY='s3cr3t'\nWORKERS=2\n"}


def _read(path: str) -> str:
    if path not in FILES:
        raise FileNotFoundError(2, "No such file or directory")
    return FILES[path]


def _t(text: str, env: dict[str, str] | None = None, name: str = "shop") -> Any:
    return translate(text, "compose.yaml", name, env or {}, _read)


WEBAPP = """\
services:
  web:
    image: "registry.example.com/acme/web:${TAG:-1.4.2}"
    command: gunicorn app:app --bind 0.0.0.0:8000 --workers 3
    environment:
      DATABASE_URL: postgres://app@db:5432/app
      DEBUG: "false"
      PRICE_FORMAT: "$$%.2f"
      RETRIES: 3
    env_file: .env.web
    ports:
      - "8000:8000"
      - target: 9100
        published: 19100
        protocol: tcp
    expose:
      - "9200"
    depends_on:
      db:
        condition: service_healthy
      cache:
        condition: service_started
    deploy:
      replicas: 3
      resources:
        limits:
          cpus: '0.50'
          memory: 512m
        reservations:
          cpus: '0.25'
          memory: 128m
      placement:
        constraints: [node.labels.tier == web]
        preferences:
          - spread: node.labels.zone
      update_config:
        parallelism: 2
        delay: 10s
        failure_action: rollback
        order: start-first
      restart_policy:
        condition: on-failure
        delay: 5s
        max_attempts: 3
        window: 120s
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost:8000/health"]
      interval: 30s
      timeout: 10s
      retries: 3
      start_period: 40s
    stop_grace_period: 1m30s
    labels:
      com.example.team: web
    logging:
      driver: json-file
      options: {max-size: 10m}
  db:
    image: postgres:16-alpine
    environment:
      - POSTGRES_USER=app
      - POSTGRES_PASSWORD=${DB_PASSWORD:?set DB_PASSWORD}
      - PGDATA
    healthcheck:
      test: pg_isready -U app
      interval: 5s
    restart: unless-stopped
    mem_limit: 1g
  cache:
    image: redis:7
    command: ["redis-server", "--appendonly", "no"]
    restart: "on-failure:5"
    healthcheck:
      test: ["NONE"]
"""


def test_a_real_web_app() -> None:
    result = _t(WEBAPP, {"DB_PASSWORD": "pw", "TAG": "2.0"})
    web, db, cache = (result.document["services"][k] for k in ("web", "db", "cache"))
    assert web["image"] == "registry.example.com/acme/web:2.0"
    assert web["command"] == ["gunicorn", "app:app", "--bind", "0.0.0.0:8000", "--workers", "3"]
    assert web["env"] == {
        "LOG_LEVEL": "info",
        "SECRET_KEY": "s3cr3t",
        "WORKERS": "2",
        "DATABASE_URL": "postgres://app@db:5432/app",
        "DEBUG": "false",
        "PRICE_FORMAT": "$%.2f",
        "RETRIES": "3",
    }
    assert web["ports"] == [
        {"container": 8000, "published": 8000},
        {"container": 9100, "published": 19100},
        {"container": 9200},
    ]
    assert web["depends_on"] == {"db": "healthy", "cache": "started"}
    assert web["replicas"] == 3
    assert web["resources"] == {
        "cpu": 0.25,
        "memory": 128 * 2**20,
        "limits": {"cpu": 0.5, "memory": 512 * 2**20},
    }
    assert web["placement"] == {"constraints": ["node.labels.tier == web"], "spread": "node.labels.zone"}
    assert web["update"] == {
        "parallelism": 2,
        "delay": 10.0,
        "failure_action": "rollback",
        "order": "start-first",
    }
    assert web["restart"] == {"condition": "on-failure", "delay": 5.0, "max_attempts": 3, "window": 120.0}
    assert web["health"] == {
        "exec": ["curl", "-f", "http://localhost:8000/health"],
        "interval": 30.0,
        "timeout": 10.0,
        "retries": 3,
        "start_period": 40.0,
    }
    assert web["stop_grace"] == 90.0
    assert db["env"] == {"POSTGRES_USER": "app", "POSTGRES_PASSWORD": "pw"}  # PGDATA unset: left out
    assert db["health"] == {"exec": ["/bin/sh", "-c", "pg_isready -U app"], "interval": 5.0, "timeout": 30.0}
    assert db["restart"] == {"condition": "always"}
    assert db["resources"] == {"limits": {"memory": 2**30}}
    assert cache["restart"] == {"condition": "on-failure", "max_attempts": 5}
    assert "health" not in cache
    warned = {(w.path, w.line) for w in result.warnings}
    assert "services.web.labels" not in {p for p, _ in warned} and "services.web.logging" not in {
        p for p, _ in warned
    }
    assert web["labels"] == {"com.example.team": "web"}  # decision 73: onto the containers
    assert web["logging"] == {"driver": "json-file", "options": {"max-size": "10m"}}  # decision 70
    assert ("services.cache.healthcheck", 73) in warned


def test_required_variable_names_itself() -> None:
    with pytest.raises(
        ComposeError, match=r"compose.yaml:62:9: .*variable DB_PASSWORD is not set: set DB_PASSWORD"
    ):
        _t(WEBAPP)


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("build: .\n    image: a", "compose.yaml:3:5: services.app.build: refused: shoal runs images"),
        ("image: a\n    privileged: true", "services.app.privileged: refused"),
        (
            "image: a\n    volumes: [./src:/app]",
            "services.app.volumes[0]: refused: bind mounts are for admins",
        ),
        ("image: a\n    secrets: [db_password]", "services.app.secrets[0]: 'db_password' is not declared"),
        ("image: a\n    entrypoint: {sh: 1}", "services.app.entrypoint: must be a string or a list"),
        ("image: a\n    user: 'root user'", "compose.yaml:4:5: services.app: user: must be USER or UID"),
        ("image: a\n    network_mode: host", "services.app.network_mode: refused"),
        ("image: a\n    imgae: b", "unknown Compose key; did you mean 'image'?"),
        ("image: a\n    ports: ['53:53/udp']", "services.app.ports[0]: refused: udp ports"),
        ("image: a\n    deploy: {mode: replicated-job}", "deploy.mode: refused: jobs"),
        (
            "image: a\n    depends_on: {b: {condition: service_done}}",
            "condition must be one of service_started, service_healthy, service_completed_successfully",
        ),
        (
            "image: a\n    deploy: {resources: {limits: {memory: 1m}}}",
            "resources.limits.memory: must be between",
        ),
        ("image: a\n    env_file: missing.env", "env_file: cannot read missing.env"),
        ("image: a\n    depends_on: [nope]", "'nope' is not a service of this file"),
        ("image: a\n    restart: sometimes", "restart: must be no, always"),
        ("image: a\n    healthcheck: {test: [CMD-SHELL]}", "healthcheck.test: must be"),
    ],
)
def test_refusals_name_the_key_and_its_line(service: str, expected: str) -> None:
    with pytest.raises(ComposeError) as err:
        _t(f"services:\n  app:\n    {service}\n")
    assert expected in str(err.value)


def test_every_problem_at_once_one_line_each() -> None:
    with pytest.raises(ComposeError) as err:
        _t("services:\n  app:\n    build: .\n    privileged: true\n    cap_add: [NET_ADMIN]\n")
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "services.app.build",
        "services.app.privileged",
        "services.app.cap_add",
    ]


def test_cycle_is_named() -> None:
    text = "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n"
    with pytest.raises(ComposeError, match=r"compose.yaml:4:5: .*dependency cycle: a -> b -> a"):
        _t(text)


def test_ignored_keys_warn_and_deploy() -> None:
    text = (
        "version: '3.8'\nservices:\n  app:\n    image: a\n    container_name: app1\n    networks: [front]\n"
        "    privileged: false\n    deploy:\n      rollback_config: {parallelism: 1}\n      labels: [x=y]\n"
        "networks:\n  front: {}\nx-common: &common {a: 1}\n"
    )
    result = _t(text)
    assert result.document["services"]["app"] == {
        "image": "a",
        "networks": ["front"],  # decision 64
        "service_labels": {"x": "y"},  # decision 73
    }
    assert sorted(w.path for w in result.warnings) == [
        "services.app.container_name",
        "services.app.deploy.rollback_config",
    ]


def test_profiles_are_skipped_and_name_comes_from_the_file() -> None:
    result = _t("name: blog\nservices:\n  app: {image: a}\n  debug: {image: b, profiles: [dev]}\n", name="")
    assert result.name == "blog" and list(result.document["services"]) == ["app"]


def test_environment_list_and_ports_ranges() -> None:
    text = "services:\n  app:\n    image: a\n    environment: [A=1, B=, C]\n"
    text += "    ports: ['127.0.0.1:8000-8001:80-81', '9000']\n"
    result = _t(text, {"C": "from-shell"})
    app = result.document["services"]["app"]
    assert app["env"] == {"A": "1", "B": "", "C": "from-shell"}
    assert app["ports"] == [
        {"container": 80, "published": 8000},
        {"container": 81, "published": 8001},
        {"container": 9000},
    ]
    assert "host address 127.0.0.1 ignored" in result.warnings[0].message


@pytest.mark.parametrize(
    ("text", "env", "out"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A:-${B}}", {"B": "b"}, "b"),
        ("${A:+set}", {"A": "1"}, "set"),
        ("$$A", {"A": "x"}, "$A"),
        ("pre-$A-post", {"A": "x"}, "pre-x-post"),
    ],
)
def test_interpolation(text: str, env: dict[str, str], out: str) -> None:
    assert interpolate(text, env) == out


def test_interpolation_errors_and_units() -> None:
    with pytest.raises(InterpolationError, match="lone"):
        interpolate("cost: 5$", {})
    with pytest.raises(InterpolationError, match="unclosed"):
        interpolate("${A", {})
    assert parse_size("512m") == 512 * 2**20 and parse_size("1g") == 2**30 and parse_size("100kb") == 102400
    assert parse_size(4096) == 4096
    assert parse_duration("1m30s") == 90.0 and parse_duration("500ms") == 0.5 and parse_duration(2) == 2.0
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_app_protocol_grpc_and_http2_map_to_the_port_protocol() -> None:
    text = "services:\n  app:\n    image: a\n    ports:\n"
    for target, proto in ((50051, "grpc"), (8080, "http2"), (9090, "h3")):
        text += f"      - {{target: {target}, published: {target + 10000}, app_protocol: {proto}}}\n"
    app = _t(text).document["services"]["app"]
    assert app["ports"] == [
        {"container": 50051, "published": 60051, "protocol": "grpc"},
        {"container": 8080, "published": 18080, "protocol": "http2"},
        {"container": 9090, "published": 19090},  # unknown to shoal: plain tcp, as before
    ]


def test_a_value_reached_through_an_alias_is_interpolated_once() -> None:
    """`$$HOME` in an anchored block is the container's `$HOME`, however many services
    use the block: done twice, the second pass read it as the deployer's HOME."""
    text = (
        "x-env: &env\n"
        '  A: "$$HOME"\n'
        '  B: "${X:-$${Y}}"\n'
        'x-cmd: &cmd ["sh", "-c", "echo $$HOME"]\n'
        "x-common: &common\n"
        "  image: a\n"
        "  environment: *env\n"
        "  command: *cmd\n"
        "services:\n"
        "  web:\n"
        "    <<: *common\n"
        "  api:\n"
        "    image: a\n"
        "    environment: *env\n"
        "    command: *cmd\n"
    )
    services = translate(text, name="s", env={"HOME": "/root", "Y": "why"}).document["services"]
    for short in ("web", "api"):
        assert services[short]["env"] == {"A": "$HOME", "B": "${Y}"}
        assert services[short]["command"] == ["sh", "-c", "echo $HOME"]


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded() -> None:
    """Nine levels of nine aliases stand for 9^9 values in a file of 1 KiB: refused by
    their count, before the translator or the spec check expands them (they hung)."""
    lines = ["x-a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"x-a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = "\n".join([*lines, "services:", "  web:", "    image: a", "    command: [*a5]", ""])
    with pytest.raises(ComposeError, match=r"too big: \d+ values with its aliases expanded"):
        translate(text, name="s")
    deep = "x-deep: " + "[" * 70 + "]" * 70 + "\nservices:\n  web:\n    image: a\n"
    with pytest.raises(ComposeError, match="nested more than 64 levels"):
        translate(deep, name="s")


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("depends_on: {db: {condition: [service_healthy]}}", "condition must be one of"),
        ("depends_on: {db: {condition: {a: 1}}}", "condition must be one of"),
        ("deploy: {placement: {constraints: 5}}", "placement.constraints: must be a list, got 5"),
        ("deploy: {placement: {preferences: 5}}", "placement.preferences: must be a list, got 5"),
        ("deploy: {placement: {preferences: {spread: node.id}}}", "placement.preferences: must be a list"),
    ],
)
def test_a_value_of_the_wrong_type_is_an_error_at_its_line(service: str, expected: str) -> None:
    """A list or number where a name or a list belongs was a TypeError out of the CLI
    (or, for preferences given as a mapping, dropped without a word)."""
    text = f"services:\n  db:\n    image: a\n  web:\n    image: a\n    {service}\n"
    with pytest.raises(ComposeError, match=re.escape(expected)) as info:
        translate(text, name="s")
    assert str(info.value).startswith("compose.yaml:6:")
