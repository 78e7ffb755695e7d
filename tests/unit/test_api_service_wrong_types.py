"""`shoal service apply`, `scale` and `rollback` over a stored service record whose own fields
have the wrong types (`"version": "three"`, written around the API): they crashed on
`version + 1` (INTERNAL, a traceback in the log) or wrote a version built on it. They
refuse now, saying what is wrong and how to fix it, and write nothing; `rm` removes it."""

from __future__ import annotations

import json

import pytest

from node.api.services import ServiceWriter
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.store.memory import MemoryStore

KEYS = Keys()
V1 = "name: web\nimage: img:1\nreplicas: 2\n"
V2 = "name: web\nimage: img:2\nreplicas: 2\n"


async def broken(field: str, value: object) -> tuple[MemoryStore, ServiceWriter]:
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    await writer.apply(V1, "web.yaml")
    await writer.apply(V2, "web.yaml")
    kv = await store.get(KEYS.service("web"))
    assert kv is not None
    await store.put(KEYS.service("web"), json.dumps({**json.loads(kv.value), field: value}).encode())
    return store, writer


@pytest.mark.parametrize(("field", "value"), [("version", "three"), ("uid", 7), ("name", "api")])
@pytest.mark.parametrize("call", ["apply", "apply-unchanged", "scale", "rollback"])
async def test_a_new_version_is_not_built_on_a_record_of_the_wrong_types(
    call: str, field: str, value: object
) -> None:
    store, writer = await broken(field, value)
    before = store.revision
    with pytest.raises(FailedPrecondition, match=r"service 'web': .* cannot be read: .*shoal service rm web"):
        if call == "apply":
            await writer.apply("name: web\nimage: img:3\nreplicas: 2\n", "web.yaml")
        elif call == "apply-unchanged":
            await writer.apply(V2, "web.yaml")
        elif call == "scale":
            await writer.scale("web", 5)
        else:
            await writer.rollback("web")
    assert store.revision == before, "nothing written"


@pytest.mark.parametrize(("field", "value"), [("version", "three"), ("uid", 7), ("name", "api")])
async def test_such_a_record_can_be_removed_and_applied_again(field: str, value: object) -> None:
    store, writer = await broken(field, value)
    await writer.remove("web")
    assert await store.get(KEYS.service("web")) is None
    record, changed = await writer.apply(V2, "web.yaml")
    assert changed and record.version == 1


@pytest.mark.parametrize("raw", [b"{not json", b"[1]", b'{"name": "web", "spec": {"image": 5}}'])
async def test_a_record_that_does_not_read_is_named_with_the_way_out_and_rm_removes_it(raw: bytes) -> None:
    """A record that does not parse at all (not JSON, a spec this build does not know):
    apply said only that it cannot be read, and `service rm` refused it too, so nothing
    but a hand edit of etcd got the name back. Apply names `shoal service rm`, which
    removes it by its key (history included), and the spec applies anew."""
    store, writer = await broken("version", 2)
    await store.put(KEYS.service("web"), raw)
    before = store.revision
    with pytest.raises(FailedPrecondition, match=r"service 'web': .*`shoal service rm web` removes it"):
        await writer.apply(V2, "web.yaml")
    assert store.revision == before, "nothing written"
    await writer.remove("web")
    assert await store.get(KEYS.service("web")) is None
    assert (await store.range(KEYS.history("web")))[0] == []
    record, changed = await writer.apply(V2, "web.yaml")
    assert changed and record.version == 1


async def test_a_stack_file_over_a_record_that_does_not_read_names_the_way_out() -> None:
    from node.api.stacks import StackWriter

    store = MemoryStore()
    stacks = StackWriter(ServiceWriter(store, KEYS, "n1"))
    await stacks.deploy("name: shop\nservices:\n  db: {image: x}\n", "app.yaml")
    await store.put(KEYS.service("shop_db"), b"{not json")
    with pytest.raises(FailedPrecondition, match=r"shop_db.: .*`shoal service rm shop_db` removes it"):
        await stacks.deploy("name: shop\nservices:\n  db: {image: y}\n", "app.yaml")
