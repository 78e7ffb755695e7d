"""What `inspect` shows of a service re-created with the same name: nothing of the
removed one's rollout (a leader pass that raced the `rm` can leave its record)."""

from __future__ import annotations

from node.api.servicer import ShoalServicer
from node.model.domain import RolloutRecord
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
