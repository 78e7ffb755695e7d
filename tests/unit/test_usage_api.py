"""Usage per task over the API, API request metering and Prometheus discovery (issue 14).

Samples and answers are real objects (`UsageSampler` fed by fakes of the engine, a
`MemoryStore`, a real gRPC server on 127.0.0.1 for the interceptor); the paths where
the engine or a peer does not answer are named tests.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from node.api.metering import RequestMeter
from node.api.usage import UsageBook, task_usage
from node.daemon.discovery import sd_page, target_groups
from node.model.domain import NodeInfo, ServiceRecord
from node.model.errors import NotFound
from node.model.keys import Keys
from node.pb import api_pb2
from node.proxy import metrics
from node.runtime.base import LABELS
from node.runtime.docker_stats import HISTORY, Usage, UsageSampler, block_io, cpu_percent, usage_of
from node.store import KV
from node.store.memory import MemoryStore
from tests.helpers import free_port

KEYS = Keys("/shoal/")


def usage(cpu: float, at: float, task: str = "t1", service: str = "web", slot: int = 0) -> Usage:
    return Usage(service, slot, task, cpu, 10 * 2**20, 64 * 2**20, 100, 50, at, 4096, 8192)


# -- samples ---------------------------------------------------------------------------------


def test_cpu_percent_is_the_share_of_one_core_between_two_samples() -> None:
    assert cpu_percent(usage(1.0, 100.0), usage(1.5, 110.0)) == pytest.approx(5.0)
    assert cpu_percent(usage(1.0, 100.0), usage(21.0, 110.0)) == pytest.approx(200.0)  # two cores busy
    assert cpu_percent(usage(9.0, 100.0), usage(0.1, 110.0)) == 0.0  # a new container: counter went back
    assert cpu_percent(usage(1.0, 100.0), usage(2.0, 100.0)) == 0.0  # no time passed


def test_block_io_reads_cgroup_v1_and_v2_entries() -> None:
    v1 = {"blkio_stats": {"io_service_bytes_recursive": [
        {"major": 8, "minor": 0, "op": "Read", "value": 4096},
        {"major": 8, "minor": 0, "op": "Write", "value": 100},
        {"major": 8, "minor": 0, "op": "Sync", "value": 7},
        {"major": 8, "minor": 16, "op": "Read", "value": 1},
    ]}}  # fmt: skip
    v2 = {
        "blkio_stats": {
            "io_service_bytes_recursive": [{"op": "read", "value": 3}, {"op": "write", "value": 5}]
        }
    }
    assert block_io(v1) == (4097, 100)
    assert block_io(v2) == (3, 5)
    assert block_io({"blkio_stats": {"io_service_bytes_recursive": None}}) == (0, 0)  # rootless, no blkio
    labels = {LABELS.SERVICE: "web", LABELS.SLOT: "2", LABELS.TASK: "t9"}
    u = usage_of(labels, v2, 5.0)
    assert (u.block_read, u.block_write, u.slot, u.task_id) == (3, 5, 2, "t9")


def sampler_over(stats: dict[str, dict[str, Any]]) -> UsageSampler:
    labels = {cid: {LABELS.SERVICE: "web", LABELS.SLOT: "0", LABELS.TASK: f"t-{cid}"} for cid in stats}
    return UsageSampler(lambda: {cid: labels[cid] for cid in stats}, lambda cid: stats[cid], interval=60.0)


def test_the_history_keeps_the_last_samples_of_each_container_and_drops_gone_ones() -> None:
    stats = {"c1": {"cpu_stats": {"cpu_usage": {"total_usage": 0}}}}
    sampler = sampler_over(stats)
    for i in range(HISTORY + 5):
        stats["c1"] = {"cpu_stats": {"cpu_usage": {"total_usage": i * 10**9}}}
        sampler.sample_once()
    history = sampler.history["c1"]
    assert len(history) == HISTORY
    assert [h.cpu_seconds for h in history] == [float(i) for i in range(5, HISTORY + 5)]  # oldest first
    del stats["c1"]
    sampler.sample_once()
    assert sampler.history == {} and sampler.latest == {}


def test_the_engine_not_answering_leaves_no_stale_figures() -> None:
    stats = {"c1": {"cpu_stats": {"cpu_usage": {"total_usage": 10**9}}}}
    sampler = sampler_over(stats)
    sampler.sample_once()
    assert sampler.history

    def away() -> dict[str, dict[str, str]]:
        raise ConnectionError("docker.sock: connection refused")

    sampler.lister = away
    sampler.sample_once()
    assert sampler.history == {} and sampler.latest == {} and sampler.errors == 1


def test_task_usage_gives_cpu_between_the_last_two_samples_and_the_history() -> None:
    history = (usage(1.0, 100.0), usage(2.0, 110.0), usage(4.0, 120.0))
    answer = task_usage(history, "n2", restarts=3, with_history=True)
    assert answer.cpu_percent == pytest.approx(20.0) and answer.node == "n2" and answer.restarts == 3
    assert (answer.memory_bytes, answer.memory_limit, answer.block_read, answer.block_write) == (
        10 * 2**20,
        64 * 2**20,
        4096,
        8192,
    )
    assert [round(p.cpu_percent, 3) for p in answer.history] == [10.0, 20.0]
    first = task_usage(history[:1], "n2", restarts=0, with_history=False)
    assert first.cpu_percent == 0.0 and not first.history  # one sample: no rate yet


# -- the API ---------------------------------------------------------------------------------


class FakeStub:
    def __init__(self, answer: api_pb2.UsageResponse | None) -> None:
        self.answer = answer
        self.asked: list[api_pb2.UsageRequest] = []

    async def NodeUsage(self, request: api_pb2.UsageRequest, timeout: float) -> api_pb2.UsageResponse:
        self.asked.append(request)
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


async def book_with_peers(
    peer_answers: dict[str, api_pb2.UsageResponse | None],
) -> tuple[UsageBook, FakePeers]:
    store = MemoryStore()
    await store.put(KEYS.service("web"), ServiceRecord("web", 1, {"name": "web", "image": "x:1"}).to_json())
    await store.put(KEYS.node("n1"), NodeInfo("n1", "127.0.0.1", 7070).to_json())
    await store.put(KEYS.node("sim"), NodeInfo("sim", "127.0.0.9", 7070, simulated=True).to_json())
    for i, node in enumerate(peer_answers, start=2):
        await store.put(KEYS.node(node), NodeInfo(node, f"127.0.0.{i}", 7070).to_json())
    peers = FakePeers(
        {f"127.0.0.{i}:7070": FakeStub(a) for i, a in enumerate(peer_answers.values(), start=2)}
    )
    sampler = sampler_over({"c1": {"cpu_stats": {"cpu_usage": {"total_usage": 10**9}}}})
    sampler.sample_once()
    book = UsageBook("n1", sampler, lambda task: 2 if task == "t-c1" else 0, store, KEYS, peers)  # type: ignore[arg-type]
    return book, peers


async def test_any_node_gathers_every_nodes_tasks_and_names_the_ones_that_did_not_answer() -> None:
    remote = api_pb2.UsageResponse(tasks=[api_pb2.TaskUsage(task_id="t-r", service="web", slot=1, node="n2")])
    book, peers = await book_with_peers({"n2": remote, "n3": None})
    answer = await book.gather(api_pb2.UsageRequest(service="web"))
    assert [(t.task_id, t.node, t.restarts) for t in answer.tasks] == [("t-c1", "n1", 2), ("t-r", "n2", 0)]
    assert list(answer.notices) == ["node n3: no usage figures: connection refused"]
    assert peers.stubs["127.0.0.2:7070"].asked[0].service == "web"  # the filter goes along; sim not asked


async def test_usage_of_an_unknown_service_is_not_found_and_asks_no_peer() -> None:
    book, peers = await book_with_peers({"n2": api_pb2.UsageResponse()})
    with pytest.raises(NotFound, match="service 'nosuch' not found; `shoal service ls`"):
        await book.gather(api_pb2.UsageRequest(service="nosuch"))
    assert peers.stubs["127.0.0.2:7070"].asked == []


async def test_a_node_without_a_sampler_says_so() -> None:
    book, _ = await book_with_peers({})
    book.sampler = None
    answer = book.local(api_pb2.UsageRequest())
    assert not answer.tasks and "usage is not sampled here" in answer.notices[0]


# -- API request metering --------------------------------------------------------------------


async def test_api_calls_are_counted_by_method_and_code_with_their_latency() -> None:
    async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        raise AssertionError("unreachable")

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield request

    meter = RequestMeter()
    server = grpc.aio.server(interceptors=[meter])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.S",
                {
                    "Ok": grpc.unary_unary_rpc_method_handler(ok),
                    "Missing": grpc.unary_unary_rpc_method_handler(missing),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(2):
                assert await channel.unary_unary("/t.S/Ok")(b"x", timeout=5) == b"x"
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary("/t.S/Missing")(b"x", timeout=5)
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
            assert [m async for m in channel.unary_stream("/t.S/Stream")(b"y", timeout=5)] == [b"y"] * 3
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary("/t.S/Unknown")(b"x", timeout=5)
    finally:
        await server.stop(None)
    assert dict(meter.calls) == {
        ("/t.S/Ok", "OK"): 2,
        ("/t.S/Missing", "NOT_FOUND"): 1,
        ("/t.S/Stream", "OK"): 1,
    }  # an unknown method is no series (its name is the caller's choice)
    assert meter.latency["/t.S/Ok"].count == 2 and meter.latency["/t.S/Stream"].count == 1


# -- Prometheus discovery --------------------------------------------------------------------


def test_target_groups_list_every_node_serving_metrics() -> None:
    nodes = [
        NodeInfo("n2", "10.0.0.2", 7070, metrics_port=7071, metrics_tls=True),
        NodeInfo("n1", "10.0.0.1", 7070, metrics_port=7071),
        NodeInfo("n3", "10.0.0.3", 7070),  # /metrics off
        NodeInfo("s1", "10.0.0.4", 7070, metrics_port=7071, simulated=True),
        NodeInfo("n6", "fd00::6", 7070, metrics_port=9100),
    ]
    assert target_groups(nodes, "prod") == [
        {"targets": ["10.0.0.1:7071"], "labels": {"shoal_node": "n1", "shoal_cluster": "prod"}},
        {
            "targets": ["10.0.0.2:7071"],
            "labels": {"shoal_node": "n2", "shoal_cluster": "prod", "__scheme__": "https"},
        },
        {"targets": ["[fd00::6]:9100"], "labels": {"shoal_node": "n6", "shoal_cluster": "prod"}},
    ]


def test_sd_is_served_next_to_metrics_behind_the_same_token() -> None:
    items = {
        KEYS.node("n1"): KV(
            KEYS.node("n1"), NodeInfo("n1", "127.0.0.1", 1, metrics_port=2).to_json(), 1, 1, 1
        ),
        KEYS.node("bad"): KV(KEYS.node("bad"), b"{not json", 1, 1, 1),
    }
    mesh: Any = type("M", (), {"routes": {}, "stats": {}, "bind_errors": {}, "listeners": {}})()
    port = free_port()
    server = metrics.serve(mesh, "127.0.0.1", port, None, "s3cret", (), {"/sd": sd_page(lambda: items, "c")})
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/sd", timeout=5)
        assert refused.value.code == 401
        ask = urllib.request.Request(
            f"http://127.0.0.1:{port}/sd", headers={"Authorization": "Bearer s3cret"}
        )
        with urllib.request.urlopen(ask, timeout=5) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            groups = json.loads(resp.read())
        assert groups == [{"targets": ["127.0.0.1:2"], "labels": {"shoal_node": "n1", "shoal_cluster": "c"}}]
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(
                urllib.request.Request(
                    f"http://127.0.0.1:{port}/x", headers={"Authorization": "Bearer s3cret"}
                ),
                timeout=5,
            )
        assert other.value.code == 404
    finally:
        server.shutdown()


def test_nodes_record_where_they_serve_metrics_and_older_records_still_read() -> None:
    info = NodeInfo("n1", "127.0.0.1", 7070, metrics_port=7071, metrics_tls=True)
    assert NodeInfo.from_json(info.to_json()) == info
    old = json.dumps({"id": "n1", "address": "127.0.0.1", "grpc_port": 7070})
    assert NodeInfo.from_json(old).metrics_port == 0  # a node from before: not listed by /sd
