"""The chaos suite on a real bed with a planted violation: a second container of web's
slot 1 (slots count from 1; under a node id no agent owns, so none stops it) runs on
h1's engine for the whole run. The run must fail and name that slot: the checker
cannot pass vacuously on real observations either. Run by `make chaos` before the
soak (not part of `make test`)."""

from __future__ import annotations

import pytest

from tests.chaos.run import main

pytestmark = pytest.mark.integration


def test_a_planted_duplicate_of_a_slot_fails_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "3", "--minutes", "0.5", "--kinds", "daemon_kill9", "--plant"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION: slot web/1 ran two tasks" in out and "planted" in out
    assert "FAIL" in out
