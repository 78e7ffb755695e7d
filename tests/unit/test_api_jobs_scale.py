"""Scale and rollback where a job or a global service is involved: refused with a clear
error, or a readable record; never a stored spec that no node can read (`a job has no replicas`), which made
the service vanish from `ls` and every later call fail with INTERNAL."""

from __future__ import annotations

import pytest

from leader import rollback
from node.api.services import ServiceWriter
from node.model.domain import RolloutRecord, ServiceRecord
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.model.spec_job import rollback_replicas
from node.store.memory import MemoryStore
from tests.factories import make_service

KEYS = Keys()
JOB = "name: web\nimage: img:1\nkind: job\njob: {completions: 2}\n"
SERVICE = "name: web\nimage: img:2\nreplicas: 3\n"


async def stored(store: MemoryStore) -> ServiceRecord:
    kv = await store.get(KEYS.service("web"))
    assert kv is not None
    return ServiceRecord.from_json(kv.value)  # readable, or this raises


async def test_scaling_a_job_is_refused_and_changes_nothing() -> None:
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    await writer.apply(JOB, "job.yaml")
    before = store.revision
    with pytest.raises(FailedPrecondition, match="is a job: it has no replicas to scale"):
        await writer.scale("web", 5)
    assert store.revision == before
    assert (await stored(store)).spec.replicas == 1


@pytest.mark.parametrize(
    "first, second", [(JOB, SERVICE), (SERVICE, JOB)], ids=["job-then-service", "service-then-job"]
)
async def test_a_rollback_across_a_job_and_a_service_stores_a_readable_record(
    first: str, second: str
) -> None:
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    v1, _ = await writer.apply(first, "web.yaml")
    await writer.apply(second, "web.yaml")
    back = await writer.rollback("web")
    record = await stored(store)
    assert (record.version, record.rollback_of, record.spec.kind) == (back.version, 2, v1.spec.kind)
    assert record.spec.replicas == v1.spec.replicas, "the target's own count when a job is involved"


def test_a_rollback_between_services_keeps_the_running_count() -> None:
    old, now = make_service("web", replicas=2).spec, make_service("web", replicas=7).spec
    assert rollback_replicas(old, now) == 7


def test_the_leaders_rollback_to_a_job_version_keeps_its_one_replica() -> None:
    job = ServiceRecord("web", 1, make_service("web", kind="job").spec)
    service = ServiceRecord("web", 2, make_service("web", replicas=3, image="img:bad").spec)
    failed = RolloutRecord("web", 1, 2, "t", state="failed")

    class Stored:
        def __init__(self, key: str, record: ServiceRecord) -> None:
            self.key, self.value, self.mod_revision = key, record.to_json(), 5

    txn = rollback.plan(
        KEYS, failed, Stored(KEYS.service("web"), service), 3,  # type: ignore[arg-type]
        Stored(KEYS.history_version("web", 1), job), None, 100.0,  # type: ignore[arg-type]
    )  # fmt: skip
    assert txn.record is not None
    assert ServiceRecord.from_json(txn.record.to_json()).spec.replicas == 1


async def test_scaling_a_global_service_is_refused_and_changes_nothing() -> None:
    """The leader runs one task per eligible node whatever `replicas` says: `scale 0` of a
    global service answered 'scaled to 0', wrote a version, and every task kept running."""
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    await writer.apply("name: web\nimage: img:1\nmode: global\n", "web.yaml")
    before = store.revision
    for replicas in (0, 1, 7):
        with pytest.raises(FailedPrecondition, match=r"global service .* no replicas to scale"):
            await writer.scale("web", replicas)
    assert store.revision == before
    assert (await stored(store)).version == 1
