"""`shoal usage` and `shoal usage rates set` against the real handlers on the in-memory
store, served over mutual TLS as a node serves them (issue 15, decision 67)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from node.api.usage_report import usage_report
from node.model.keys import Keys
from node.model.usage_ledger import DAY, Dims, Rates, Record, Tally, UsageKeys
from node.pb import api_pb2, api_pb2_grpc
from node.security import bootstrap
from node.security.ca import ClusterCA
from node.store.memory import MemoryStore
from tests.unit.fake_shoal import shoal

pytestmark = pytest.mark.usefixtures("credentials")

KEYS = Keys("/u/")
UK = UsageKeys(KEYS.prefix)
T0 = 1_800_000_000 - 1_800_000_000 % DAY


class Metered(api_pb2_grpc.ShoalServicer):
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = MemoryStore()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def fill(self) -> None:
        pool = (("shoal.pool", "burst"),)
        for r in (
            Record(Dims("n1", "web", "shop", pool), T0, T0 + 60, Tally(7200.0, 3600.0, 360.0, 36.0), "a"),
            Record(Dims("n2", "db"), T0 + 60, T0 + 120, Tally(3600.0, 1800.0), "b"),
            Record(Dims("n1", "", "", pool), T0, T0 + 60, Tally(node_s=3600.0, node_vcpu_s=7200.0), "_node"),
        ):
            await self.store.put(UK.raw_key(r.start, r.dims.node, r.task), r.to_json())

    def UsageReport(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.run(usage_report(self.store, KEYS, request))

    def SetUsageRates(self, request: Any, context: grpc.ServicerContext) -> Any:
        r = request.rates
        rates = Rates(r.vcpu_hour, r.gib_hour, r.node_hour, r.currency)
        self.run(self.store.put(UK.rates, rates.to_json()))
        return api_pb2.UsageRates(vcpu_hour=r.vcpu_hour, gib_hour=r.gib_hour, currency=r.currency, set=True)


@pytest.fixture(scope="module")
def metered(authority: ClusterCA) -> Iterator[str]:
    servicer = Metered()
    thread = futures.ThreadPoolExecutor(max_workers=1)
    thread.submit(servicer.loop.run_forever)
    servicer.run(servicer.fill())
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    api_pb2_grpc.add_ShoalServicer_to_server(servicer, srv)
    node = bootstrap.node_identity(authority, "n1", ["127.0.0.1"])
    tls = grpc.ssl_server_credentials([(node.key, node.cert)], authority.cert_pem, require_client_auth=True)
    port = srv.add_secure_port("127.0.0.1:0", tls)
    srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(grace=None).wait()
    servicer.loop.call_soon_threadsafe(servicer.loop.stop)
    thread.shutdown()


def test_usage_table_json_and_rates(metered: str, tmp_path: Path) -> None:
    out = shoal(metered, "usage", "--since", str(T0), "--until", str(T0 + DAY))
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["SERVICE", "VCPU-H", "RESERVED"]
    assert lines[1].split()[:3] == ["db", "1.0000", "0.0000"]
    assert lines[2].split()[:4] == ["web", "2.0000", "0.1000", "1.0000"]
    assert lines[3].split()[:2] == ["TOTAL", "3.0000"]
    assert lines[-1].startswith("note: no rate card yet")

    done = shoal(metered, "usage", "rates", "set", "--vcpu-hour", "0.04048", "--gib-hour", "0.004445")
    assert done.exit_code == 0 and "0.04048 per vCPU-hour" in done.stdout, done.output
    data = json.loads(
        shoal(metered, "usage", "--by", "label:shoal.pool", "--json", "--until", str(T0 + DAY)).stdout
    )
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["burst"]["vcpu_hours_reserved"] == 2.0 and rows["burst"]["node_hours"] == 1.0
    assert rows["burst"]["cost"] == pytest.approx(2 * 0.04048 + 1 * 0.004445)
    assert data["total"]["cost"] == pytest.approx(3 * 0.04048 + 1.5 * 0.004445)
    assert data["rates"]["set"] is True

    card = tmp_path / "rates.yaml"
    card.write_text("vcpu_hour: 0.05\ngib_hour: 0.005\nnode_hour: 0.0832\ncurrency: EUR\n")
    assert shoal(metered, "usage", "rates", "set", "--file", str(card)).exit_code == 0


@pytest.mark.parametrize(
    ("args", "text", "message"),
    [
        ((), None, "give the prices"),
        (("--file", "{card}"), "vcpu_hour: -1\n", "vcpu_hour must be a price >= 0"),
        (("--file", "{card}"), "cpu_hour: 1\n", "unknown key(s) cpu_hour"),
        (("--file", "{card}"), "- 1\n", "expected a mapping"),
        (("--vcpu-hour", "-2"), None, "-2"),
    ],
)
def test_bad_rate_cards_are_refused_before_anything_is_sent(
    metered: str, tmp_path: Path, args: tuple[str, ...], text: str | None, message: str
) -> None:
    card = tmp_path / "rates.yaml"
    if text is not None:
        card.write_text(text)
    result = shoal(metered, "usage", "rates", "set", *(a.format(card=card) for a in args))
    assert result.exit_code != 0 and message in result.output + result.stderr, result.output


def test_bad_grouping_or_range_is_an_error(metered: str) -> None:
    for args, message in (
        (("--by", "task"), "--by must be service, stack, node or label:KEY"),
        (("--since", "yesterday-ish"), "--since"),
    ):
        result = shoal(metered, "usage", *args)
        assert result.exit_code != 0 and message in result.stderr, result.stderr
