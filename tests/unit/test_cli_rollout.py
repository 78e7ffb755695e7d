"""`node.cli.rollout.follow`: what `shoal service apply` prints and returns while a rollout runs."""

from __future__ import annotations

from typing import Any

import pytest

from node.cli.rollout import follow
from node.pb import api_pb2


class Script:
    """A client whose get_service answers the next scripted state on each call."""

    def __init__(self, states: list[api_pb2.Service], running: int = 2) -> None:
        self.states = states
        self.calls = 0
        self.running = running

    def get_service(self, name: str) -> api_pb2.Service:
        svc = self.states[min(self.calls, len(self.states) - 1)]
        self.calls += 1
        return svc

    def list_tasks(self, name: str) -> list[api_pb2.Task]:
        return [api_pb2.Task(slot=i + 1, state="running") for i in range(self.running)]


def svc(version: int, state: str = "", to: int = 0, **extra: Any) -> api_pb2.Service:
    out = api_pb2.Service(
        name="web",
        version=version,
        replicas=2,
        rollback_of=extra.pop("rollback_of", 0),
        update_pending=extra.pop("update_pending", False),
    )
    if state:
        out.rollout.CopyFrom(
            api_pb2.Rollout(state=state, from_version=1, to_version=to or version, total=2, **extra)
        )
    return out


def run(script: Script, version: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = follow(script, "web", version, wait=5, interval=0.001)  # type: ignore[arg-type]
    return code, capsys.readouterr().out


def test_a_completed_rollout_exits_0_and_prints_progress(capsys: pytest.CaptureFixture[str]) -> None:
    script = Script(
        [
            svc(2, "updating", updated=0, batch=[1]),
            svc(2, "updating", updated=1, batch=[2]),
            svc(2, "completed", updated=2),
        ]
    )
    code, out = run(script, 2, capsys)
    assert code == 0
    assert "1 -> 2: updating; 0/2 updated; 2/2 running; updating slot(s) 1" in out
    assert "1 -> 2: completed; 2/2 updated" in out


def test_a_failed_rollout_is_followed_through_its_rollback_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = Script(
        [
            svc(2, "updating", batch=[1]),
            svc(2, "failed", failed=[1], message="1 of 2 failed; rolling back to version 1"),
            svc(3, "rolling_back", to=3, rollback_of=2, batch=[1]),
            svc(3, "rolled_back", to=3, rollback_of=2, updated=2),
        ]
    )
    code, out = run(script, 2, capsys)
    assert code == 1
    assert "rolling back to version 1" in out and "rolled back" in out


def test_a_paused_rollout_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(Script([svc(2, "paused", failed=[1], message="paused")]), 2, capsys)
    assert code == 1 and "paused" in out


def test_a_version_without_rollout_waits_for_its_replicas(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(Script([svc(1)], running=2), 1, capsys)
    assert code == 0 and "version 1: 2/2 running" in out


def test_a_newer_apply_supersedes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(Script([svc(2, "updating"), svc(3, "updating")]), 2, capsys)
    assert code == 1 and "superseded by version 3" in out


def test_an_update_the_leader_has_not_started_yet_is_waited_for(capsys: pytest.CaptureFixture[str]) -> None:
    """Right after apply the replicas still run (the old version) and no rollout exists
    yet: that is not "done" while the service says an update is pending."""
    script = Script(
        [svc(2, update_pending=True), svc(2, "updating", batch=[1]), svc(2, "completed", updated=2)]
    )
    code, out = run(script, 2, capsys)
    assert code == 0 and "completed" in out and script.calls == 3


def test_a_rollback_the_user_asked_for_exits_0_when_it_completes(capsys: pytest.CaptureFixture[str]) -> None:
    script = Script([svc(4, "rolling_back", to=4, rollback_of=3), svc(4, "rolled_back", to=4, rollback_of=3)])
    code, _ = run(script, 4, capsys)
    assert code == 0


def test_an_image_that_cannot_be_pulled_ends_the_wait_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    class Failing(Script):
        def list_tasks(self, name: str) -> list[api_pb2.Task]:
            message = "image shoal-demo/nope:1 could not be pulled: pull access denied"
            old = api_pb2.Task(slot=1, state="failed", version=1, node="n1", message=message)
            return [old, api_pb2.Task(slot=2, state="failed", version=2, node="n2", message=message)]

    script = Failing([svc(2, "updating", updated=0, batch=[1])])
    code = follow(script, "web", 2, wait=60, interval=0.001)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert code == 1 and script.calls == 1
    assert "web: on node n2: image shoal-demo/nope:1 could not be pulled: pull access denied" in err
