"""Cluster-wide settings stored by the API and read by every caller: the rate card
(`usage/rates`) and the node pools (`pools`). A value that does not read (a hand edit of
etcd) failed every `UsageReport` / `ListPools` with an internal error; each is now refused
with FAILED_PRECONDITION naming the key and the command that sets it again."""

from __future__ import annotations

import json

import grpc
import pytest

from node.api.pools import PoolsServicer
from node.api.usage_report import usage_report
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.model.pools import parse_pools, pools_to_doc
from node.model.usage_ledger import UsageKeys
from node.pb import api_pb2, pools_pb2
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog

KEYS = Keys("/u/")
BAD = [b"{not json", b"[1]", b"7", b'{"vcpu_hour": -1}', b'"text"', b"[" * 5000]


@pytest.mark.parametrize("raw", BAD)
async def test_a_rate_card_that_does_not_read_is_refused_naming_the_fix(raw: bytes) -> None:
    store = MemoryStore()
    await store.put(UsageKeys(KEYS.prefix).rates, raw)
    request = api_pb2.UsageReportRequest(since=0, until=100, by="service")
    with pytest.raises(FailedPrecondition, match=r"rate card \(/u/usage/rates\) .*`shoal usage rates set`"):
        await usage_report(store, KEYS, request)


async def test_a_readable_rate_card_still_prices() -> None:
    store = MemoryStore()
    await store.put(UsageKeys(KEYS.prefix).rates, json.dumps({"vcpu_hour": 0.5}).encode())
    out = await usage_report(store, KEYS, api_pb2.UsageReportRequest(since=0, until=100, by="service"))
    assert out.rates.set and out.rates.vcpu_hour == 0.5


class Aborted(Exception):
    pass


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


@pytest.mark.parametrize("raw", [*BAD, b'{"pools": {"a": 5}}'])
async def test_stored_pools_that_do_not_read_are_refused_naming_the_fix(raw: bytes) -> None:
    store = MemoryStore()
    await store.put(KEYS.pools, raw)
    servicer = PoolsServicer(store, KEYS, EventLog(store, KEYS, "n1"))
    with pytest.raises(Aborted) as err:
        await servicer.ListPools(pools_pb2.ListPoolsRequest(), Context())  # type: ignore[arg-type]
    code, details = err.value.args
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "stored pools (/u/pools) cannot be read" in details and "`shoal pool apply" in details


async def test_readable_pools_are_still_listed() -> None:
    store = MemoryStore()
    burst = {"provider": {"command": ["x"]}, "max": 2, "node": {"cpu": 1, "memory": "1Gi"}}
    doc = {"pools": {"burst": burst}}
    await store.put(KEYS.pools, json.dumps(pools_to_doc(parse_pools(doc))).encode())
    servicer = PoolsServicer(store, KEYS, EventLog(store, KEYS, "n1"))
    out = await servicer.ListPools(pools_pb2.ListPoolsRequest(), Context())  # type: ignore[arg-type]
    assert [p.name for p in out.pools] == ["burst"]


async def test_a_deeply_nested_pools_document_is_invalid_argument_and_stores_nothing() -> None:
    """json.loads of 100,000 nested lists raised RecursionError: an INTERNAL answer."""
    store = MemoryStore()
    servicer = PoolsServicer(store, KEYS, EventLog(store, KEYS, "n1"))
    deep = "[" * 100_000 + "]" * 100_000
    request = pools_pb2.ApplyPoolsRequest(document_json=deep)
    with pytest.raises(Aborted) as err:
        await servicer.ApplyPools(request, Context())  # type: ignore[arg-type]
    code, details = err.value.args
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nested too deeply" in details
    assert await store.get(KEYS.pools) is None
