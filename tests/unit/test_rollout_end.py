"""`leader.rollout_end`: an ended rollout and its version's outcome, one transaction."""

from __future__ import annotations

import pytest

from leader import rollout_end
from leader.rollout import RolloutState
from node.model.domain import RolloutRecord, ServiceRecord
from node.model.keys import Keys
from node.store import KV, Fenced
from node.store.memory import MemoryStore
from tests.factories import make_service

KEYS = Keys()


def record(state: RolloutState, to_version: int = 2) -> RolloutRecord:
    return RolloutRecord("web", 1, to_version, "t2", state=state.value)


async def stored(store: MemoryStore | None = None) -> tuple[MemoryStore, int, int]:
    """A leader, version 2 in the history, its rollout updating: (store, epoch, rollout mod)."""
    store = store or MemoryStore()
    epoch = await store.put(KEYS.leader, b'{"node": "n1"}')
    v2 = make_service("web", version=2)
    await store.put(KEYS.history_version("web", 2), v2.to_json())
    mod = await store.put(KEYS.rollout("web"), record(RolloutState.UPDATING).to_json())
    return store, epoch, mod


async def outcome(store: MemoryStore) -> str:
    kv = await store.get(KEYS.history_version("web", 2))
    assert kv is not None
    return ServiceRecord.from_json(kv.value).outcome


async def state(store: MemoryStore) -> str:
    kv = await store.get(KEYS.rollout("web"))
    assert kv is not None
    return RolloutRecord.from_json(kv.value).state


def test_only_a_change_into_an_end_state_ends_a_rollout() -> None:
    updating, completed = record(RolloutState.UPDATING), record(RolloutState.COMPLETED)
    assert rollout_end.ends(updating, completed)
    assert rollout_end.ends(None, completed), "started and ended in one pass"
    assert not rollout_end.ends(completed, completed), "ended already: its outcome is stored"
    assert rollout_end.ends(completed, record(RolloutState.COMPLETED, to_version=3)), "another version's"
    assert not rollout_end.ends(None, updating)
    assert not rollout_end.ends(updating, record(RolloutState.ROLLING_BACK))


async def test_the_record_and_the_outcome_are_written_together() -> None:
    store, epoch, mod = await stored()
    assert await rollout_end.write(store, KEYS, epoch, record(RolloutState.ROLLED_BACK), mod)
    assert (await state(store), await outcome(store)) == ("rolled_back", "rolled_back")


class Racing(MemoryStore):
    """Someone writes the history entry right after we read it."""

    async def get(self, key: str) -> KV | None:
        kv = await super().get(key)
        if key == KEYS.history_version("web", 2):
            await self.put(key, make_service("web", version=2, image="img:other").to_json())
        return kv


async def test_a_history_entry_changed_meanwhile_makes_it_stale_and_writes_nothing() -> None:
    store, epoch, mod = await stored(Racing())
    assert not await rollout_end.write(store, KEYS, epoch, record(RolloutState.COMPLETED), mod)
    assert (await state(store), await outcome(store)) == ("updating", "")


async def test_a_rollout_record_changed_meanwhile_makes_it_stale_and_writes_nothing() -> None:
    store, epoch, mod = await stored()
    await store.put(KEYS.rollout("web"), record(RolloutState.UPDATING, to_version=3).to_json())
    assert not await rollout_end.write(store, KEYS, epoch, record(RolloutState.COMPLETED), mod)
    assert await outcome(store) == ""


async def test_a_deposed_leader_writes_nothing() -> None:
    store, epoch, mod = await stored()
    await store.delete(KEYS.leader)
    await store.put(KEYS.leader, b'{"node": "n2"}')
    with pytest.raises(Fenced):
        await rollout_end.write(store, KEYS, epoch, record(RolloutState.COMPLETED), mod)
    assert (await state(store), await outcome(store)) == ("updating", "")


async def test_a_pruned_history_entry_still_lets_the_record_end() -> None:
    store, epoch, mod = await stored()
    await store.delete(KEYS.history_version("web", 2))
    assert await rollout_end.write(store, KEYS, epoch, record(RolloutState.COMPLETED), mod)
    assert await state(store) == "completed"
