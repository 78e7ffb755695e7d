"""`node.runtime.docker_seen.Seen`: which listed containers need no inspect (decision 71)."""

from __future__ import annotations

from typing import Any

import pytest

from node.runtime.base import Container
from node.runtime.docker_seen import Seen


def summary(cid: str, state: str, status: str = "") -> dict[str, Any]:
    return {"Id": cid, "State": state, "Status": status, "Names": [f"/{cid}"], "Labels": {}}


RUNNING = Container(id="r", name="r", labels={}, state="running", started_at="2026-12-06T16:00:00Z")
EXITED = Container(
    id="x", name="x", labels={}, state="exited", exit_code=3, finished_at="2026-12-06T16:01:00Z"
)


@pytest.mark.parametrize(
    ("inspected", "listed", "known"),
    [
        pytest.param([], summary("x", "exited"), False, id="never inspected"),
        pytest.param([EXITED], summary("x", "exited"), True, id="exited, inspected once"),
        pytest.param([EXITED], summary("x", "running"), False, id="started again by someone"),
        pytest.param([EXITED], summary("x", "dead"), False, id="another still state"),
        pytest.param([RUNNING], summary("r", "running"), True, id="running, start time known"),
        pytest.param([RUNNING], summary("r", "running", "Up 3 seconds (healthy)"), False, id="HEALTHCHECK"),
        pytest.param([RUNNING], summary("r", "exited"), False, id="running, now exited: its exit code"),
        pytest.param([RUNNING, EXITED], summary("y", "exited"), False, id="another container"),
    ],
)
def test_known(inspected: list[Container], listed: dict[str, Any], known: bool) -> None:
    seen = Seen()
    for c in inspected:
        seen.inspected(c)
    assert (seen.known(listed) is not None) is known


def test_an_exited_one_is_its_inspect() -> None:
    seen = Seen()
    seen.inspected(EXITED)
    assert seen.known(summary("x", "exited")) == EXITED


def test_forget_and_run_again() -> None:
    seen = Seen()
    seen.inspected(EXITED)
    seen.forget("x")
    assert seen.known(summary("x", "exited")) is None
    seen.inspected(EXITED)
    seen.inspected(Container(id="x", name="x", labels={}, state="running", started_at="2026-12-06T16:02:00Z"))
    assert seen.known(summary("x", "exited")) is None, "exited again since: inspected again"
