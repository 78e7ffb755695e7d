"""`launch: dedicated` (issue 15 item 3, decision 68): the size table, the spec field, the
scheduler's one-task-per-node rule and the pools' asking and giving back (all pure)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest

from leader.pools_plan import DedicatedAsk, Demand, decide
from leader.scheduler import Snapshot, schedule_all
from node.model.domain import Assignment, NodeInfo
from node.model.pools import PoolNode, PoolState, parse_pools
from node.model.spec import SpecError, parse_spec
from node.model.spec_launch import DEDICATED_LABEL, LARGEST, SIZES, size_for
from tests.factories import make_service, make_task

GI, MI = 2**30, 2**20


# -- the size table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "memory", "size"),
    [
        (0, 0, (0.25, GI // 2)),  # nothing asked: the smallest
        (0.25, GI // 2, (0.25, GI // 2)),  # exact
        (0.1, 600 * MI, (0.25, GI)),  # memory rounds up within 0.25 vCPU
        (0.25, 3 * GI, (0.5, 3 * GI)),  # 3 GiB needs 0.5 vCPU
        (0.3, 600 * MI, (0.5, GI)),  # cpu rounds up, then the least memory that goes with it
        (1, 9 * GI, (2.0, 9 * GI)),
        (3, GI, (4.0, 8 * GI)),  # 4 vCPU starts at 8 GiB
        (4, 31 * GI, (8.0, 32 * GI)),  # 8 vCPU memory in 4 GiB steps
        (9, 0, (16.0, 32 * GI)),
        (16, 120 * GI, (16.0, 120 * GI)),
    ],
)
def test_a_task_is_rounded_up_to_the_first_size_that_holds_it(cpu: float, memory: int, size: tuple) -> None:
    assert size_for(cpu, memory) == size


def test_the_table_is_fargates_and_nothing_is_beyond_its_largest() -> None:
    assert SIZES[0] == (0.25, GI // 2) and LARGEST == (16.0, 120 * GI)
    by_cpu: dict[float, list[int]] = {}
    for cpu, mem in SIZES:
        by_cpu.setdefault(cpu, []).append(mem)
    assert sorted(by_cpu) == [0.25, 0.5, 1, 2, 4, 8, 16]
    assert (min(by_cpu[1]), max(by_cpu[1])) == (2 * GI, 8 * GI)
    assert (min(by_cpu[4]), max(by_cpu[4])) == (8 * GI, 30 * GI)
    assert tuple(sorted(SIZES)) == SIZES  # smallest first: rounding up takes the first fit
    assert size_for(16.5, 0) is None and size_for(1, 121 * GI) is None


# -- the spec field ---------------------------------------------------------------------


def test_launch_dedicated_reads_both_forms_and_round_trips() -> None:
    short = parse_spec("name: web\nimage: x\nlaunch: dedicated\n")
    assert short.launch is not None and short.launch.dedicated.pool is None
    named = parse_spec("name: web\nimage: x\nlaunch: {dedicated: {pool: burst}}\n")
    assert named.launch is not None and named.launch.dedicated.pool == "burst"
    assert parse_spec("name: web\nimage: x\n").launch is None  # the default: a node of the cluster


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ("launch: fargate\n", "launch: must be 'dedicated' or {dedicated: {pool: NAME}}"),
        ("launch: {dedicated: {pool: Big_Pool}}\n", "launch.dedicated.pool: must be a pool name"),
        ("launch: {dedicatd: {}}\n", "did you mean 'dedicated'"),
        ("launch: dedicated\nmode: global\n", "not mode: global"),
        (
            "launch: dedicated\nresources: {cpu: 17}\n",
            "larger than the largest dedicated size (16 vCPU 120 GiB)",
        ),
        (
            "launch: dedicated\nresources: {cpu: 1, memory: 121Gi}\n",
            "lower resources.cpu or resources.memory",
        ),
        ("launch: dedicated\nvolumes: [{name: data, target: /data}]\n", "remove volumes or launch"),
    ],
)
def test_bad_launch_is_refused_naming_the_field(extra: str, error: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec("name: web\nimage: x\n" + extra)
    assert error in str(err.value) and "launch" in str(err.value)


# -- the scheduler --------------------------------------------------------------------


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"


def node(name: str, cpu: float = 4.0, memory: int = 8 * GI, **labels: str) -> NodeInfo:
    return NodeInfo(name, "127.0.0.1", 7070, dict(labels), cpu, memory)


def dedicated_node(name: str, service: str) -> NodeInfo:
    return node(name, 0.5, GI, **{DEDICATED_LABEL: service, "shoal.pool": "burst"})


def snap(nodes: Iterable[NodeInfo], tasks: Iterable[Assignment] = ()) -> Snapshot:
    return Snapshot({n.id: n for n in nodes}, {(t.service, t.slot): t for t in tasks})


WEB = make_service("web", replicas=3, launch={"dedicated": {}}, resources={"cpu": 0.3, "memory": 600 * MI})
OTHER = make_service("other", replicas=6, resources={"cpu": 0.1, "memory": 64 * MI})
GLOBAL = make_service("agent", mode="global")


def test_a_dedicated_service_takes_only_its_own_nodes_one_replica_each() -> None:
    nodes = [
        node("n1"),
        dedicated_node("d1", "web"),
        dedicated_node("d2", "web"),
        dedicated_node("x1", "api"),
    ]
    plans = {p.service: p for p in schedule_all(snap(nodes), [WEB, OTHER, GLOBAL], 1, new_id=ids())}
    web = plans["web"]
    assert sorted(t.node for t in web.place) == ["d1", "d2"] and web.unplaced == [3]
    assert "launch: dedicated" not in web.reason and "d" not in {t.node[0] for t in plans["other"].place}
    assert {t.node for t in plans["other"].place} == {"n1"}  # room on d1/d2 and x1, never used
    assert {t.node for t in plans["agent"].place} == {"n1"} and not plans["agent"].pending_nodes


def test_a_replica_of_a_dedicated_service_on_an_ordinary_node_moves_to_its_own() -> None:
    nodes = [node("n1"), dedicated_node("d1", "web")]
    one = make_service("web", launch={"dedicated": {}})
    old = make_task(one, 1, "n1")
    [plan] = schedule_all(snap(nodes, [old]), [one], 1, new_id=ids())
    assert [(m.old.node, m.new.node, m.why) for m in plan.moves] == [("n1", "d1", "constraints")]


def test_an_ordinary_replica_is_never_kept_on_a_dedicated_node() -> None:
    nodes = [node("n1"), dedicated_node("d1", "web")]
    other = make_service("other")
    [plan] = schedule_all(snap(nodes, [make_task(other, 1, "d1")]), [other], 1, new_id=ids())
    assert [(m.old.node, m.new.node) for m in plan.moves] == [("d1", "n1")]


def test_the_pending_reason_names_the_dedicated_rule() -> None:
    [plan] = schedule_all(snap([dedicated_node("d1", "web")]), [OTHER], 1, new_id=ids())
    assert plan.unplaced and "excluded by launch: dedicated" in plan.reason, plan.reason


# -- asking for nodes and giving them back ----------------------------------------------


def pools(**over: object) -> dict:
    body = {
        "provider": {"command": ["/bin/true"]},
        "max": 5,
        "node": {"cpu": 2, "memory": "4Gi"},
        "idle_timeout": "10m",
        "join_timeout": "60s",
        **over,
    }
    return parse_pools({"pools": {"burst": body, "zz": {**body, "node": {"cpu": 8, "memory": "16Gi"}}}})


def web(count: int, pool: str = "", size: tuple[float, int] = (0.5, GI)) -> Demand:
    from leader.placement.requirements import requirements

    spec = make_service("web", launch={"dedicated": {"pool": pool} if pool else {}}).spec
    req = requirements(spec)
    return Demand("web", count, 300, 600 * MI, req.constraints, req.max_per_node, req.dedicated, size)


def rec(node: str, state: PoolState, service: str = "web", at: float = 0.0) -> PoolNode:
    return PoolNode("burst", node, state.value, at, changed_at=at, dedicated=service, cpu=0.5, memory=GI)


def test_each_waiting_replica_asks_for_a_node_of_its_size_in_the_first_pool() -> None:
    d = decide(pools(), [], ["n1"], ["n1"], [web(2)], now=100)
    assert d.dedicated == [DedicatedAsk("burst", "web", 0.5, GI)] * 2 and d.create == {}


def test_a_named_pool_is_the_only_one_asked_and_a_full_one_leaves_replicas_waiting() -> None:
    d = decide(pools(), [], [], [], [web(1, pool="zz")], now=100)
    assert d.dedicated == [DedicatedAsk("zz", "web", 0.5, GI)]
    d = decide(pools(max=1), [], [], [], [web(3, pool="burst")], now=100)
    assert len(d.dedicated) == 1 and d.waiting == {"web": 2}
    d = decide(pools(), [], [], [], [web(1, pool="gone")], now=100)
    assert d.dedicated == [] and d.waiting == {"web": 1}


def test_its_nodes_on_their_way_are_not_asked_for_again_by_a_next_leader() -> None:
    on_way = [rec("burst-a", PoolState.REQUESTED, at=90), rec("burst-b", PoolState.CREATED, at=95)]
    assert decide(pools(), on_way, [], [], [web(2)], now=100).dedicated == []
    assert len(decide(pools(), on_way, [], [], [web(3)], now=100).dedicated) == 1
    # another service's nodes are not its
    other = [rec("burst-c", PoolState.REQUESTED, service="api", at=90)]
    assert len(decide(pools(), other, [], [], [web(1)], now=100).dedicated) == 1


def test_ordinary_replicas_never_count_on_dedicated_nodes_on_their_way() -> None:
    on_way = [rec("burst-a", PoolState.REQUESTED, at=90)]
    ordinary = Demand("api", 1, 100, 64 * MI)
    d = decide(pools(), on_way, [], [], [ordinary], now=100)
    assert d.create == {"burst": 1} and d.dedicated == []


def test_a_dedicated_node_goes_back_at_once_when_its_task_goes() -> None:
    joined = [rec("burst-a", PoolState.JOINED, at=10), rec("burst-b", PoolState.JOINED, at=10)]
    # burst-a holds its task; burst-b's was stopped: no replica of web waits
    d = decide(pools(), joined, ["burst-a", "burst-b"], ["burst-a"], [], now=100)
    assert list(d.give_back) == ["burst-b"] and "its task is gone" in d.give_back["burst-b"]
    assert d.create == {} and d.dedicated == []


def test_an_empty_dedicated_node_is_kept_while_a_replica_of_its_service_waits() -> None:
    joined = [rec("burst-a", PoolState.JOINED, at=10)]
    d = decide(pools(), joined, ["burst-a"], [], [web(1)], now=100)
    assert d.give_back == {} and d.dedicated == []  # it is the node for it: not asked again
    later = decide(pools(), joined, ["burst-a"], [], [web(1)], now=200, empty_since={"burst-a": 100})
    assert "join_timeout" in later.give_back["burst-a"]


def test_dedicated_nodes_count_toward_max_never_toward_min() -> None:
    joined = [rec("burst-a", PoolState.JOINED, at=10)]
    d = decide(pools(min=1), joined, ["burst-a"], ["burst-a"], [], now=100)
    assert d.create["burst"] == 1  # min is ordinary capacity: a dedicated node is not it
    d = decide(pools(min=1, max=2), joined, ["burst-a"], ["burst-a"], [web(1, pool="burst")], now=100)
    assert d.dedicated == [DedicatedAsk("burst", "web", 0.5, GI)] and "burst" not in d.create  # max: 2
