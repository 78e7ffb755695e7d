"""Hypothesis properties of `leader.scheduler.schedule_all` over random clusters and services.

A cluster state is always one the scheduler itself produced (a first pass from
nothing), then disturbed the way a cluster is: nodes die, get drained or paused,
change labels; services scale, change image or placement. The second pass must:
- never reserve more cpu or memory than a node has;
- never put a task on a dead, drained or constraint-excluded node (nor a new one on a
  paused node: only an update in place of one it keeps);
- keep exactly the slots 1..replicas accounted for (kept, placed, or pending with a reason);
- run a global service exactly once on every eligible node with room;
and from nothing, spread evenly over nodes or label values when capacity allows, and
binpack onto no more nodes than first-fit-decreasing does.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from leader.placement import pick
from leader.placement.fit import FitTree
from leader.placement.requirements import capacity_millicores, requirements, reservation_millicores
from leader.scheduler import Plan, Snapshot, schedule_all
from node.model.constraints import parse_constraint
from node.model.domain import Assignment, NodeInfo, ServiceRecord
from node.model.spec import ServiceSpec, spec_to_dict
from tests.factories import make_spec

GIB, MIB = 2**30, 2**20
CONSTRAINTS = [
    "node.labels.zone == a",
    "node.labels.zone != b",
    "node.labels.disk == ssd",
    "node.labels.disk != hdd",
    "node.id != n01",
    "node.id == n02",
]
SETTINGS = settings(max_examples=60, deadline=None)
SMALLS = st.sampled_from([0, pick.SMALL])


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"t{next(counter)}"


@st.composite
def nodes(draw: st.DrawFn, count: tuple[int, int] = (1, 10)) -> dict[str, NodeInfo]:
    out = {}
    for i in range(draw(st.integers(*count))):
        labels = {}
        if draw(st.integers(0, 5)):  # now and then a node without a zone
            labels["zone"] = draw(st.sampled_from("abc"))
        labels["disk"] = draw(st.sampled_from(["ssd", "hdd"]))
        cpu = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]))
        memory = draw(st.sampled_from([512 * MIB, 1 * GIB, 2 * GIB, 4 * GIB]))
        node = f"n{i:02d}"
        out[node] = NodeInfo(node, "127.0.0.1", 7070, labels, cpu, memory)
    return out


@st.composite
def specs(
    draw: st.DrawFn, name: str, kinds: tuple[str, ...] = ("spread", "binpack", "global")
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if draw(st.integers(0, 4)):
        cpu = draw(st.sampled_from([0.1, 0.25, 0.3, 0.5, 1.0, 1.5]))
        memory = draw(st.sampled_from([64 * MIB, 128 * MIB, 300 * MIB, 512 * MIB, 1 * GIB]))
        extra["resources"] = {"cpu": cpu, "memory": memory}
    kind = draw(st.sampled_from(kinds))
    placement: dict[str, Any] = {}
    if draw(st.booleans()):
        placement["constraints"] = draw(st.lists(st.sampled_from(CONSTRAINTS), max_size=2, unique=True))
    if kind != "global":
        placement["strategy"] = kind
        if draw(st.integers(0, 2)) == 0:
            placement["spread"] = "node.labels.zone"
        if draw(st.integers(0, 3)) == 0:
            placement["max_per_node"] = draw(st.integers(1, 3))
    else:
        extra["mode"] = "global"
    if placement:
        extra["placement"] = placement
    return make_spec(name, draw(st.integers(0, 25)), **extra)


@st.composite
def services(
    draw: st.DrawFn, kinds: tuple[str, ...] = ("spread", "binpack", "global")
) -> list[ServiceRecord]:
    names = [f"s{i}" for i in range(draw(st.integers(1, 4)))]
    return [ServiceRecord(n, 1, draw(specs(n, kinds))) for n in names]


def run(snapshot: Snapshot, records: list[ServiceRecord], small: int = pick.SMALL) -> list[Plan]:
    """Plan; `small=0` makes even tiny clusters go through the shared load heaps and the
    fit tree, the paths large clusters take."""
    default, pick.SMALL = pick.SMALL, small
    try:
        return schedule_all(snapshot, records, epoch=3, now=1.0, new_id=ids())
    finally:
        pick.SMALL = default


def result(snapshot: Snapshot, plans: list[Plan]) -> dict[tuple[str, int], Assignment]:
    tasks = dict(snapshot.tasks)
    for plan in plans:
        for t in plan.stop:
            del tasks[(t.service, t.slot)]
        for t in plan.place:
            tasks[(t.service, t.slot)] = t
    return tasks


@st.composite
def disturbed(draw: st.DrawFn) -> tuple[Snapshot, list[ServiceRecord]]:
    """A state the scheduler made, then nodes and services changed under it."""
    cluster = draw(nodes())
    records = draw(services())
    first = Snapshot(cluster, {})
    tasks = result(first, run(first, records, draw(SMALLS)))
    alive = {n: info for n, info in cluster.items() if draw(st.integers(0, 4))}
    for node in list(alive):
        if draw(st.integers(0, 4)) == 0:
            alive[node] = replace(
                alive[node], labels={**alive[node].labels, "zone": draw(st.sampled_from("abc"))}
            )
    availability = {
        n: draw(st.sampled_from(["drain", "pause"])) for n in alive if draw(st.integers(0, 4)) == 0
    }
    changed = []
    for record in records:
        spec = spec_to_dict(record.spec)
        what = draw(st.sampled_from(["same", "scale", "image", "placement"]))
        if what == "scale":
            spec["replicas"] = draw(st.integers(0, 25))
        elif what == "image":
            spec["image"] = "web:2"
        elif what == "placement":
            spec = {**draw(specs(record.name)), "image": spec["image"]}
        changed.append(ServiceRecord(record.name, 2, spec))
    return Snapshot(alive, tasks, 0, availability), changed


def reserved(tasks: list[Assignment]) -> tuple[Counter[str], Counter[str]]:
    cpu: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    for t in tasks:
        cpu[t.node] += reservation_millicores(t.cpu)
        mem[t.node] += t.memory
    return cpu, mem


def eligible(snapshot: Snapshot, spec: ServiceSpec) -> set[str]:
    constraints = [parse_constraint(c) for c in (spec.placement.constraints if spec.placement else [])]
    return {
        n
        for n, info in snapshot.nodes.items()
        if snapshot.availability.get(n, "active") == "active"
        and all(c.matches(n, info.labels) for c in constraints)
    }


def fits_one_more(snapshot: Snapshot, tasks: list[Assignment], node: str, spec: ServiceSpec) -> bool:
    req = requirements(spec)
    cpu, mem = reserved(tasks)
    info = snapshot.nodes[node]
    mine = sum(1 for t in tasks if t.node == node and t.service == spec.name)
    room_cpu = capacity_millicores(info.cpu) - cpu[node] >= req.cpu
    return room_cpu and info.memory - mem[node] >= req.memory and mine < req.max_per_node


# -- every state --------------------------------------------------------------------------


@SETTINGS
@given(disturbed(), SMALLS)
def test_never_over_capacity_nor_on_a_dead_drained_or_excluded_node(
    case: tuple[Snapshot, list[ServiceRecord]], small: int
) -> None:
    snapshot, records = case
    plans = run(snapshot, records, small)
    running = [t for p in plans for t in p.keep + p.place]
    cpu, mem = reserved(running)
    for node, info in snapshot.nodes.items():
        assert cpu[node] <= capacity_millicores(info.cpu), node
        assert mem[node] <= info.memory, node
    specs_by_name = {r.name: r.spec for r in records}
    for plan in plans:
        spec = specs_by_name[plan.service]
        constraints = [parse_constraint(c) for c in (spec.placement.constraints if spec.placement else [])]
        for t in plan.keep + plan.place:
            assert t.node in snapshot.nodes, "on a dead node"
            assert snapshot.availability.get(t.node) != "drain", "on a drained node"
            assert all(c.matches(t.node, snapshot.nodes[t.node].labels) for c in constraints), "excluded"
        in_place = {m.new.task_id for m in plan.moves if m.why == "update" and m.old.node == m.new.node}
        for t in plan.place:
            if t.task_id not in in_place:  # a paused node keeps its replicas, updated in place
                assert snapshot.availability.get(t.node, "active") == "active", "new task on a paused node"


@SETTINGS
@given(disturbed(), SMALLS)
def test_every_slot_is_kept_placed_or_pending_with_a_reason(
    case: tuple[Snapshot, list[ServiceRecord]], small: int
) -> None:
    snapshot, records = case
    for record, plan in zip(records, run(snapshot, records, small), strict=True):
        if plan.pending:
            assert plan.reason
        if record.spec.mode == "global":
            continue
        slots = sorted([t.slot for t in plan.keep + plan.place] + plan.unplaced)
        assert slots == list(range(1, record.replicas + 1))
        current = {slot for (svc, slot) in snapshot.tasks if svc == record.name}
        assert {t.slot for t in plan.stop} == {s for s in current if s > record.replicas}
        limit = record.spec.placement.max_per_node if record.spec.placement else None
        if limit:
            assert max(Counter(t.node for t in plan.keep + plan.place).values(), default=0) <= limit


@SETTINGS
@given(disturbed(), SMALLS)
def test_global_runs_once_on_every_eligible_node_with_room(
    case: tuple[Snapshot, list[ServiceRecord]], small: int
) -> None:
    snapshot, records = case
    plans = run(snapshot, records, small)
    running = [t for p in plans for t in p.keep + p.place]
    for record, plan in zip(records, plans, strict=True):
        if record.spec.mode != "global":
            continue
        on = Counter(t.node for t in plan.keep + plan.place)
        assert all(n == 1 for n in on.values()), "two replicas on one node"
        for node in eligible(snapshot, record.spec):
            if node in plan.pending_nodes:
                assert not on[node] and not fits_one_more(snapshot, running, node, record.spec)
            else:
                assert on[node] == 1, node
        assert set(on) - eligible(snapshot, record.spec) <= {
            n for n, a in snapshot.availability.items() if a == "pause"
        }


@SETTINGS
@given(disturbed(), SMALLS)
def test_scheduling_the_result_again_changes_nothing(
    case: tuple[Snapshot, list[ServiceRecord]], small: int
) -> None:
    snapshot, records = case
    after = Snapshot(
        snapshot.nodes, result(snapshot, run(snapshot, records, small)), 0, snapshot.availability
    )
    for plan in run(after, records, small):
        assert plan.empty, (plan.service, plan.place, plan.stop)


# -- from nothing -------------------------------------------------------------------------


@SETTINGS
@given(nodes(), services(kinds=("spread",)), SMALLS)
def test_spread_is_even_over_nodes_and_label_values_when_capacity_allows(
    cluster: dict[str, NodeInfo], records: list[ServiceRecord], small: int
) -> None:
    snapshot = Snapshot(cluster, {})
    plans = run(snapshot, records, small)
    running = [t for p in plans for t in p.place]
    for record, plan in zip(records, plans, strict=True):
        spec = record.spec
        nodes_ok = eligible(snapshot, spec)
        label = spec.placement.spread if spec.placement else None
        group: Callable[[str], Any] = (lambda n: cluster[n].labels.get("zone")) if label else (lambda n: n)
        count: Counter[Any] = Counter({group(n): 0 for n in nodes_ok})
        count.update(group(t.node) for t in plan.place)
        room = defaultdict(bool)
        for n in nodes_ok:
            room[group(n)] |= fits_one_more(snapshot, running, n, spec)
        for a, b in itertools.permutations(count, 2):
            if count[a] >= count[b] + 2:
                assert not room[b], (record.name, dict(count), b)


def ffd_nodes(cluster: dict[str, NodeInfo], records: list[ServiceRecord]) -> tuple[int, int]:
    """First-fit-decreasing: items largest first, nodes largest first; (nodes used, items placed)."""
    order = sorted(cluster, key=lambda n: (-cluster[n].memory, -capacity_millicores(cluster[n].cpu), n))
    free = {n: [capacity_millicores(cluster[n].cpu), cluster[n].memory] for n in order}
    top_cpu = max(capacity_millicores(i.cpu) for i in cluster.values()) or 1
    top_mem = max(i.memory for i in cluster.values()) or 1
    items = []
    for r in records:
        req = requirements(r.spec)
        items += [((-max(req.cpu / top_cpu, req.memory / top_mem), r.name), req.cpu, req.memory)] * r.replicas
    used, placed = set(), 0
    for _, cpu, mem in sorted(items):
        for n in order:
            if free[n][0] >= cpu and free[n][1] >= mem:
                free[n][0] -= cpu
                free[n][1] -= mem
                used.add(n)
                placed += 1
                break
    return len(used), placed


@SETTINGS
@given(
    nodes(),
    st.lists(st.tuples(st.integers(1, 30), st.sampled_from(range(6))), min_size=1, max_size=4),
    SMALLS,
)
def test_binpack_uses_no_more_nodes_than_first_fit_decreasing(
    cluster: dict[str, NodeInfo], shapes: list[tuple[int, int]], small: int
) -> None:
    sizes = [
        (0.1, 64 * MIB),
        (0.25, 256 * MIB),
        (0.5, 128 * MIB),
        (1.0, 512 * MIB),
        (0.3, 1 * GIB),
        (2.0, 1 * GIB),
    ]
    records = []
    for i, (replicas, size) in enumerate(shapes):
        cpu, memory = sizes[size]
        spec = make_spec(
            f"s{i}", replicas, resources={"cpu": cpu, "memory": memory}, placement={"strategy": "binpack"}
        )
        records.append(ServiceRecord(f"s{i}", 1, spec))
    plans = run(Snapshot(cluster, {}), records, small)
    used = len({t.node for p in plans for t in p.place})
    placed = sum(len(p.place) for p in plans)
    ffd_used, ffd_placed = ffd_nodes(cluster, records)
    assert placed >= ffd_placed
    assert used <= ffd_used


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-1, 8), st.integers(-1, 8)), min_size=1, max_size=40),
    st.lists(st.tuples(st.integers(0, 45), st.integers(0, 9), st.integers(0, 9)), max_size=30),
)
def test_the_fit_tree_finds_the_first_node_with_room(
    free: list[tuple[int, int]], queries: list[tuple[int, int, int]]
) -> None:
    state = [list(f) for f in free]
    tree = FitTree(list(range(len(free))), lambda i: state[i][0], lambda i: state[i][1])
    for n, (lo, cpu, mem) in enumerate(queries):
        expected = next((p for p in range(lo, len(state)) if state[p][0] >= cpu and state[p][1] >= mem), -1)
        assert tree.first_fit(lo, cpu, mem) == expected
        if expected >= 0 and n % 2:  # take some room, as a placement does
            state[expected][0] -= cpu
            state[expected][1] -= mem
            tree.dirty.add(expected)
            tree.flush()
