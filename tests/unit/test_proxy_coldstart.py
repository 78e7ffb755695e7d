"""Requests held while a service is scaled to zero (node.proxy.coldstart, issue 15 item 2):
which services hold, release when the mesh routes a replica, give up at the timeout."""

from __future__ import annotations

import asyncio

from node.model.domain import ServiceRecord
from node.model.spec import parse_spec
from node.proxy.balancer import Backend, Balancer
from node.proxy.coldstart import ColdStart


def _record(name: str, autoscale: str) -> ServiceRecord:
    spec = parse_spec(f"name: {name}\nimage: x\n{autoscale}", f"{name}.yaml")
    return ServiceRecord(name, 1, spec, 0.0, "n1")


def _cold() -> ColdStart:
    cold = ColdStart()
    cold.update(
        [
            _record(
                "zero",
                "autoscale: {min: 0, max: 2, target: {requests_per_replica: 5}, cold_start_timeout: 0.3}\n",
            ),
            _record("one", "autoscale: {min: 1, max: 2, target: {requests_per_replica: 5}}\n"),
            _record("plain", ""),
        ]
    )
    return cold


def test_only_services_with_min_zero_and_no_replica_hold() -> None:
    cold, empty, full = _cold(), Balancer(), Balancer()
    full.set_endpoints([Backend("t1", "127.0.0.1", 8080)])
    assert cold.timeouts == {"zero": 0.3}
    assert cold.hold("zero", empty).now() and not cold.hold("zero", full).now()
    assert not cold.hold("one", empty).now() and not cold.hold("plain", empty).now()


async def test_a_held_request_goes_on_when_a_replica_is_routed_and_wakes_the_reporter() -> None:
    cold, balancer = _cold(), Balancer()
    told: list[str] = []
    cold.on_hold.append(told.append)
    waiter = asyncio.create_task(cold.hold("zero", balancer).wait())
    await asyncio.sleep(0)
    assert told == ["zero"] and cold.held["zero"] == 1
    cold.changed()  # a sync with still no replica: it waits on
    await asyncio.sleep(0)
    assert not waiter.done()
    balancer.set_endpoints([Backend("t1", "127.0.0.1", 8080)])
    cold.changed()
    assert await waiter is True
    assert "zero" not in cold.held


async def test_a_held_request_gives_up_after_the_cold_start_timeout() -> None:
    cold = _cold()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await cold.hold("zero", Balancer()).wait() is False
    assert 0.25 <= loop.time() - start < 2.0 and not cold.held
