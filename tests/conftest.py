"""Fixtures for every test: a real etcd for the tests that need one.

`etcd_endpoint` is a real etcd started for the test session (an `EtcdProcess`, the
same code `shoal dev` uses) on free ports, or the one named by `SHOAL_TEST_ETCD`
(host:port). Each test gets its own key prefix (`etcd_prefix`), so tests never see
one another's keys.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

# Imported here, at collection, not first by hypothesis's pytest plugin at the terminal
# summary: pytest's assertion rewriter parsing it then, after tests that ran threads, met
# CPython 3.11.7's "AST constructor recursion depth mismatch" SystemError (gh-106905) in
# 1 run of 3 of a few proxy tests here, an internal error after every test had passed.
import hypothesis  # noqa: F401
import pytest

from node.dev.devcluster import EtcdProcess
from tests.helpers import free_port_pair


@pytest.fixture(scope="session")
def etcd_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("SHOAL_TEST_ETCD")
    if given:
        yield given
        return
    port = free_port_pair()
    etcd = EtcdProcess(Path(tmp_path_factory.mktemp("etcd")) / "data", port, port + 1)
    etcd.start()
    try:
        yield etcd.endpoint
    finally:
        etcd.stop()


@pytest.fixture
def etcd_prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:10]}/"
