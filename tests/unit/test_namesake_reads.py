"""What `inspect` shows of a service re-created with the same name: nothing of the
removed one's rollout (a leader pass that raced the `rm` can leave its record); and
names a request carries that cannot be one."""

from __future__ import annotations

import pytest

from node.api.servicer import ShoalServicer
from node.model.domain import Assignment, PendingRecord, RolloutRecord, template_hash
from node.model.keys import Keys
from node.pb import api_pb2
from node.store.memory import MemoryStore

KEYS = Keys()


async def test_a_removed_namesake_s_rollout_is_not_shown_on_the_new_service() -> None:
    store = MemoryStore()
    servicer = ShoalServicer(store, KEYS, "n1")
    record, _ = await servicer.writer.apply("name: web\nimage: shoal-demo/web:1\nreplicas: 2\n", "web.yaml")
    old = RolloutRecord("web", 1, 2, "t", state="rolled_back", uid="0123456789abcdef", message="old one's")
    await store.put(KEYS.rollout("web"), old.to_json())
    got = await servicer.GetService(api_pb2.GetServiceRequest(name="web"), None)  # type: ignore[arg-type]
    assert not got.HasField("rollout") or got.rollout.state == "", got.rollout
    mine = RolloutRecord("web", 1, record.version, "t", state="completed", uid=record.uid)
    await store.put(KEYS.rollout("web"), mine.to_json())
    got = await servicer.GetService(api_pb2.GetServiceRequest(name="web"), None)  # type: ignore[arg-type]
    assert got.rollout.state == "completed"


class Aborted(Exception):
    pass


class Context:
    """What a handler's `context.abort` was told (the gRPC status and its details)."""

    async def abort(self, code: object, details: str) -> None:
        raise Aborted(code, details)


async def test_job_calls_refuse_a_name_that_cannot_be_one_and_echo_it_short() -> None:
    import grpc
    import pytest

    from node.api.jobs import JobsServicer
    from node.pb import jobs_pb2

    servicer = JobsServicer(MemoryStore(), KEYS)
    huge = "j" * 4_000_000 + "!"
    for call in (
        servicer.GetJob(jobs_pb2.GetJobRequest(name=huge), Context()),  # type: ignore[arg-type]
        servicer.ListRuns(jobs_pb2.ListRunsRequest(name="../x"), Context()),  # type: ignore[arg-type]
    ):
        with pytest.raises(Aborted) as err:
            await call
        code, details = err.value.args
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not a service name" in details
        assert len(details) < 300


async def test_a_removed_namesake_s_tasks_are_not_listed_as_the_new_service_s() -> None:
    """rm, then apply again before the leader's next pass unassigned the old tasks: ps,
    inspect and ls counted them as the new service's replicas."""
    from dataclasses import replace

    from tests.factories import make_task

    store = MemoryStore()
    servicer = ShoalServicer(store, KEYS, "n1")
    record, _ = await servicer.writer.apply("name: web\nimage: shoal-demo/web:1\nreplicas: 2\n", "web.yaml")
    old = replace(make_task(record, 1, "n1", task_id="old1"), uid="0123456789abcdef")
    mine = replace(make_task(record, 2, "n1", task_id="mine2"), uid=record.uid)
    for t in (old, mine):
        await store.put(KEYS.task("web", t.slot), t.to_json())
    ps = await servicer.ListTasks(api_pb2.ListTasksRequest(service="web"), None)  # type: ignore[arg-type]
    assert [t.task_id for t in ps.tasks] == ["mine2"]
    got = await servicer.GetService(api_pb2.GetServiceRequest(name="web"), None)  # type: ignore[arg-type]
    ls = await servicer.ListServices(api_pb2.ListServicesRequest(), None)  # type: ignore[arg-type]
    assert got.running == ls.services[0].running <= 1


async def test_ps_all_leaves_out_the_kept_containers_of_a_removed_namesake() -> None:
    """Kept (exited) containers are found on every node by their labels; the uid label now
    travels with them (`FoundTask.uid`), so those of a removed incarnation are left out
    (one from an older node, without a uid, is still shown)."""
    from node.pb import peer_pb2

    store = MemoryStore()
    servicer = ShoalServicer(store, KEYS, "n1")
    record, _ = await servicer.writer.apply("name: web\nimage: shoal-demo/web:1\n", "web.yaml")
    found = [
        (
            "n1",
            peer_pb2.FoundTask(task="old1", service="web", slot=1, state="exited", uid="0123456789abcdef"),
        ),
        ("n1", peer_pb2.FoundTask(task="mine1", service="web", slot=1, state="exited", uid=record.uid)),
        ("n2", peer_pb2.FoundTask(task="legacy1", service="web", slot=1, state="exited")),
    ]

    class History:
        async def history(self, service: str) -> tuple[list[tuple[str, peer_pb2.FoundTask]], list[str]]:
            return found, []

    servicer._taskio = lambda: History()  # type: ignore[assignment,method-assign,return-value]
    ps = await servicer.ListTasks(api_pb2.ListTasksRequest(service="web", all=True), None)  # type: ignore[arg-type]
    assert sorted(t.task_id for t in ps.tasks) == ["legacy1", "mine1"]


async def test_update_pending_sees_a_global_service_s_outdated_tasks() -> None:
    """A global service has one task per node, at slot numbers of any size: `slot <=
    replicas` hid every outdated one above slot 1, so `service update` stopped waiting."""
    store = MemoryStore()
    servicer = ShoalServicer(store, KEYS, "n1")
    record, _ = await servicer.writer.apply("name: agent\nimage: shoal-demo/web:1\nmode: global\n", "a.yaml")
    target = template_hash(record.spec)

    def task(slot: int, template: str, desired: str = "running") -> Assignment:
        return Assignment(f"t{slot}", "agent", slot, f"n{slot}", record.version, 1, template,
                          desired=desired, uid=record.uid)  # fmt: skip

    async def pending(*tasks: Assignment) -> bool:
        for kv in (await store.range(KEYS.service_tasks("agent")))[0]:
            await store.delete(kv.key)
        for t in tasks:
            await store.put(KEYS.task("agent", t.slot), t.to_json())
        got = await servicer.GetService(api_pb2.GetServiceRequest(name="agent"), None)  # type: ignore[arg-type]
        return bool(got.update_pending)

    assert await pending(task(1, target), task(4, "old"))
    assert not await pending(task(1, target), task(4, target))
    assert not await pending(task(1, target), task(4, "old", desired="stopped"))  # going away


@pytest.mark.parametrize("bad", [b"not json", b'{"service": "web", "reason": "x", "slots": "1,2"}'])
async def test_a_pending_reason_that_cannot_be_read_fails_no_listing(bad: bytes) -> None:
    """`service ls`, `inspect` and `stack ls` read every `pending/` record: one written
    around the leader failed each of them (INTERNAL) until the leader wrote it anew. It
    is left out of the answer; the readable ones still show."""
    store = MemoryStore()
    servicer = ShoalServicer(store, KEYS, "n1")
    record, _ = await servicer.writer.apply("name: web\nimage: shoal-demo/web:1\nreplicas: 2\n", "web.yaml")
    other, _ = await servicer.writer.apply("name: db\nimage: shoal-demo/web:1\nreplicas: 3\n", "db.yaml")
    waits = PendingRecord("db", "no node has 4 GiB free", [2, 3], uid=other.uid)
    await store.put(KEYS.pending("db"), waits.to_json())
    await store.put(KEYS.pending("web"), bad)
    ls = await servicer.ListServices(api_pb2.ListServicesRequest(), None)  # type: ignore[arg-type]
    assert {s.name: s.pending for s in ls.services} == {"db": 2, "web": 0}
    got = await servicer.GetService(api_pb2.GetServiceRequest(name="web"), None)  # type: ignore[arg-type]
    assert got.pending == 0 and record.name == "web"
    stacks = await servicer.ListStacks(api_pb2.ListStacksRequest(), None)  # type: ignore[arg-type]
    assert stacks is not None
