"""Decision 70: Compose secrets and configs from files, entrypoint, user, working_dir,
read_only and logging, onto shoal's spec and Docker's container create."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from node.agent.containers import container_spec
from node.cli.stack import write_objects
from node.compose.objects import ObjectWrite
from node.compose.translate import ComposeError, translate
from node.model.domain import template_hash
from node.model.spec import SpecError, spec_from_dict
from node.model.spec_compat import known_paths
from node.runtime.base import ContainerSpec
from node.runtime.docker_process import create_options
from tests.factories import make_task, typed_spec

BINARY = b"\x00\xff pw\n"  # a secret need not be text
FILES = {"./secrets/db_password.txt": BINARY.decode("utf-8", "surrogateescape"), "nginx.conf": "listen 80;\n"}

APP = """\
name: shop
services:
  api:
    image: ghcr.io/acme/api:1.2
    entrypoint: ["/usr/local/bin/docker-entrypoint.sh"]
    command: ["gunicorn", "app:app"]
    user: "1000:1000"
    working_dir: /srv/app
    read_only: true
    environment:
      DATABASE_PASSWORD_FILE: /run/secrets/db_password
    secrets:
      - db_password
      - source: stripe_key
        target: /run/secrets/stripe
        mode: 0440
      - source: shared_token
    configs:
      - source: nginx_conf
        target: /etc/nginx/conf.d/default.conf
      - app_settings
    logging:
      driver: local
      options:
        max-size: 10m
        max-file: "3"
    labels:
      com.example.team: api
    deploy:
      labels: {traefik.enable: "true"}
secrets:
  db_password:
    file: ./secrets/db_password.txt
  stripe_key:
    environment: STRIPE_KEY
  shared_token:
    external: true
    name: platform_token
configs:
  nginx_conf:
    file: nginx.conf
  app_settings:
    external: true
"""


def _read(path: str) -> str:
    if path not in FILES:
        raise FileNotFoundError(2, "No such file or directory")
    return FILES[path]


def _t(text: str, env: dict[str, str] | None = None) -> Any:
    return translate(text, "compose.yaml", "", {"STRIPE_KEY": "sk_live_1"} if env is None else env, _read)


def test_a_real_compose_file() -> None:
    result = _t(APP)
    api = result.document["services"]["api"]
    assert api["secrets"] == [
        {"source": "shop_db_password", "target": "db_password"},
        {"source": "shop_stripe_key", "target": "stripe", "mode": "440"},
        {"source": "platform_token", "target": "shared_token"},
    ]
    assert api["configs"] == [
        {"source": "shop_nginx_conf", "target": "/etc/nginx/conf.d/default.conf"},
        {"source": "app_settings", "target": "/app_settings"},
    ]
    assert api["entrypoint"] == ["/usr/local/bin/docker-entrypoint.sh"]
    assert (api["user"], api["working_dir"], api["read_only"]) == ("1000:1000", "/srv/app", True)
    assert api["logging"] == {"driver": "local", "options": {"max-size": "10m", "max-file": "3"}}
    assert result.objects == [
        ObjectWrite("secret", "shop_db_password", BINARY),
        ObjectWrite("secret", "shop_stripe_key", b"sk_live_1"),
        ObjectWrite("config", "shop_nginx_conf", b"listen 80;\n"),
    ]
    spec = spec_from_dict({**api, "name": "shop_api", "stack": "shop"})
    assert spec.secrets and spec.secrets[1].mode == "0440"
    warned = {w.path for w in result.warnings}
    assert not {"services.api.labels", "services.api.deploy.labels"} & warned  # decision 73: honoured
    assert (api["labels"], api["service_labels"]) == ({"com.example.team": "api"}, {"traefik.enable": "true"})
    assert spec.labels == {"com.example.team": "api"} and spec.service_labels == {"traefik.enable": "true"}
    assert "sk_live_1" not in repr(result.objects) and "pw" not in repr(result.objects)


def test_a_secrets_uid_and_gid_reach_the_spec_as_swarm_takes_them() -> None:
    """Compose's long syntax `uid`/`gid` (strings, or numbers) own the secret's file; they
    were refused while the agent wrote every file as root (decision 90)."""
    text = APP.replace(
        "target: /run/secrets/stripe", "target: /run/secrets/stripe\n        uid: '103'\n        gid: 104"
    )
    api = _t(text).document["services"]["api"]
    assert (api["secrets"][1]["uid"], api["secrets"][1]["gid"]) == ("103", "104")
    spec = spec_from_dict({**api, "name": "shop_api", "stack": "shop"})
    assert spec.secrets and (spec.secrets[1].uid, spec.secrets[1].gid) == ("103", "104")


def test_a_configs_uid_and_gid_reach_the_spec_as_swarm_takes_them() -> None:
    """Compose's long syntax for a config has `uid`/`gid` too (Swarm's config reference
    does); they were refused while config files were always root's."""
    text = APP.replace(
        "target: /etc/nginx/conf.d/default.conf",
        "target: /etc/nginx/conf.d/default.conf\n        uid: '101'\n        gid: 101\n        mode: 0440",
    )
    api = _t(text).document["services"]["api"]
    assert (api["configs"][0]["uid"], api["configs"][0]["gid"]) == ("101", "101")
    spec = spec_from_dict({**api, "name": "shop_api", "stack": "shop"})
    assert spec.configs and (spec.configs[0].uid, spec.configs[0].gid, spec.configs[0].mode) == (
        "101",
        "101",
        "0440",
    )


def test_entrypoint_as_a_string_is_split_and_read_only_false_is_the_default() -> None:
    text = "services:\n  a:\n    image: x\n    entrypoint: /bin/sh -c 'exec app'\n    read_only: false\n"
    a = translate(text, "c.yaml", "s").document["services"]["a"]
    assert a["entrypoint"] == ["/bin/sh", "-c", "exec app"] and "read_only" not in a


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("file: ./secrets/db_password.txt", "file: ./secrets/nope.txt"),
            "compose.yaml:33:5: secrets.db_password.file: cannot read ./secrets/nope.txt",
        ),
        (
            ("environment: STRIPE_KEY", "environment: UNSET_VAR"),
            "35:5: secrets.stripe_key.environment: UNSET_VAR is not set",
        ),
        (
            ("    file: nginx.conf", "    content: listen 80"),
            "41:5: configs.nginx_conf.content: refused: shoal takes a config from file:",
        ),
        (
            ("    external: true\n    name: platform_token", "    file: a\n    external: true"),
            "secrets.shared_token: give exactly one of",
        ),
        (
            (
                "target: /etc/nginx/conf.d/default.conf",
                "target: /etc/nginx/conf.d/default.conf\n        uid: 'www-data'",
            ),
            "services.api: configs[0].uid: must be a numeric user or group id",
        ),
        (
            ("target: /run/secrets/stripe", "target: /run/secrets/stripe\n        uid: 'root'"),
            "services.api: secrets[1].uid:",
        ),
        (
            ("      - app_settings", "      - app_settngs"),
            "21:9: services.api.configs[1]: 'app_settngs' is not declared",
        ),
        (("read_only: true", "read_only: yes please"), "9:5: services.api.read_only: must be true or false"),
        (
            ("driver: local", "driver: syslog"),
            "22:5: services.api: logging.driver: must be 'json-file' or 'local'",
        ),
        (
            ("working_dir: /srv/app", "working_dir: srv/app"),
            "8:5: services.api: working_dir: must be an absolute",
        ),
        (("mode: 0440", "mode: 0999"), "12:5: services.api: secrets[1].mode: must be a file mode"),
        (
            ("target: /etc/nginx/conf.d/default.conf", "target: /run/secrets/x"),
            "services.api: configs[0].target:",
        ),
    ],
)
def test_bad_input_names_the_key_and_its_line_and_writes_nothing(
    change: tuple[str, str], expected: str
) -> None:
    assert change[0] in APP
    with pytest.raises(ComposeError) as err:
        _t(APP.replace(*change))
    assert expected in str(err.value)
    assert "sk_live_1" not in str(err.value) and "listen 80" not in str(err.value)


def test_one_bad_file_among_good_ones_returns_no_write_at_all() -> None:
    text = APP.replace("image: ghcr.io/acme/api:1.2", "image: ghcr.io/acme/api:1.2\n    privileged: true")
    with pytest.raises(ComposeError, match="privileged: refused"):
        _t(text)  # the secret files were good: the error is elsewhere, and nothing comes back to write


def test_the_process_fields_are_checked_and_change_the_template_hash() -> None:
    base = typed_spec("web", image="x")
    assert (
        base.entrypoint is None and base.user is None and base.working_dir is None and base.read_only is None
    )
    hashes = {template_hash(base)}
    for change in ({"entrypoint": ["/e"]}, {"user": "app"}, {"working_dir": "/w"}, {"read_only": True}):
        hashes.add(template_hash(base.model_copy(update=change)))
    assert len(hashes) == 5  # each one rolls the replicas
    with pytest.raises(SpecError, match="entrypoint"):
        spec_from_dict({"name": "web", "image": "x", "entrypoint": []})
    with pytest.raises(SpecError, match="user"):
        spec_from_dict({"name": "web", "image": "x", "user": "a:b:c"})
    with pytest.raises(SpecError, match="working_dir"):
        spec_from_dict({"name": "web", "image": "x", "working_dir": "/a/../b"})


def test_the_agent_and_docker_create_carry_them() -> None:
    spec = spec_from_dict(
        {
            "name": "web",
            "image": "x",
            "entrypoint": ["/e", "-v"],
            "user": "1000",
            "working_dir": "/w",
            "read_only": True,
        }
    )
    made = container_spec(make_task("web", 1, "n1"), spec, "c1", "127.0.0.1")
    assert (made.entrypoint, made.user, made.working_dir, made.read_only) == (
        ("/e", "-v"),
        "1000",
        "/w",
        True,
    )
    host: dict[str, Any] = {}
    assert create_options(made, host) == {"entrypoint": ["/e", "-v"], "user": "1000", "working_dir": "/w"}
    assert host == {"ReadonlyRootfs": True}
    plain: dict[str, Any] = {}
    assert create_options(ContainerSpec("n", "x", {}, image_healthcheck=False), plain) == {
        "healthcheck": {"test": ["NONE"]}
    }
    assert plain == {}


class _Objects:
    """The part of the API client `write_objects` uses, keeping what was put."""

    def __init__(self, have: dict[str, bytes]) -> None:
        self.have = dict(have)
        self.calls: list[tuple[str, str, bool]] = []

    def list_objects(self, kind: str) -> list[Any]:
        return [SimpleNamespace(name=k.split("/")[1]) for k in self.have if k.startswith(f"{kind}/")]

    def put_object(self, kind: str, name: str, value: bytes, update: bool) -> Any:
        self.calls.append((kind, name, update))
        changed = self.have.get(f"{kind}/{name}") != value
        self.have[f"{kind}/{name}"] = value
        return SimpleNamespace(changed=changed, info=SimpleNamespace(size=len(value), revision="r1"))


def test_the_cli_creates_new_objects_updates_known_ones_and_prints_no_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    objects = _Objects({"secret/shop_db_password": BINARY})
    settings: Any = SimpleNamespace(client=lambda: objects)
    write_objects(settings, _t(APP).objects)
    assert objects.calls == [
        ("secret", "shop_db_password", True),
        ("secret", "shop_stripe_key", False),
        ("config", "shop_nginx_conf", False),
    ]
    out = capsys.readouterr().out
    assert "secret shop_db_password: unchanged" in out and "secret shop_stripe_key: created (9 bytes" in out
    assert "sk_live_1" not in out and "listen" not in out


def test_every_new_field_is_known_to_the_rolling_upgrade_rule() -> None:
    assert {"entrypoint", "user", "working_dir", "read_only"} <= known_paths()


@pytest.mark.parametrize(
    ("declaration", "expected"),
    [
        ("  ../../etc/x:\n    environment: STRIPE_KEY", "secrets.../../etc/x: 'shop_../../etc/x'"),
        ("  'dé\u202ejà':\n    environment: STRIPE_KEY", "'shop_dé\\u202ejà' (the stack's name"),
        ("  k" + "y" * 62 + ":\n    environment: STRIPE_KEY", "is not a secret name: 1 to 63"),
        ("  ext:\n    external: true\n    name: ../x", "secrets.ext: '../x' is not a secret name"),
    ],
)
def test_a_secret_name_shoal_cannot_hold_is_refused_at_its_line(declaration: str, expected: str) -> None:
    """Even one no service uses: the translation returned it to be written, and a node
    refused it only then (an older node's PutObject after the secrets before it)."""
    text = APP.replace("\nsecrets:\n", f"\nsecrets:\n{declaration}\n")
    assert text != APP
    with pytest.raises(ComposeError) as err:
        translate(text, "compose.yaml", "shop", {"STRIPE_KEY": "sk_live_1"}, _read)
    assert expected in str(err.value)
    assert "sk_live_1" not in str(err.value)
