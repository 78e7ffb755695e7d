"""Node pools (issue 15): how many nodes to ask for and which to give back (pure)."""

from __future__ import annotations

import pytest

from leader.pools_plan import Demand, decide
from node.model.constraints import parse_constraint
from node.model.errors import InvalidArgument
from node.model.pools import PoolNode, PoolState, parse_pools

GI = 2**30


def pools(**over: object) -> dict:
    body = {
        "provider": {"command": ["/bin/true"]},
        "min": 0,
        "max": 10,
        "node": {"cpu": 2, "memory": "4Gi", "labels": {"tier": "burst"}},
        "idle_timeout": "10s",
        "join_timeout": "60s",
    }
    body.update(over)
    return parse_pools({"pools": {"burst": body}})


def rec(node: str, state: PoolState, at: float = 0.0, **kw: object) -> PoolNode:
    return PoolNode("burst", node, state.value, requested_at=at, changed_at=at, **kw)  # type: ignore[arg-type]


def big(count: int, cpu: int = 1500, memory: int = 3 * GI, **kw: object) -> Demand:
    return Demand("web", count, cpu, memory, **kw)  # type: ignore[arg-type]


def test_pending_replicas_ask_for_one_node_each_when_only_one_fits_per_node() -> None:
    d = decide(pools(), [], ["n1"], ["n1"], [big(2)], now=100)
    assert d.create == {"burst": 2} and not d.give_back and not d.waiting


def test_small_replicas_are_packed_into_node_sized_bins() -> None:
    d = decide(pools(), [], [], [], [big(5, cpu=1000, memory=GI)], now=100)
    assert d.create == {"burst": 3}  # 2 cpu per node: 2 + 2 + 1


def test_max_per_node_opens_a_node_per_replica() -> None:
    d = decide(pools(), [], [], [], [big(3, cpu=100, memory=GI, max_per_node=1)], now=100)
    assert d.create == {"burst": 3}


def test_nodes_on_their_way_are_not_asked_for_twice_across_passes_and_leaders() -> None:
    # a previous pass (or a previous leader, epoch 3) recorded two requests: nothing more
    inflight = [rec("burst-a", PoolState.REQUESTED, 90, epoch=3), rec("burst-b", PoolState.CREATED, 95)]
    d = decide(pools(), inflight, ["n1"], ["n1"], [big(2)], now=100)
    assert d.create == {} and d.give_back == {}
    # a third replica needs a third node
    d = decide(pools(), inflight, ["n1"], ["n1"], [big(3)], now=100)
    assert d.create == {"burst": 1}


def test_a_joined_node_is_not_capacity_on_its_way() -> None:
    # it joined: the scheduler saw it this pass; what still waits needs another node
    joined = [rec("burst-a", PoolState.JOINED, 90)]
    d = decide(pools(), joined, ["burst-a"], ["burst-a"], [big(1)], now=100)
    assert d.create == {"burst": 1}


def test_never_beyond_max_and_the_rest_waits() -> None:
    d = decide(pools(max=3), [rec("burst-a", PoolState.JOINED)], ["burst-a"], ["burst-a"], [big(5)], now=1)
    assert d.create == {"burst": 2} and d.waiting == {"web": 3}


def test_replicas_no_pool_node_can_hold_ask_for_nothing() -> None:
    d = decide(pools(), [], [], [], [big(1, cpu=3000)], now=1)
    assert d.create == {} and d.waiting == {"web": 1}
    d = decide(pools(), [], [], [], [big(1, memory=5 * GI)], now=1)
    assert d.create == {}


def test_constraints_are_matched_against_the_pool_nodes_labels() -> None:
    wants_burst = (parse_constraint("node.labels.tier == burst"),)
    wants_pool = (parse_constraint("node.labels.shoal.pool == burst"),)
    wants_gpu = (parse_constraint("node.labels.gpu == yes"),)
    assert decide(pools(), [], [], [], [big(1, constraints=wants_burst)], now=1).create == {"burst": 1}
    assert decide(pools(), [], [], [], [big(1, constraints=wants_pool)], now=1).create == {"burst": 1}
    assert decide(pools(), [], [], [], [big(1, constraints=wants_gpu)], now=1).create == {}


def test_min_is_kept_without_demand() -> None:
    assert decide(pools(min=2), [], [], [], [], now=1).create == {"burst": 2}
    one = [rec("burst-a", PoolState.REQUESTED, 1)]
    assert decide(pools(min=2), one, [], [], [], now=2).create == {"burst": 1}


def test_an_empty_node_goes_back_after_its_idle_timeout_only() -> None:
    joined = [rec("burst-a", PoolState.JOINED, 0)]
    d = decide(pools(), joined, ["burst-a"], [], [], now=100)
    assert d.give_back == {} and d.empty_since == {"burst-a": 100}  # the clock starts
    d = decide(pools(), joined, ["burst-a"], [], [], now=109, empty_since=d.empty_since)
    assert d.give_back == {}
    d = decide(pools(), joined, ["burst-a"], [], [], now=110, empty_since=d.empty_since)
    assert list(d.give_back) == ["burst-a"] and "idle_timeout 10s" in d.give_back["burst-a"]


def test_a_busy_node_resets_its_idle_clock() -> None:
    joined = [rec("burst-a", PoolState.JOINED, 0)]
    d = decide(pools(), joined, ["burst-a"], ["burst-a"], [], now=200, empty_since={"burst-a": 100})
    assert d.give_back == {} and d.empty_since == {}


def test_idle_nodes_go_back_only_down_to_min_the_longest_idle_first() -> None:
    joined = [rec("burst-a", PoolState.JOINED), rec("burst-b", PoolState.JOINED)]
    since = {"burst-a": 50.0, "burst-b": 10.0}
    d = decide(pools(min=1), joined, ["burst-a", "burst-b"], [], [], now=100, empty_since=since)
    assert list(d.give_back) == ["burst-b"]


def test_a_node_that_never_joins_is_given_back_after_timeout_plus_join_timeout() -> None:
    asked = [rec("burst-a", PoolState.CREATED, 0)]
    spec = pools(provider={"command": ["/bin/true"], "timeout": "30s"})
    assert decide(spec, asked, [], [], [], now=90).give_back == {}
    d = decide(spec, asked, [], [], [big(1)], now=91)
    assert "not joined" in d.give_back["burst-a"]
    assert d.create == {"burst": 1}  # the waiting replica asks afresh, the stuck node is not capacity


def test_a_failed_call_holds_the_pool_back_until_retry_at_then_is_forgotten() -> None:
    failed = [rec("burst-a", PoolState.FAILED, 0, retry_at=50.0)]
    d = decide(pools(), failed, [], [], [big(1)], now=40)
    assert d.create == {} and d.forget == [] and d.waiting == {"web": 1}
    d = decide(pools(), failed, [], [], [big(1)], now=50)
    assert d.create == {"burst": 1} and d.forget == ["burst-a"]


def test_nodes_being_given_back_count_toward_max_but_not_toward_min() -> None:
    going = [rec("burst-a", PoolState.DELETING)]
    assert decide(pools(max=1), going, [], [], [big(1)], now=1).create == {}
    assert decide(pools(min=1, max=2), going, [], [], [], now=1).create == {"burst": 1}


def test_nodes_of_a_pool_no_longer_declared_go_back_once_empty() -> None:
    orphans = [rec("burst-a", PoolState.JOINED), rec("burst-b", PoolState.JOINED)]
    d = decide({}, orphans, ["burst-a", "burst-b"], ["burst-b"], [], now=1)
    assert list(d.give_back) == ["burst-a"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"pools": {"Burst": {}}}, "pools.Burst: a pool name is"),
        ({"pools": {"b": {"provider": {"command": []}, "node": {"cpu": 1, "memory": "1Gi"}}}}, "command"),
        ({"pools": {"b": {"provider": {"command": ["x"]}, "node": {"cpu": 0, "memory": "1Gi"}}}}, "node.cpu"),
        ({"pools": {"b": {"provider": {"command": ["x"]}, "node": {"cpu": 1, "memory": "lots"}}}}, "memory"),
        (
            {"pools": {"b": {"provider": {"command": ["x"]}, "node": {"cpu": 1, "memory": "1Gi"}, "min": 3}}},
            "pools.b.max: must be at least 1 and at least min (3)",
        ),
        ({"pools": {"b": {"provider": {"command": ["x"]}, "nodes": {}}}}, "unknown key(s) nodes"),
        # hostile values: each was accepted, and broke ListPools or every provider call
        ({"pools": {"b": {"provider": {"command": ["x"]}, "node": {"cpu": 1, "memory": 10**30}}}}, "to 64Ti"),
        (
            {"pools": {"b": {"provider": {"command": ["x", "a\0b"]}, "node": {"cpu": 1, "memory": "1Gi"}}}},
            "NUL",
        ),
        (
            {
                "pools": {
                    "b": {
                        "provider": {"command": ["x"]},
                        "node": {"cpu": 1, "memory": "1Gi", "labels": {"z": "a\nb"}},
                    }
                }
            },
            "pools.b.node.labels.z: must be printable",
        ),
        (
            {
                "pools": {
                    "b": {
                        "provider": {"command": ["x"]},
                        "node": {"cpu": 1, "memory": "1Gi"},
                        "idle_timeout": "soon",
                    }
                }
            },
            "pools.b.idle_timeout: must be a duration",
        ),
    ],
)
def test_bad_pools_are_refused_naming_what_to_fix(doc: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_pools(doc)
    assert message in str(err.value)


def test_pools_round_trip_through_their_stored_form() -> None:
    from node.model.pools import pools_to_doc

    first = pools(max=4, idle_timeout="5m")
    assert parse_pools(pools_to_doc(first)) == first
    assert first["burst"].node_labels() == {"tier": "burst", "shoal.pool": "burst"}
    assert first["burst"].idle_timeout == 300 and first["burst"].node_memory == 4 * GI


def test_a_failed_create_still_being_given_back_holds_the_pool_back_too() -> None:
    going = [rec("burst-a", PoolState.DELETING, 0, retry_at=50.0)]
    assert decide(pools(), going, [], [], [big(1)], now=40).create == {}
    assert decide(pools(), going, [], [], [big(1)], now=50).create == {"burst": 1}


def test_released_nodes_still_registered_count_toward_max_and_are_not_given_back_again() -> None:
    gone = [rec("burst-a", PoolState.RELEASED)]
    d = decide(pools(max=1), gone, ["burst-a"], [], [big(1)], now=100, empty_since={"burst-a": 0.0})
    assert d.create == {} and d.give_back == {}


def test_waiting_replicas_past_what_the_pools_can_take_cost_no_more_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each waiting replica was tried against every node on its way (rebuilding the pools'
    name set per node), on the leader's loop: 100k waiting replicas held it 2-6 s.
    Once no node takes one and no pool has room, the rest of that service waits at once."""
    from leader import pools_plan

    tried = 0
    take = pools_plan._Bin.take

    def counted(self: pools_plan._Bin, d: Demand) -> bool:
        nonlocal tried
        tried += 1
        return take(self, d)

    monkeypatch.setattr(pools_plan._Bin, "take", counted)
    inflight = [rec(f"burst-{i}", PoolState.REQUESTED, 90) for i in range(20)]
    work = []
    for waiting in (1_000, 10_000):
        tried = 0
        d = decide(pools(max=40), inflight, [], [], [big(waiting)], now=100)
        assert d.create == {"burst": 20} and d.waiting == {"web": waiting - 40}
        work.append(tried)
    assert work[0] == work[1]
