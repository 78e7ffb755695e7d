"""Scheduling, wired: node settings from the API, pending reasons in etcd, simulated nodes,
`node ls` figures, the applier's parallel commit, and the records' JSON. On a MemoryStore."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict, fields, replace

import pytest
from click.testing import CliRunner

from leader.applier import Applier, Write, batches
from leader.loop import LeaderLoop
from leader.pending import PendingReasons
from leader.scheduler import Plan
from node.api.nodes import list_nodes
from node.api.nodespecs import NodeSpecWriter
from node.cli.nodes import parse_label_changes
from node.daemon.main import command as shoald
from node.dev.simcluster import SimAgents, SimCluster, sim_nodes
from node.model.domain import (
    Assignment,
    EndpointRecord,
    Event,
    NodeInfo,
    NodeSpec,
    PendingRecord,
    RolloutRecord,
    ServiceRecord,
    TaskStatus,
)
from node.model.errors import InvalidArgument, NotFound
from node.model.keys import Keys
from node.model.spec import spec_to_dict
from node.store import KV, Fenced, Put
from node.store.memory import MemoryStore
from node.telemetry.events import EventLog
from tests.factories import make_service
from tests.helpers import mirrors_caught_up, wait_until

KEYS = Keys()
GIB = 2**30


def node(name: str, memory: int = 4 * GIB, cpu: float = 2.0, **labels: str) -> NodeInfo:
    return NodeInfo(name, "127.0.0.1", 7070, dict(labels), cpu, memory)


# -- node settings through the API ------------------------------------------------------


async def written(store: MemoryStore) -> list[str]:
    kvs, _ = await store.range(KEYS.nodespecs)
    return [kv.key for kv in kvs]


async def test_drain_pause_activate_write_nodespec_and_say_when_nothing_changed() -> None:
    store = MemoryStore()
    await store.put(KEYS.node("n1"), node("n1", zone="a").to_json())
    writer = NodeSpecWriter(store, KEYS, "api-node")
    spec, labels, changed = await writer.set_availability("n1", "drain")
    assert (spec.availability, labels, changed, spec.updated_by) == ("drain", {"zone": "a"}, True, "api-node")
    kv = await store.get(KEYS.nodespec("n1"))
    assert kv is not None and NodeSpec.from_json(kv.value).availability == "drain"
    revision = (await store.range("/"))[1]
    assert (await writer.set_availability("n1", "drain"))[2] is False
    assert (await store.range("/"))[1] == revision, "an unchanged setting writes nothing"
    assert (await writer.set_availability("n1", "pause"))[0].availability == "pause"
    assert (await writer.set_availability("n1", "active"))[0].availability == "active"


async def test_labels_overlay_and_remove_even_own_labels() -> None:
    store = MemoryStore()
    await store.put(KEYS.node("n1"), node("n1", zone="a", disk="ssd").to_json())
    writer = NodeSpecWriter(store, KEYS, "n1")
    _, labels, _ = await writer.label("n1", {"zone": "b", "rack": "r1"}, ["disk"])
    assert labels == {"zone": "b", "rack": "r1"}
    _, labels, _ = await writer.label("n1", {}, ["rack"])
    assert labels == {"zone": "b"}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (("set_availability", "n1", "drained"), "availability"),
        (("set_availability", "n1", ""), "availability"),
        (("label", "n1", {"bad key": "x"}, []), "labels"),
        (("label", "n1", {"-zone": "x"}, []), "labels"),
        (("label", "n1", {"zone": " a"}, []), "labels.zone"),
        (("label", "n1", {"zone": "a\n"}, []), "labels.zone"),
        (("label", "n1", {"zone": "x" * 300}, []), "labels.zone"),
        (("label", "n1", {"zone": "a"}, ["zone"]), "labels.zone"),
        (("label", "n1", {}, []), "labels"),
    ],
)
async def test_bad_settings_are_invalid_argument_naming_the_field_and_write_nothing(
    call: tuple[object, ...], field: str
) -> None:
    store = MemoryStore()
    await store.put(KEYS.node("n1"), node("n1").to_json())
    writer = NodeSpecWriter(store, KEYS, "n1")
    name, *args = call
    with pytest.raises(InvalidArgument) as err:
        await getattr(writer, str(name))(*args)
    assert str(err.value).startswith(field + ":"), err.value
    assert await written(store) == []


async def test_an_unknown_node_is_not_found_and_a_down_node_with_settings_is_known() -> None:
    store = MemoryStore()
    writer = NodeSpecWriter(store, KEYS, "n1")
    with pytest.raises(NotFound, match="node 'ghost' not found"):
        await writer.set_availability("ghost", "drain")
    await store.put(KEYS.nodespec("gone"), NodeSpec(availability="pause").to_json())
    assert (await writer.set_availability("gone", "drain"))[0].availability == "drain"


def test_the_cli_reads_label_changes() -> None:
    assert parse_label_changes(("zone=a", "disk-", "empty=")) == ({"zone": "a", "empty": ""}, ["disk"])
    with pytest.raises(Exception, match="key=value"):
        parse_label_changes(("zone",))


def test_shoald_memory_takes_units_and_names_a_bad_one() -> None:
    result = CliRunner().invoke(shoald, ["--memory", "8GB"])
    assert result.exit_code == 1 and "memory: cannot use '8GB'" in result.output


# -- node ls figures --------------------------------------------------------------------


async def test_node_list_shows_reserved_availability_effective_labels_and_simulation() -> None:
    store = MemoryStore()
    await store.put(KEYS.node("n1"), node("n1", zone="a").to_json())
    sim = replace(node("sim-1"), simulated=True)
    await store.put(KEYS.node("sim-1"), sim.to_json())
    await store.put(KEYS.nodespec("n1"), NodeSpec(availability="drain", labels={"zone": "b"}).to_json())
    for slot, (cpu, memory) in enumerate([(0.5, GIB), (0.25, GIB // 2)], start=1):
        task = Assignment(f"t{slot}", "web", slot, "n1", 1, 1, cpu=cpu, memory=memory)
        await store.put(KEYS.task("web", slot), task.to_json())
    listed = {n.id: n for n in (await list_nodes(store, KEYS, None)).nodes}
    n1 = listed["n1"]
    assert (n1.reserved_cpu, n1.reserved_memory, n1.tasks) == (0.75, GIB + GIB // 2, 2)
    assert (n1.availability, dict(n1.labels), dict(n1.own_labels)) == ("drain", {"zone": "b"}, {"zone": "a"})
    assert not n1.simulated and listed["sim-1"].simulated and listed["sim-1"].availability == "active"


async def test_node_list_carries_the_kernel_path_and_an_older_node_reports_none() -> None:
    store = MemoryStore()
    fell = replace(node("n1"), kernel_path="fallback", kernel_reason="/usr/sbin/nft is not found")
    await store.put(KEYS.node("n1"), fell.to_json())
    old = {k: v for k, v in json.loads(node("n2").to_json()).items() if not k.startswith("kernel_")}
    await store.put(KEYS.node("n2"), json.dumps(old).encode())  # written by a node older than the field
    listed = {n.id: n for n in (await list_nodes(store, KEYS, None)).nodes}
    n1, n2 = listed["n1"], listed["n2"]
    assert (n1.kernel_path, n1.kernel_reason) == ("fallback", "/usr/sbin/nft is not found")
    assert (n2.kernel_path, n2.kernel_reason) == ("", "")


# -- pending reasons --------------------------------------------------------------------


class Quiet(EventLog):
    def emit(self, kind: str, message: str, service: str = "", task: str = "", cause: str = "") -> None:
        pass


@pytest.fixture
async def loop() -> AsyncIterator[tuple[MemoryStore, LeaderLoop]]:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    leader = LeaderLoop(store, KEYS, epoch, Quiet(store, KEYS, "n1"))
    caches = [
        asyncio.create_task(c.run()) for c in (leader.services, leader.nodes, leader.tasks, leader.nodespecs)
    ]
    try:
        yield store, leader
    finally:
        for task in caches:
            task.cancel()
        await asyncio.gather(*caches, return_exceptions=True)


async def reconcile(store: MemoryStore, leader: LeaderLoop) -> None:
    await mirrors_caught_up(store, (leader.services, leader.nodes, leader.tasks, leader.nodespecs))
    await leader.reconcile()


async def pending(store: MemoryStore, service: str) -> PendingRecord | None:
    kv = await store.get(KEYS.pending(service))
    return PendingRecord.from_json(kv.value) if kv is not None else None


async def test_the_leader_publishes_a_pending_reason_once_and_deletes_it_when_placed(
    loop: tuple[MemoryStore, LeaderLoop],
) -> None:
    store, leader = loop
    await store.put(KEYS.node("n1"), node("n1", memory=GIB).to_json())
    await store.put(
        KEYS.service("big"), make_service("big", replicas=2, resources={"memory": 2 * GIB}).to_json()
    )
    await reconcile(store, leader)
    record = await pending(store, "big")
    assert record is not None and record.slots == [1, 2] and record.count == 2
    assert record.reason == "0/1 nodes available: 1 lack memory (need 2.0 GiB, most free 1.0 GiB)"
    kv = await store.get(KEYS.pending("big"))
    await reconcile(store, leader)
    assert await store.get(KEYS.pending("big")) == kv, "an unchanged reason is not rewritten"
    await store.put(KEYS.node("n2"), node("n2", memory=8 * GIB).to_json())
    await reconcile(store, leader)
    assert await pending(store, "big") is None


async def test_a_new_leader_removes_a_stale_pending_key_and_a_deposed_one_cannot_write() -> None:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    await store.put(KEYS.pending("gone"), PendingRecord("gone", "old reason", [1]).to_json())
    reasons = PendingReasons(store, KEYS, epoch)
    waiting = Plan("web", unplaced=[3], reason="0/1 nodes available: 1 drained")
    assert await reasons.publish([waiting, Plan("ok")], now=5.0) == 2
    assert await store.get(KEYS.pending("gone")) is None
    assert await pending(store, "web") == PendingRecord("web", waiting.reason, [3], [], 5.0)
    deposed = PendingReasons(store, KEYS, epoch - 1)
    with pytest.raises(Fenced):
        await deposed.publish([Plan("other", unplaced=[1], reason="x")])


async def test_a_namesakes_pending_reason_starts_anew_and_is_not_shown_for_the_new_service() -> None:
    """`web` removed and made again waits for the same reason: its `since` is its own,
    and until the leader rewrites the key, readers do not show the removed one's reason."""
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    reasons = PendingReasons(store, KEYS, epoch)
    reason = "0/1 nodes available: 1 drained"
    await reasons.publish([Plan("web", unplaced=[1], reason=reason, uid="old")], now=5.0)
    old = await pending(store, "web")
    assert old is not None and old.since == 5.0 and old.uid == "old"
    assert await reasons.publish([Plan("web", unplaced=[1], reason=reason, uid="old")], now=9.0) == 0
    assert await reasons.publish([Plan("web", unplaced=[1], reason=reason, uid="new")], now=9.0) == 1
    new = await pending(store, "web")
    assert new == PendingRecord("web", reason, [1], [], 9.0, "new")
    assert old.of("old") and not old.of("new") and PendingRecord("web", reason).of("new")


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b'{"service": "web", "reason": "x", "slots": 5}',  # tuple(5): TypeError
        b'{"service": "other", "reason": "x"}',  # another's: its key was never deleted
    ],
    ids=["not-json", "slots", "other-service"],
)
async def test_a_pending_reason_that_cannot_be_read_is_written_anew_and_the_others_go_on(
    bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Written around the leader, it failed `publish` before its commit: every pass wrote
    nothing. The leader is the key's only writer and derives it wholly from its plan: it
    writes the record anew, or deletes it when the service waits for nothing."""
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    await store.put(KEYS.pending("web"), bad)
    await store.put(KEYS.pending("gone"), bad)
    reasons = PendingReasons(store, KEYS, epoch)
    waiting = Plan("web", unplaced=[3], reason="0/1 nodes available: 1 drained")
    api = Plan("api", unplaced=[1], reason="0/1 nodes available: 1 drained")
    assert await reasons.publish([waiting, api], now=5.0) == 3
    assert await pending(store, "web") == PendingRecord("web", waiting.reason, [3], [], 5.0)
    assert await pending(store, "api") == PendingRecord("api", api.reason, [1], [], 5.0)
    assert await store.get(KEYS.pending("gone")) is None
    said = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(said) == 2, said


async def test_a_pass_with_a_pending_reason_that_cannot_be_read_still_places_tasks(
    loop: tuple[MemoryStore, LeaderLoop],
) -> None:
    store, leader = loop
    await store.put(KEYS.pending("gone"), b"not json")
    await store.put(KEYS.node("n1"), node("n1").to_json())
    await store.put(KEYS.service("web"), make_service("web", replicas=2).to_json())
    await reconcile(store, leader)
    kvs, _ = await store.range(KEYS.tasks)
    assert len(kvs) == 2
    assert await store.get(KEYS.pending("gone")) is None


# -- simulated nodes --------------------------------------------------------------------


async def test_simulated_agents_run_handoffs_and_stop_what_is_gone() -> None:
    agents = SimAgents(KEYS, sim_nodes(2, 4.0, 8 * GIB))
    agents.lease = 7
    a, b = "sim-00001", "sim-00002"
    old = Assignment("old", "web", 1, a, 1, 1)
    new = Assignment("new", "web", 1, b, 2, 1, handoff=asdict(old))
    store = MemoryStore()
    await store.put(KEYS.task("web", 1), old.to_json())
    ops = await agents.changed([(await store.range(KEYS.tasks))[0][0]])
    assert [(type(o).__name__, o.key) for o in ops] == [("Put", KEYS.status("old"))]
    put = ops[0]
    assert isinstance(put, Put) and put.lease == 7
    status = TaskStatus.from_json(put.value)
    assert (status.state, status.host_port, status.node) == ("running", 0, a)
    await store.put(KEYS.task("web", 1), new.to_json())
    ops = await agents.changed([(await store.range(KEYS.tasks))[0][0]])
    assert [o.key for o in ops] == [KEYS.status("new")], "the handed-off task keeps running"
    await store.put(KEYS.task("web", 1), replace(new, handoff={}).to_json())
    ops = await agents.changed([(await store.range(KEYS.tasks))[0][0]])
    assert [(type(o).__name__, o.key) for o in ops] == [("Delete", KEYS.status("old"))]
    assert agents.running == 1 and not agents.runtimes[a].containers
    ops = await agents.removed([KEYS.task("web", 1)])
    assert [(type(o).__name__, o.key) for o in ops] == [("Delete", KEYS.status("new"))]
    assert agents.running == 0 and not agents.slots
    on_real = Assignment("t", "web", 2, "real-node", 1, 1)
    assert await agents.changed([KV(KEYS.task("web", 2), on_real.to_json(), 1, 1, 1)]) == []


async def test_a_simcluster_registers_its_nodes_on_one_lease_and_reports_their_tasks() -> None:
    store = MemoryStore()
    nodes = sim_nodes(250, 8.0, 32 * GIB, {"disk": "ssd"}, ["a", "b"])
    sim = SimCluster(store, KEYS, nodes)
    runner = asyncio.create_task(sim.run())
    try:
        await wait_until(sim.registered.is_set, 5, message="registered")
        kvs, _ = await store.range(KEYS.nodes)
        infos = [NodeInfo.from_json(kv.value) for kv in kvs]
        assert len(infos) == 250 and len({kv.lease for kv in kvs}) == 1
        assert all(i.simulated and i.labels["simulated"] == "true" for i in infos)
        assert {i.labels["zone"] for i in infos} == {"a", "b"} and infos[0].memory == 32 * GIB
        for slot in (1, 2):
            task = Assignment(f"t{slot}", "web", slot, nodes[slot].id, 1, 1)
            await store.put(KEYS.task("web", slot), task.to_json())

        async def statuses() -> int:
            return len((await store.range(KEYS.status_all))[0])

        async def both() -> bool:
            return await statuses() == 2

        await wait_until(both, 5, message="both tasks reported running")
        assert (await store.range(KEYS.endpoints_all))[0] == [], "a simulated replica is never an endpoint"
        await store.delete(KEYS.task("web", 1))

        async def one_left() -> bool:
            return await statuses() == 1

        await wait_until(one_left, 5, message="status of the removed task deleted")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    await sim.close()
    assert (await store.range(KEYS.nodes))[0] == [], "the nodes vanish with their lease"


# -- the applier and the records --------------------------------------------------------


async def test_a_parallel_commit_counts_stale_batches_and_raises_fenced_itself() -> None:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b"{}")
    applier = Applier(store, KEYS, epoch)
    writes = [Write(Put(KEYS.task("web", i), b"{}"), 0) for i in range(1, 1001)]
    await store.put(KEYS.task("web", 500), b"{}")  # changed behind the plan's back: that batch is stale
    stale, revision = await applier.commit(writes)
    assert stale == 1 and revision > epoch
    assert len((await store.range(KEYS.tasks))[0]) == 1000 - 100 + 1
    with pytest.raises(Fenced):
        await Applier(store, KEYS, epoch + 1).commit(writes)


@pytest.mark.parametrize(
    "record",
    [
        NodeInfo("n1", "a", 1, {"z": "a"}, 1.5, 3, simulated=True),
        NodeSpec("drain", {"z": None}),
        ServiceRecord("web", 2, {"name": "web", "image": "i", "ports": [{"container": 80}]}),
        Assignment("t", "web", 1, "n1", 1, 1, handoff={"task_id": "o", "labels": {"a": 1}}),
        TaskStatus("t", "web", 1, "n1", "running"),
        EndpointRecord("t", "web", "n1", "a", 1, 2, {"2": 1}),
        RolloutRecord("web", 1, 2, "h", batch={"1": 2.0}, failed=[1]),
        PendingRecord("web", "why", [1], ["n2"]),
        Event(1.0, "k", "n1", "m"),
    ],
)
def test_records_serialise_as_asdict_did_and_read_back(record: object) -> None:
    data = {f.name: getattr(record, f.name) for f in fields(record)}  # type: ignore[arg-type]
    if isinstance(record, ServiceRecord):
        data["spec"] = spec_to_dict(record.spec)  # a typed spec is stored as its JSON
    expected = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert record.to_json() == expected  # type: ignore[attr-defined]
    assert type(record).from_json(expected + b"") == record  # type: ignore[attr-defined]
    with_unknown = json.dumps({**json.loads(expected), "added_later": 1})
    assert type(record).from_json(with_unknown) == record  # type: ignore[attr-defined]


def _w(group: str, i: int, lead: bool = False) -> Write:
    return Write(Put(KEYS.task(group or "loose", i), b"{}"), 0, group, lead)


def test_a_group_is_whole_in_one_batch_when_it_fits() -> None:
    writes = [_w("", i) for i in range(30)] + [_w(f"s{g}", i) for g in range(6) for i in range(30)]
    writes.append(_w("s3", 99, lead=True))  # a rollout record, last in the list as the loop puts it
    first, then = batches(writes, 100)
    assert first == []
    for g in range(6):
        holding = [b for b in then if any(w.group == f"s{g}" for w in b)]
        assert len(holding) == 1, f"s{g} split over {len(holding)} batches"
    assert all(len(b) <= 100 for b in then)
    assert sorted(id(w) for b in then for w in b) == sorted(id(w) for w in writes), "each write once"


def test_a_group_too_big_for_one_batch_sends_its_lead_batch_first() -> None:
    writes = [_w("big", i) for i in range(250)] + [_w("big", 999, lead=True), _w("small", 1)]
    first, then = batches(writes, 100)
    assert len(first) == 1 and first[0][0].lead and all(w.group == "big" for w in first[0])
    assert sum(len(b) for b in first + then) == len(writes)
    assert all(len(b) <= 100 for b in first + then)


async def test_a_rollout_record_and_its_tasks_commit_together_or_not_at_all() -> None:
    """The record's transaction fails (stale here; a crash or an etcd error likewise): the
    tasks it lets the scheduler update are not written either, however many other
    writes the pass has (split in 100s before: the tasks could land without the record)."""
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b"{}")
    record_key = KEYS.rollout("web")
    await store.put(record_key, b"{}")  # changed behind the plan's back (the plan saw it absent)
    others = [Write(Put(KEYS.task("api", i), b"{}"), 0, "api") for i in range(1, 99)]
    mine = [Write(Put(KEYS.task("web", i), b"{}"), 0, "web") for i in range(1, 4)]
    record = Write(Put(record_key, b'{"state": "updating"}'), 0, "web", lead=True)
    stale, _ = await Applier(store, KEYS, epoch).commit([*others, *mine, record])
    assert stale == 1
    assert (await store.range(KEYS.service_tasks("web")))[0] == [], "no task without its record"
    assert len((await store.range(KEYS.service_tasks("api")))[0]) == 98


async def test_a_split_group_whose_lead_batch_fails_sends_none_of_its_others() -> None:
    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b"{}")
    await store.put(KEYS.rollout("web"), b"{}")
    tasks = [Write(Put(KEYS.task("web", i), b"{}"), 0, "web") for i in range(1, 251)]
    record = Write(Put(KEYS.rollout("web"), b"{}"), 0, "web", lead=True)
    stale, _ = await Applier(store, KEYS, epoch).commit([*tasks, record])
    assert stale == 3  # the lead batch, and the two it held back
    assert (await store.range(KEYS.service_tasks("web")))[0] == []


async def test_the_leaders_sweep_of_a_removed_services_tasks_keeps_a_claim_being_removed() -> None:
    """The tasks of a service removed under the leader are unassigned and its volume claims
    deleted, but not one `volume rm` marked `removing`: its agent removes the Docker
    volume, then the claim (deleted here, the volume stayed on its node, listed nowhere)."""
    from dataclasses import replace as copy

    from node.model.domain import Assignment, VolumeClaim

    store = MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    leader = LeaderLoop(store, KEYS, epoch, Quiet(store, KEYS, "n1"))
    mirrors = (leader.services, leader.nodes, leader.tasks, leader.nodespecs, leader.volumes)
    caches = [asyncio.create_task(c.run()) for c in mirrors]
    try:
        await store.put(KEYS.node("n1"), node("n1").to_json())
        gone = make_service("gone", replicas=2)
        for slot in (1, 2):
            task = Assignment(f"t{slot}", "gone", slot, "n1", 1, 1, epoch, uid=gone.uid)
            await store.put(KEYS.task("gone", slot), task.to_json())
        kept = VolumeClaim("gone", 2, "data", "n1", "t2", gone.uid, 1.0)
        await store.put(KEYS.volume("gone", 1, "data"), copy(kept, slot=1, claim="t1").to_json())
        await store.put(KEYS.volume("gone", 2, "data"), copy(kept, removing=True).to_json())
        await mirrors_caught_up(store, mirrors)
        await leader.reconcile()
        assert (await store.range(KEYS.service_tasks("gone")))[0] == []
        kvs, _ = await store.range(KEYS.service_volumes("gone"))
        assert [kv.key for kv in kvs] == [KEYS.volume("gone", 2, "data")]
    finally:
        for c in caches:
            c.cancel()
