"""`shoal service autoscale` and the `autoscale` section of `inspect` (issue 15), against the
fake client API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from node.model.load import AutoscaleStatus, Decision
from node.pb import api_pb2
from tests.unit.fake_shoal import FakeShoal, fails, ok

pytestmark = pytest.mark.usefixtures("credentials", "cleanup")


@pytest.fixture
def cleanup(fake: FakeShoal) -> Iterator[None]:
    yield
    fake.services.pop("auto", None)  # the fake server is shared by the session


SPEC = {
    "name": "auto",
    "image": "x",
    "autoscale": {"min": 1, "max": 3, "target": {"requests_per_replica": 8}},
}


def _service(status: AutoscaleStatus | None) -> api_pb2.Service:
    return api_pb2.Service(
        name="auto",
        version=4,
        replicas=3,
        running=3,
        spec_json=json.dumps(SPEC),
        autoscale_json=status.to_json().decode() if status else "",
    )


def _status(now: float) -> AutoscaleStatus:
    why = "requests_per_replica 20.1/s against target 8/s"
    return AutoscaleStatus(
        "auto", "u1", "requests_per_replica", 8.0, 13.3, "", 3, 3, 1, 3, "", now - 2, now - 2,
        now + 60, 0.0, now, "n1", Decision(now - 2, 1, 3, "requests_per_replica", 20.1, why),
    )  # fmt: skip


def test_the_status_in_text_and_json(addr: str, fake: FakeShoal) -> None:
    fake.services["auto"] = _service(_status(time.time()))
    text = ok(addr, "service", "autoscale", "auto")
    assert text.startswith("service auto: requests_per_replica 13.3/s per replica, target 8/s\n")
    assert "3 (min 1, max 3); the metric asks for 3" in text
    assert "1 -> 3 replica(s): requests_per_replica 20.1/s against target 8/s" in text
    assert "up again" in text and "by the leader n1" in text
    data = json.loads(ok(addr, "service", "autoscale", "auto", "-o", "json"))
    assert data["current"] == "13.3/s" and data["last_decision"]["to"] == 3
    shown = json.loads(ok(addr, "service", "inspect", "auto", "-o", "json"))
    assert list(shown)[-3:] == ["autoscale", "spec", "tasks"] and shown["autoscale"]["target"] == "8/s"


def test_before_the_first_decision_and_for_a_service_without_autoscale(addr: str, fake: FakeShoal) -> None:
    fake.services["auto"] = _service(None)
    assert "no decision yet" in ok(addr, "service", "autoscale", "auto")
    assert "is not autoscaled" in fails(addr, "service", "autoscale", "web")
    assert "autoscale" not in json.loads(ok(addr, "service", "inspect", "web", "-o", "json"))
