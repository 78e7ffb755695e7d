"""The dashboard's cluster-wide figures (issue 14): traffic charted over every node's
proxy (`Peer/NodeTraffic`, a node that does not answer named), and usage per task in
the views. Real `Traffic` samplers, `UsageSampler` and `MemoryStore`; fake peer stubs."""

from __future__ import annotations

import json
import math

import grpc
import grpc.aio
import pytest

from node.api.gossip_transport import PeerServicer
from node.api.servicer import ShoalServicer
from node.api.usage import UsageBook
from node.dashboard.cluster import ClusterTraffic, from_message, to_message
from node.dashboard.traffic import Delta, Totals, Traffic, chart
from node.dashboard.views import LocalContext, ViewError, Views
from node.model.domain import NodeInfo
from node.model.keys import Keys
from node.pb import peer_pb2
from node.store.memory import MemoryStore
from tests.unit.test_usage_api import sampler_over

KEYS = Keys("/shoal/")


def test_a_chart_sums_the_nodes_rates_and_weighs_latency_by_requests() -> None:
    n1 = {"web": [Delta(1002.0, 2.0, Totals(20, 2, 20, 1.0)), Delta(1004.1, 2.1, Totals(0, 0, 0, 0.0))]}
    n2 = {
        "web": [Delta(1001.9, 2.0, Totals(10, 0, 10, 2.0))],
        "api": [Delta(1003.2, 1.2, Totals(6, 6, 6, 0.6)), Delta(1004.0, 0.8, Totals(2, 0, 2, 0.2))],
    }
    points = chart([n1, n2], 2.0)
    assert points["web"] == [
        {"at": 1002.0, "rate": 15.0, "errors": 1.0, "latency": 0.1},  # (1.0 + 2.0) / 30 requests
        {"at": 1004.0, "rate": 0.0, "errors": 0.0, "latency": 0.0},
    ]
    # n2's sampler was late once: two deltas in one bucket count as one over their summed span
    assert points["api"] == [{"at": 1004.0, "rate": 4.0, "errors": 3.0, "latency": 0.1}]
    assert chart([{"web": [Delta(1.0, 0.0, Totals(5))]}], 2.0) == {}  # no time passed: no point


@pytest.mark.parametrize(
    "bad",
    [
        Delta(math.nan, 2.0, Totals(5)),
        Delta(math.inf, 2.0, Totals(5)),
        Delta(-math.inf, 2.0, Totals(5)),
        Delta(1002.0, math.nan, Totals(5)),
        Delta(1002.0, math.inf, Totals(5)),
        Delta(1002.0, 2.0, Totals(5, 0, 5, math.nan)),
        Delta(1002.0, 2.0, Totals(5, 0, 5, math.inf)),
    ],
)
def test_a_peers_point_with_a_time_that_is_not_finite_is_skipped(bad: Delta) -> None:
    """A peer's NaN or infinite `at` made `round` raise and failed the whole traffic view
    (every node's chart); a NaN latency made JSON no browser parses. Skipped alone."""
    good = {"web": [Delta(1002.0, 2.0, Totals(20, 2, 20, 1.0))]}
    points = chart([good, {"web": [bad], "api": [bad]}], 2.0)
    assert points == {"web": [{"at": 1002.0, "rate": 10.0, "errors": 1.0, "latency": 0.05}]}
    json.loads(json.dumps(points, allow_nan=False))


def test_traffic_deltas_travel_whole_between_nodes() -> None:
    clock = [1000.0]
    counts = {"web": Totals(0, 0, 0, 0.0)}
    traffic = Traffic(lambda: dict(counts), lambda: clock[0], keep=5, interval=2.0)
    traffic.sample()
    clock[0] += 2
    counts["web"] = Totals(8, 1, 8, 0.4)
    traffic.sample()
    message = to_message("n2", traffic.deltas())
    assert message.node == "n2" and message.series[0].points[0].requests == 8
    assert from_message(peer_pb2.TrafficResponse.FromString(message.SerializeToString())) == traffic.deltas()


class FakeStub:
    def __init__(self, answer: peer_pb2.TrafficResponse | None) -> None:
        self.answer = answer
        self.asked = 0

    async def NodeTraffic(self, request: peer_pb2.TrafficRequest, timeout: float) -> peer_pb2.TrafficResponse:
        self.asked += 1
        if self.answer is None:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused"
            )
        return self.answer


class FakePeers:
    def __init__(self, stubs: dict[str, FakeStub]) -> None:
        self.stubs = stubs

    def stub(self, address: str) -> FakeStub:
        return self.stubs[address]


async def test_the_cluster_chart_holds_every_answering_node_and_names_the_others() -> None:
    store = MemoryStore()
    for i, node in enumerate(("n1", "n2", "n3"), start=1):
        await store.put(KEYS.node(node), NodeInfo(node, f"127.0.0.{i}", 7070).to_json())
    await store.put(KEYS.node("sim"), NodeInfo("sim", "127.0.0.9", 7070, simulated=True).to_json())
    clock = [1000.0]
    counts = {"web": Totals()}
    here = Traffic(lambda: dict(counts), lambda: clock[0], interval=2.0)
    here.sample()
    clock[0] += 2
    counts["web"] = Totals(4, 0, 4, 0.4)
    here.sample()
    remote = to_message("n2", {"web": [Delta(1002.1, 2.0, Totals(16, 2, 16, 0.0))]})
    peers = FakePeers({"127.0.0.2:7070": FakeStub(remote), "127.0.0.3:7070": FakeStub(None)})
    cluster = ClusterTraffic(here, "n1", store, KEYS, peers)  # type: ignore[arg-type]
    answer = await cluster.series()
    assert answer["services"] == {"web": [{"at": 1002.0, "rate": 10.0, "errors": 1.0, "latency": 0.02}]}
    assert answer["nodes"] == ["n1", "n2"]
    assert answer["notices"] == ["node n3: no traffic figures: connection refused"]
    assert cluster.local().series[0].points[0].requests == 4  # what this node answers its peers


async def test_a_node_without_traffic_figures_says_so_over_the_peer_api() -> None:
    servicer = PeerServicer(None)  # type: ignore[arg-type]  # NodeTraffic reads no membership
    with pytest.raises(ViewError) as refused:
        await servicer.NodeTraffic(peer_pb2.TrafficRequest(), LocalContext())  # type: ignore[arg-type]
    assert refused.value.code == "FAILED_PRECONDITION" and "no traffic figures" in refused.value.message
    servicer.traffic_source = lambda: peer_pb2.TrafficResponse(node="n1")
    answer = await servicer.NodeTraffic(peer_pb2.TrafficRequest(), LocalContext())  # type: ignore[arg-type]
    assert answer.node == "n1"


async def test_usage_per_task_in_the_views_and_a_notice_without_a_sampler() -> None:
    store = MemoryStore()
    servicer = ShoalServicer(store, KEYS, "n1")
    await servicer.writer.apply("name: web\nimage: shoal-demo/web:1\n", "web.yaml")
    await store.put(KEYS.node("n1"), NodeInfo("n1", "127.0.0.1", 7070).to_json())
    views = Views(servicer, "n1")
    none = await views.usage()
    assert none == {"usage": [], "usage_notices": ["node n1 serves no usage figures"]}
    stats = {"c1": {"cpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": {"usage": 5 * 2**20}}}
    sampler = sampler_over(stats)
    sampler.sample_once()
    stats["c1"] = {"cpu_stats": {"cpu_usage": {"total_usage": 10**9}}, "memory_stats": {"usage": 6 * 2**20}}
    sampler.sample_once()
    servicer.usage = UsageBook("n1", sampler, lambda task: 1, store, KEYS, FakePeers({}))  # type: ignore[arg-type]
    answer = await views.usage("web")
    (row,) = answer["usage"]
    assert (row["task_id"], row["node"], row["restarts"], row["memory_bytes"]) == ("t-c1", "n1", 1, 6 * 2**20)
    assert row["cpu_percent"] > 0 and answer["usage_notices"] == []
    traffic = await views.traffic()
    assert traffic["services"] == {} and traffic["notices"] == ["no traffic figures here"]
