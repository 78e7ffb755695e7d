"""The cluster's traffic per service for the dashboard: this node's `Traffic` samples
and every other registered node's, asked over `Peer/NodeTraffic` all at once, each
within `PEER_TIMEOUT`, then charted together (`node.dashboard.traffic.chart`). A node
that does not answer becomes a notice; the chart then holds the others' traffic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc.aio

from node.api.taskio import PeerStubs
from node.dashboard.traffic import Delta, Series, Totals, Traffic, chart
from node.model.domain import NodeInfo
from node.model.keys import Keys
from node.pb import peer_pb2
from node.store import Store

PEER_TIMEOUT = 3.0  # s a node may take to send its traffic figures


def to_message(node: str, series: Series) -> peer_pb2.TrafficResponse:
    out = peer_pb2.TrafficResponse(node=node)
    for service, deltas in sorted(series.items()):
        one = out.series.add(service=service)
        for d in deltas:
            c = d.counted
            one.points.add(
                at=d.at,
                span=d.span,
                requests=c.requests,
                errors=c.errors,
                latency_count=c.latency_count,
                latency_sum=c.latency_sum,
            )
    return out


def from_message(answer: peer_pb2.TrafficResponse) -> Series:
    return {
        s.service: [
            Delta(p.at, p.span, Totals(p.requests, p.errors, p.latency_count, p.latency_sum))
            for p in s.points
        ]
        for s in answer.series
    }


class ClusterTraffic:
    def __init__(self, traffic: Traffic, node: str, store: Store, keys: Keys, peers: PeerStubs) -> None:
        self.traffic = traffic
        self.node = node
        self.store = store
        self.keys = keys
        self.peers = peers

    def local(self) -> peer_pb2.TrafficResponse:
        """This node's answer to `Peer/NodeTraffic`."""
        return to_message(self.node, self.traffic.deltas())

    async def series(self) -> dict[str, Any]:
        """`{"services": {name: chart points}, "nodes": [who counted], "notices": [...]}`."""
        kvs, _ = await self.store.range(self.keys.nodes)
        others = [
            n for n in (NodeInfo.from_json(kv.value) for kv in kvs) if n.id != self.node and not n.simulated
        ]
        answers = await asyncio.gather(*(self._ask(n) for n in others))
        counted, notices = [self.traffic.deltas()], []
        nodes = [self.node]
        for node, answer in zip(others, answers, strict=True):
            if isinstance(answer, str):
                notices.append(f"node {node.id}: no traffic figures: {answer}")
            else:
                counted.append(answer)
                nodes.append(node.id)
        return {"services": chart(counted, self.traffic.interval), "nodes": sorted(nodes), "notices": notices}

    async def _ask(self, node: NodeInfo) -> Series | str:
        stub = self.peers.stub(f"{node.address}:{node.grpc_port}")
        try:
            answer = await stub.NodeTraffic(peer_pb2.TrafficRequest(), timeout=PEER_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return (exc.details() or exc.code().name).splitlines()[0][:200]
        return from_message(answer)
