"""history/ keeps the last `history_limit` versions, pruned in the write that adds one
(old specs, their `secret_env` included, do not pile up in etcd until `rm`)."""

from __future__ import annotations

from node.api.services import HISTORY_LIMIT, ServiceWriter
from node.model.keys import Keys
from node.store.memory import MemoryStore

KEYS = Keys()


def spec(image: str) -> str:
    return f"name: web\nimage: {image}\nreplicas: 1\n"


async def versions(store: MemoryStore) -> list[int]:
    kvs, _ = await store.range(KEYS.history("web"))
    return [int(KEYS.tail(kv.key, KEYS.history("web"))) for kv in kvs]


async def test_history_keeps_the_last_ten_versions_by_default() -> None:
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    assert writer.history_limit == HISTORY_LIMIT == 10
    for i in range(1, 26):
        before = store.revision
        await writer.apply(spec(f"shoal-demo/web:{i}"), "web.yaml")
        assert store.revision == before + 1, "the prune is part of the write that adds a version"
        assert await versions(store) == list(range(max(1, i - 9), i + 1))
    current, kept = await writer.history("web")
    assert current.version == 25 and [r.version for r in kept] == list(range(16, 26))


async def test_rollback_works_within_the_kept_versions_and_a_lower_limit_prunes_at_once() -> None:
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    for i in range(1, 13):
        await writer.apply(spec(f"shoal-demo/web:{i}"), "web.yaml")
    back = await writer.rollback("web")
    assert back.spec.image == "shoal-demo/web:11"
    writer.history_limit = 3
    await writer.scale("web", 2)
    assert await versions(store) == [12, 13, 14]
