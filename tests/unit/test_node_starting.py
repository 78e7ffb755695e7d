"""Decision 76: a node is `starting` until its proxy serves, and a lookup waits for this
node's proxy to serve what it lists. On a MemoryStore, the mesh's wait faked."""

from __future__ import annotations

from node.api import resolve
from node.api.nodes import list_nodes
from node.model.domain import EndpointRecord, NodeInfo
from node.model.keys import Keys
from node.store.memory import MemoryStore
from tests.factories import make_service, make_task

KEYS = Keys()


def info(name: str, **fields: str) -> NodeInfo:
    return NodeInfo(name, "127.0.0.1", 7070, {}, 2.0, 2**30, **fields)  # type: ignore[arg-type]


async def test_a_node_whose_proxy_does_not_serve_yet_is_listed_starting() -> None:
    store = MemoryStore()
    await store.put(
        KEYS.node("n1"), info("n1", starting="proxy worker(s) 0 have not taken the route table yet").to_json()
    )
    await store.put(KEYS.node("n2"), info("n2").to_json())
    await store.put(
        KEYS.node("n3"), info("n3", starting="…", not_ready="the engine does not answer").to_json()
    )
    listed = {n.id: n.status for n in (await list_nodes(store, KEYS, None)).nodes}
    assert listed == {"n1": "starting", "n2": "ready", "n3": "not-ready"}  # not-ready says more
    older = b'{"id": "n4", "address": "127.0.0.4", "grpc_port": 7070}'  # a writer without the field
    assert NodeInfo.from_json(older).starting == ""


async def test_a_lookup_waits_for_this_nodes_proxy_to_serve_what_it_read() -> None:
    store = MemoryStore()
    asked: list[tuple[int, float]] = []

    async def settled(revision: int, timeout: float) -> bool:
        asked.append((revision, timeout))
        return False  # late: answered anyway

    await store.put(KEYS.node("n1"), info("n1").to_json())
    web = make_service("web", ports=[{"container": 80, "published": 18080, "protocol": "http"}])
    await store.put(KEYS.service("web"), web.to_json())
    task = make_task(web, 1, "n1")
    await store.put(KEYS.task("web", 1), task.to_json())
    record = EndpointRecord(task.task_id, "web", "n1", "127.0.0.1", 31000, 80, {"80": 31000})
    newest = await store.put(KEYS.endpoint("web", task.task_id), record.to_json())
    await store.put(KEYS.node("n2"), info("n2").to_json())  # elsewhere: not waited for
    answer = await resolve.resolve(store, KEYS, "web", None, settled)
    assert [e.task for e in answer.endpoints] == [task.task_id]
    assert [(m.node, m.port) for m in answer.mesh] == [("n1", 18080), ("n2", 18080)]
    assert asked == [(newest, resolve.SETTLE)]  # the newest record the answer was read from

    await store.put(KEYS.service("db"), make_service("db").to_json())  # no published port: no wait
    await resolve.resolve(store, KEYS, "db", None, settled)
    assert len(asked) == 1
