"""User labels (decision 73): `labels` onto every container (in the template hash),
`service_labels` as the service's metadata (not in it), both checked; Compose's `labels`
and `deploy.labels` translated onto them; `service ls -o json` and `inspect` show them."""

from __future__ import annotations

import json

import pytest

from node.agent.containers import container_spec
from node.cli.output import service_detail, service_dict
from node.compose.translate import ComposeError, translate
from node.model.domain import template_hash
from node.model.spec import SpecError, parse_spec, spec_to_dict
from node.model.spec_compat import known_paths, unknown_to
from node.pb import api_pb2
from node.runtime.base import LABELS
from tests.factories import make_task

BASE = "name: web\nimage: x\n"


def test_labels_go_on_every_container_under_shoals_own() -> None:
    spec = parse_spec(BASE + "labels: {com.example.team: web, traefik.enable: 'true'}\n")
    made = container_spec(make_task("web", 1, "n1"), spec, "c1", "127.0.0.1")
    assert made.labels["com.example.team"] == "web" and made.labels["traefik.enable"] == "true"
    assert made.labels[LABELS.SERVICE] == "web" and made.labels[LABELS.CLUSTER] == "c1"
    plain = container_spec(make_task("web", 1, "n1"), parse_spec(BASE), "c1", "127.0.0.1")
    assert all(k.startswith("io.shoal.") for k in plain.labels)
    meta = parse_spec(BASE + "service_labels: {owner: team-a}\n")
    assert container_spec(make_task("web", 1, "n1"), meta, "c1", "127.0.0.1").labels == plain.labels


def test_container_labels_roll_the_replicas_service_labels_do_not_and_none_keeps_the_hash() -> None:
    base = parse_spec(BASE)
    assert template_hash(base) == template_hash(parse_spec(BASE + "service_labels: {owner: a}\n"))
    assert template_hash(base) != template_hash(parse_spec(BASE + "labels: {owner: a}\n"))
    assert "labels" not in spec_to_dict(base) and "service_labels" not in spec_to_dict(base)
    assert template_hash(parse_spec("name: a\nimage: x\n")) == "47507d1d53146029"  # as before labels existed
    old_build = known_paths() - {"labels", "service_labels"}
    assert unknown_to(parse_spec(BASE + "labels: {a: b}\n"), [("n1", old_build)]) == {"labels": ["n1"]}
    assert unknown_to(base, [("n1", old_build)]) == {}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "labels: {io.shoal.service: db}",
            "labels[\"io.shoal.service\"]: invalid key: the prefix 'io.shoal.' is shoal's own",
        ),
        ("labels: {IO.SHOAL.x: y}", "the prefix 'io.shoal.' is shoal's own"),
        ("service_labels: {io.shoal.x: y}", 'service_labels["io.shoal.x"]: invalid key: the prefix'),
        ("labels: {'-a': b}", "a label key is 1 to 255 of letters, digits"),
        ("labels: {'a b': c}", "a label key is 1 to 255"),
        ("labels: {a: 3}", "labels.a: must be a string, got number 3 (quote it)"),
        ("labels: [a=b]", "labels: must be a mapping, got a list"),
        ("labels: {a: '" + "v" * 4097 + "'}", "labels.a: must have at most 4096 characters"),
        (
            "labels: {" + ", ".join(f"k{i}: v" for i in range(65)) + "}",
            "labels: must have at most 64 entries",
        ),
        ("labels: {'" + "k" * 256 + "': v}", "a label key is 1 to 255"),
    ],
)
def test_bad_labels_are_refused_with_what_to_fix(line: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(BASE + line + "\n", "s.yaml")
    assert message in str(err.value)


COMPOSE = """\
services:
  web:
    image: x
    labels:
      - com.example.team=web
      - com.example.empty
    deploy:
      labels:
        owner: team-a
        public: true
        weight: 3
  db:
    image: x
    labels: {com.example.tier: data}
"""


def test_compose_labels_and_deploy_labels_are_translated() -> None:
    out = translate(COMPOSE, "c.yaml", "app")
    web, db = out.document["services"]["web"], out.document["services"]["db"]
    assert web["labels"] == {"com.example.team": "web", "com.example.empty": ""}
    assert web["service_labels"] == {"owner": "team-a", "public": "true", "weight": "3"}
    assert db["labels"] == {"com.example.tier": "data"} and "service_labels" not in db
    assert not [w for w in out.warnings if "labels" in w.path]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("com.example.tier: data", "io.shoal.node: n9"),
            'c.yaml:14:5: services.db: labels["io.shoal.node"]: invalid key',
        ),
        (
            ("labels: {com.example.tier: data}", "labels: web"),
            "services.db.labels: must be a list of KEY=VALUE",
        ),
        (("weight: 3", "weight: [3]"), "services.web.deploy.labels.weight: a label's value must be a string"),
    ],
)
def test_compose_label_errors_name_the_line(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ComposeError) as err:
        translate(COMPOSE.replace(*change), "c.yaml", "app")
    assert message in str(err.value)


def test_ls_and_inspect_show_the_service_labels() -> None:
    spec = {"name": "web", "image": "x", "labels": {"a": "b"}, "service_labels": {"owner": "team-a"}}
    s = api_pb2.Service(name="web", version=1, image="x", spec_json=json.dumps(spec))
    assert service_dict(s)["labels"] == {"owner": "team-a"}
    detail = service_detail(s, [])
    assert detail["labels"] == {"owner": "team-a"} and detail["spec"]["labels"] == {"a": "b"}
    bare = api_pb2.Service(name="web", spec_json=json.dumps({"name": "web", "image": "x"}))
    assert service_dict(bare)["labels"] == {} and service_detail(bare, [])["labels"] is None
