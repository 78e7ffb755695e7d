"""Compose: `restart: "no"` with `deploy.restart_policy.condition: none` is a job (issue 18)."""

from __future__ import annotations

import json

from node.compose.stackfile import parse_stack
from node.compose.translate import translate

COMPOSE = """\
services:
  migrate:
    image: app:1
    restart: "no"
    deploy: {restart_policy: {condition: none}}
  workers:
    image: app:1
    restart: "no"
    deploy: {restart_policy: {condition: none}, replicas: 3}
  web:
    image: app:1
    restart: "no"
"""


def test_no_restart_and_condition_none_make_a_job() -> None:
    doc = translate(COMPOSE, name="shop").document
    _, specs = parse_stack(json.dumps(doc), "compose.yaml")
    by_name = {s.name: s for s in specs}
    migrate, workers, web = by_name["shop_migrate"], by_name["shop_workers"], by_name["shop_web"]
    assert migrate.kind == "job" and migrate.job is None  # one completion
    assert workers.kind == "job" and workers.job is not None
    assert (workers.job.completions, workers.job.parallelism, workers.replicas) == (3, 3, 1)
    assert web.kind is None  # `restart: "no"` alone: a service that is not restarted
