"""Volumes (issue 13, item 5): spec checks, the scheduler's pins (stickiness, pending
reasons, reschedule: true, claims repaired after a crash), stop-first updates, and the
agent's side (claims before starts, never two containers on one slot's volume)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from leader.applier import writes_for
from leader.rollout import update_policy
from leader.scheduler import Plan, Snapshot, schedule
from leader.updates import with_handoffs
from node.agent.containers import container_spec
from node.agent.volumes import Volumes, blocked
from node.api.services import ServiceWriter
from node.api.stacks import StackWriter
from node.compose.translate import ComposeError, translate
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import NodeInfo, ServiceRecord, VolumeClaim, template_hash
from node.model.keys import Keys
from node.model.spec import parse_spec, spec_from_dict, spec_to_dict
from node.model.spec_errors import SpecError
from node.runtime.base import EngineError, NamedVolume
from node.store import Put
from node.store.memory import MemoryStore
from tests.factories import make_container, make_service, make_task, respec

GIB = 2**30
KEYS = Keys()
UID = "u1"
DATA = [{"name": "data", "target": "/var/lib/redis"}]


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"


def node(name: str) -> NodeInfo:
    return NodeInfo(name, "127.0.0.1", 7070, {}, 4.0, 8 * GIB)


def redis(replicas: int = 1, **extra: Any) -> ServiceRecord:
    r = make_service("redis", replicas=replicas, **{"volumes": DATA, **extra})
    return replace(r, uid=UID)


def claim(slot: int, on: str, cid: str = "c0", name: str = "data", uid: str = UID, **kw: Any) -> VolumeClaim:
    return VolumeClaim("redis", slot, name, on, cid, uid, 1.0, **kw)


def plan(record: ServiceRecord, nodes: list[str], tasks: Any = (), claims: Any = (), **avail: str) -> Plan:
    snap = Snapshot(
        {n: node(n) for n in nodes},
        {(t.service, t.slot): t for t in tasks},
        0,
        avail,
        volumes={"redis": tuple(claims)} if claims else {},
    )
    return schedule(snap, record, 1, now=5.0, new_id=ids())


# -- the spec -------------------------------------------------------------------------------


def _error(text: str) -> str:
    with pytest.raises(SpecError) as e:
        parse_spec("name: redis\nimage: redis\n" + text)
    return str(e.value)


def test_a_spec_with_volumes_round_trips_and_one_without_keeps_its_template_hash() -> None:
    spec = parse_spec("name: redis\nimage: redis\nvolumes: [{name: data, target: /data}]\nreschedule: true\n")
    assert spec.volumes is not None and spec.volumes[0].read_only is False
    assert spec_from_dict(spec_to_dict(spec)) == spec
    plain = parse_spec("name: redis\nimage: redis\n")
    assert "volumes" not in spec_to_dict(plain)
    assert template_hash(spec) == template_hash(spec.model_copy(update={"reschedule": False}))


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("volumes: [{name: Data, target: /d}]", "volumes[0].name", "lowercase"),
        ("volumes: [{name: data, target: d}]", "volumes[0].target", "absolute"),
        ("volumes: [{name: data, target: /}]", "volumes[0].target", "absolute"),
        ("volumes: [{name: data, target: /a/../b}]", "volumes[0].target", "'..'"),
        ("volumes: [{name: data, target: /a}, {name: data, target: /b}]", "volumes[1].name", "already used"),
        ("volumes: [{name: a, target: /d}, {name: b, target: /d}]", "volumes[1].target", "already used"),
        ("volumes: [{name: data, target: /run/secrets}]", "volumes[0].target", "secrets"),
        ("volumes: [{name: data, target: /run/secrets/x}]", "volumes[0].target", "secrets"),
        ("volumes: [{name: data, target: /run/./secrets}]", "volumes[0].target", "'.'"),
        ("volumes: [{name: data, target: /d, size: 1}]", "volumes[0].size", "unknown field"),
        ("mode: global\nvolumes: [{name: data, target: /d}]", "volumes", "replicated"),
        ("update: {order: start-first}\nvolumes: [{name: data, target: /d}]", "update.order", "stop-first"),
        ("reschedule: true", "reschedule", "only for a service with volumes"),
    ],
)
def test_bad_volumes_are_refused_naming_the_field(text: str, where: str, what: str) -> None:
    message = _error(text + "\n")
    assert where in message and what in message, message


def test_a_volume_target_may_not_be_a_configs_target() -> None:
    text = "configs: [{source: conf, target: /etc/x}]\nvolumes: [{name: data, target: /etc/x}]\n"
    assert "configs[0]" in _error(text)


def test_a_service_with_volumes_updates_stop_first_whatever_its_update_section() -> None:
    assert update_policy(redis().spec).order == "stop-first"
    assert update_policy(redis(update={"parallelism": 2}).spec).order == "stop-first"
    assert update_policy(make_service("web").spec).order == "start-first"


# -- the scheduler ----------------------------------------------------------------------------


def test_the_first_placement_claims_each_volume_on_its_node_named_after_the_task() -> None:
    record = redis(replicas=2, volumes=[*DATA, {"name": "logs", "target": "/logs"}])
    p = plan(record, ["n1", "n2"])
    assert len(p.place) == 2 and not p.unplaced
    want = {(t.slot, v, t.node, t.task_id) for t in p.place for v in ("data", "logs")}
    assert {(c.slot, c.name, c.node, c.claim) for c in p.claims} == want
    assert all(c.uid == UID and not c.removing for c in p.claims)
    assert p.claims[0].docker_name == f"redis.{p.claims[0].slot}.{p.claims[0].name}.{p.claims[0].claim}"


def test_a_slot_goes_back_to_the_node_of_its_volume_not_where_spread_would_put_it() -> None:
    busy = [make_task("other", i, "n2") for i in range(1, 4)]  # spread would pick n1 or n3
    p = plan(redis(), ["n1", "n2", "n3"], busy, [claim(1, "n2")])
    assert [(t.slot, t.node) for t in p.place] == [(1, "n2")]
    assert p.claims == []  # claimed already


def test_crash_between_claim_and_task_write_places_the_slot_on_the_claimed_node() -> None:
    p = plan(redis(replicas=2), ["n1", "n2", "n3"], [], [claim(1, "n3", "a"), claim(2, "n3", "b")])
    assert sorted((t.slot, t.node) for t in p.place) == [(1, "n3"), (2, "n3")]
    assert p.claims == []


def test_a_task_found_without_its_claim_gets_one_on_its_node() -> None:
    record = redis()
    task = replace(make_task(record, 1, "n2", task_id="t1"), uid=UID)
    p = plan(record, ["n1", "n2"], [task])
    assert p.keep == [task] and not p.place
    assert [(c.node, c.claim) for c in p.claims] == [("n2", "t1")]


def test_a_slot_whose_volume_node_is_lost_waits_with_a_reason_naming_volume_and_node() -> None:
    record = redis()
    task = replace(make_task(record, 1, "n2", task_id="t1"), uid=UID)
    p = plan(record, ["n1", "n3"], [task], [claim(1, "n2")])
    assert p.unplaced == [1] and not p.place and not p.stop and p.claims == []
    assert "volume data" in p.reason and "node n2" in p.reason and "lost" in p.reason
    assert "reschedule: true" in p.reason


def test_reschedule_true_starts_the_slot_elsewhere_with_a_new_claim() -> None:
    record = redis(reschedule=True)
    task = replace(make_task(record, 1, "n2", task_id="t1"), uid=UID)
    p = plan(record, ["n1", "n3"], [task], [claim(1, "n2", "t1")])
    [new] = p.place
    assert new.node in ("n1", "n3") and not p.unplaced
    assert [(c.node, c.claim) for c in p.claims] == [(new.node, new.task_id)]  # a new, empty volume


def test_a_drained_node_keeps_its_stateful_slot_unless_reschedule() -> None:
    record = redis()
    task = replace(make_task(record, 1, "n2", task_id="t1"), uid=UID)
    p = plan(record, ["n1", "n2"], [task], [claim(1, "n2")], n2="drain")
    assert p.keep == [task] and not p.place
    moving = redis(reschedule=True)
    p = plan(moving, ["n1", "n2"], [task], [claim(1, "n2")], n2="drain")
    assert [t.node for t in p.place] == ["n1"]


def test_a_missing_task_waits_for_a_drained_or_full_volume_node() -> None:
    p = plan(redis(), ["n1", "n2"], [], [claim(1, "n2")], n2="drain")
    assert p.unplaced == [1] and "node n2, which is drained" in p.reason
    big = redis(resources={"memory": 16 * GIB})
    p = plan(big, ["n1", "n2"], [], [claim(1, "n2")])
    assert p.unplaced == [1] and "without room" in p.reason


def test_an_update_replaces_the_task_on_its_node_stop_first_with_no_handoff() -> None:
    old = redis()
    task = replace(make_task(old, 1, "n2", task_id="t1"), uid=UID)
    new = replace(respec(old, image="redis:2"), version=2)
    p = plan(new, ["n1", "n2"], [task], [claim(1, "n2")])
    [placed] = p.place
    assert placed.node == "n2" and placed.replaces == "t1"
    with_handoffs(p, update_policy(new.spec), {"n1", "n2"})
    assert p.place[0].handoff == {}  # the old one is stopped first; nothing hands off


def test_claims_of_another_incarnation_are_not_reused() -> None:
    p = plan(redis(), ["n1"], [], [claim(1, "n1", "old", uid="u0")])
    [t] = p.place
    assert [(c.claim, c.uid) for c in p.claims] == [(t.task_id, UID)]


def test_a_claim_being_removed_holds_its_slot_back() -> None:
    p = plan(redis(), ["n1", "n2"], [], [claim(1, "n2", uid="u0", removing=True)])
    assert p.unplaced == [1] and "being removed" in p.reason


# -- the agent --------------------------------------------------------------------------------


def test_a_start_waits_while_another_container_of_its_slot_is_on_the_node() -> None:
    old = make_task("redis", 1, "n1", task_id="t1")
    new = make_task("redis", 1, "n1", task_id="t2")
    other = make_task("redis", 2, "n1", task_id="t3")
    assert "t1" in blocked(new, [make_container(old)])
    assert blocked(new, [make_container(other), make_container(new)]) == ""


async def test_mounts_need_a_claim_of_the_incarnation_on_this_node() -> None:
    store = MemoryStore()
    vols = Volumes(store, KEYS, "n1", "c", FakeRuntime())
    spec = redis().spec
    task = replace(make_task("redis", 1, "n1", task_id="t1"), uid=UID)
    await vols.claims.relist()
    assert "waiting for the claim" in vols.mounts(task, spec)[1]
    await store.put(KEYS.volume("redis", 1, "data"), claim(1, "n2", "t0").to_json())
    await vols.claims.relist()
    assert "claimed on node n2" in vols.mounts(task, spec)[1]
    await store.put(KEYS.volume("redis", 1, "data"), claim(1, "n1", "t0").to_json())
    await vols.claims.relist()
    mounts, why = vols.mounts(task, spec)
    assert why == "" and [(m.name, m.target, m.read_only) for m in mounts] == [
        ("redis.1.data.t0", "/var/lib/redis", False)
    ]


async def test_the_agent_removes_data_marked_removing_then_the_claim_and_retries_while_in_use() -> None:
    store, runtime = MemoryStore(), FakeRuntime()
    vols = Volumes(store, KEYS, "n1", "c", runtime)
    key = KEYS.volume("redis", 1, "data")
    await store.put(key, claim(1, "n1", "t0", removing=True).to_json())
    await store.put(KEYS.volume("redis", 2, "data"), claim(2, "n2", "t9", removing=True).to_json())
    task = make_task("redis", 1, "n1", task_id="t1")
    made = container_spec(task, redis().spec, "c", "127.0.0.1")
    made = replace(made, volumes=(NamedVolume("redis.1.data.t0", "/d"),))
    c = await runtime.run(made)
    await vols.claims.relist()
    assert await vols.sweep() == 0  # in use: the engine refuses, the claim stays
    assert await store.get(key) is not None
    with pytest.raises(EngineError):
        await runtime.remove_volume("redis.1.data.t0")
    await runtime.remove(c.id)
    assert await vols.sweep() == 1
    assert await store.get(key) is None and "redis.1.data.t0" not in runtime.volumes
    assert await store.get(KEYS.volume("redis", 2, "data")) is not None  # another node's: not ours


def test_claims_are_written_with_the_plan() -> None:
    p = plan(redis(), ["n1"])
    writes = writes_for(p, KEYS, {})
    puts = [w.op for w in writes if isinstance(w.op, Put) and w.op.key.startswith(KEYS.volumes)]
    assert [op.key for op in puts] == [KEYS.volume("redis", 1, "data")]


# -- Compose --------------------------------------------------------------------------------

COMPOSE = """
services:
  redis:
    image: redis
    volumes: ["data:/data", {type: volume, source: logs, target: /logs, read_only: true}]
volumes:
  data:
  logs: {driver: local}
"""


def test_compose_named_volumes_short_and_long_map_onto_the_spec() -> None:
    doc = translate(COMPOSE, name="app").document
    assert doc["services"]["redis"]["volumes"] == [
        {"name": "data", "target": "/data", "read_only": False},
        {"name": "logs", "target": "/logs", "read_only": True},
    ]


@pytest.mark.parametrize(
    ("item", "what"),
    [
        ('"./src:/app"', "volumes[0]: refused: bind mounts are for admins only"),
        ("{type: bind, source: /srv, target: /app}", "volumes[0]: refused: bind mounts"),
        ('"/anon"', "anonymous volumes are refused"),
        ('"other:/x"', "'other' is not declared"),
        ("{type: tmpfs, target: /t}", "type tmpfs is not supported"),
        ("{type: volume, source: data}", "missing target"),
    ],
)
def test_compose_refuses_bind_anonymous_and_undeclared_volumes_at_their_line(item: str, what: str) -> None:
    text = f"services:\n  app:\n    image: a\n    volumes: [{item}]\nvolumes:\n  data:\n"
    with pytest.raises(ComposeError) as e:
        translate(text, name="s")
    assert what in str(e.value) and "compose.yaml:4:" in str(e.value), str(e.value)


def test_compose_refuses_external_and_other_drivers() -> None:
    text = "services:\n  app:\n    image: a\nvolumes:\n  data: {external: true}\n  x: {driver: nfs}\n"
    with pytest.raises(ComposeError) as e:
        translate(text, name="s")
    assert str(e.value).count("refused: shoal makes one local volume per slot") == 2


# -- rm ---------------------------------------------------------------------------------------


async def test_stack_rm_and_service_rm_remove_every_volume_claim_and_nothing_else() -> None:
    store = MemoryStore()
    stacks = StackWriter(ServiceWriter(store, KEYS, "n1"))
    stack = "services:\n  cache:\n    image: redis\n    volumes: [{name: data, target: /data}]\n"
    stack += "  other:\n    image: redis\n"
    await stacks.deploy("name: app\n" + stack, "app.yaml")
    await store.put(KEYS.volume("app_cache", 1, "data"), claim(1, "n1").to_json())
    await store.put(KEYS.volume("redis", 1, "data"), claim(1, "n1").to_json())  # another service's
    assert await stacks.remove("app") == ["app_cache", "app_other"]
    assert (await store.range(KEYS.service_volumes("app_cache")))[0] == []
    assert (await store.get(KEYS.volume("redis", 1, "data"))) is not None


async def test_service_rm_keeps_a_claim_that_volume_rm_is_removing() -> None:
    """`volume rm` marked slot 2's claim; `service rm` before the agent's sweep deleted the
    whole prefix: the Docker volume stayed on its node for good, listed nowhere. The marked
    claim stays (its agent removes the volume, then the claim); the others go."""
    store = MemoryStore()
    w = ServiceWriter(store, KEYS, "n1")
    await w.apply(
        "name: redis\nimage: redis\nreplicas: 2\nvolumes: [{name: data, target: /data}]\n", "r.yaml"
    )
    await store.put(KEYS.volume("redis", 1, "data"), claim(1, "n1").to_json())
    await store.put(KEYS.volume("redis", 2, "data"), replace(claim(2, "n2"), removing=True).to_json())
    await w.remove("redis")
    kvs, _ = await store.range(KEYS.service_volumes("redis"))
    assert [kv.key for kv in kvs] == [KEYS.volume("redis", 2, "data")]


async def test_volume_rm_of_a_node_that_is_restarting_marks_it_not_deletes_it() -> None:
    """A node whose daemon restarts has no nodes/ key for a moment (its lease lapsed) but a
    restarting/ mark: taken for gone, the claim was deleted at once and the Docker volume
    stayed on that node with nothing left to remove it."""
    from node.api.volumes import VolumeClaims
    from node.model.domain import VolumeClaim

    store = MemoryStore()
    claim = VolumeClaim("db", 1, "data", "n2", "t1", uid="u1")
    await store.put(KEYS.volume("db", 1, "data"), claim.to_json())
    await store.put(KEYS.restarting("n2"), b"{}")
    got, message = await VolumeClaims(store, KEYS).remove("db.1.data")
    assert got.removing and "node n2 deletes" in message
    await store.delete(KEYS.restarting("n2"))  # it never came back: the claim goes at once
    kv = await store.get(KEYS.volume("db", 1, "data"))
    assert kv is not None
    await store.put(kv.key, claim.to_json())  # (not yet marked, for this case)
    got, message = await VolumeClaims(store, KEYS).remove("db.1.data")
    assert "not in the cluster" in message and await store.get(KEYS.volume("db", 1, "data")) is None


async def test_volume_rm_again_drops_a_marked_claim_whose_node_left_the_cluster() -> None:
    """`volume rm` marked the claim while its node was in; the node then left for good (its
    lease lapsed, no restarting/ mark). No agent would ever delete the claim, and a claim
    being removed holds its slot back whatever the incarnation: the slot of the service,
    or of a namesake created later, waited for good, and `volume rm` only answered that it
    was already being removed. Asked again, it now deletes the claim."""
    from node.api.volumes import VolumeClaims

    store = MemoryStore()
    key = KEYS.volume("db", 1, "data")
    await store.put(key, VolumeClaim("db", 1, "data", "n2", "t1", uid="u1").to_json())
    await store.put(KEYS.node("n2"), b"{}")
    got, message = await VolumeClaims(store, KEYS).remove("db.1.data")
    assert got.removing and "node n2 deletes" in message
    got, message = await VolumeClaims(store, KEYS).remove("db.1.data")  # still there: as it was
    assert "already being removed" in message and await store.get(key) is not None
    await store.delete(KEYS.node("n2"))  # it left the cluster
    got, message = await VolumeClaims(store, KEYS).remove("db.1.data")
    assert "not in the cluster" in message and await store.get(key) is None


@pytest.mark.parametrize("raw", [b"{not json", b"[1]", b'{"service": "db", "slot": "1"}'])
async def test_volume_rm_deletes_a_claim_that_does_not_read_by_its_key(raw: bytes) -> None:
    """A claim that does not read (written around the leader) failed `volume rm` with an
    internal error, and its slot waited until someone edited etcd by hand. It is deleted
    by its key (service, slot and volume are in it) and the answer says why and what stays;
    refused while a task holds the slot."""
    from node.api.volumes import VolumeClaims
    from node.model.errors import FailedPrecondition

    store = MemoryStore()
    key = KEYS.volume("db", 1, "data")
    await store.put(key, raw)
    await store.put(KEYS.task("db", 1), make_task("db", 1, "n1").to_json())
    with pytest.raises(FailedPrecondition, match=r"volume db.1.data: its claim cannot be read .* slot 1"):
        await VolumeClaims(store, KEYS).remove("db.1.data")
    assert (await store.get(key)) is not None
    await store.delete(KEYS.task("db", 1))
    got, message = await VolumeClaims(store, KEYS).remove("db.1.data")
    assert (got.service, got.slot, got.name) == ("db", 1, "data")
    assert "could not be read" in message and "stays there" in message
    assert await store.get(key) is None


async def test_a_task_record_that_does_not_read_holds_its_slot_and_fails_no_volume_ls() -> None:
    """`volume ls` and `volume rm` parsed the slot's task record unchecked: one written
    around the leader answered INTERNAL for every volume. Its slot counts as in use."""
    from node.api.volumes import VolumeClaims
    from node.model.errors import FailedPrecondition

    store = MemoryStore()
    await store.put(
        KEYS.volume("db", 1, "data"), VolumeClaim("db", 1, "data", "n2", "t1", uid="u1").to_json()
    )
    await store.put(
        KEYS.volume("db", 2, "data"), VolumeClaim("db", 2, "data", "n2", "t2", uid="u1").to_json()
    )
    await store.put(KEYS.task("db", 1), b"{not json")
    listed = await VolumeClaims(store, KEYS).list()
    assert [(c.slot, used) for c, used in listed] == [(1, True), (2, False)]
    with pytest.raises(FailedPrecondition, match="in use by task db-1 of db on an unknown node"):
        await VolumeClaims(store, KEYS).remove("db.1.data")
    assert await store.get(KEYS.volume("db", 1, "data")) is not None
