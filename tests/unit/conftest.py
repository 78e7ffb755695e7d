"""Fixtures of the unit tests shared across modules: the fake client API (`fake_shoal`),
and the agent's state invariants checked at the teardown of every test that made one."""

from collections.abc import Iterator
from typing import Any

import pytest

from node.agent import agent as agent_module
from node.agent.invariants import validate
from tests.unit.fake_shoal import addr, authority, context_file, credentials, fake, server  # noqa: F401


@pytest.fixture(autouse=True)
def agent_invariants(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every Agent a test makes has valid per-task state when the test ends
    (`node.agent.invariants`), as dask's `validate_state` at teardown."""
    made: list[agent_module.Agent] = []
    init = agent_module.Agent.__init__

    def recording(self: agent_module.Agent, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(agent_module.Agent, "__init__", recording)
    yield
    for agent in made:
        validate(agent.machine)
