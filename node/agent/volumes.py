"""The agent's side of volumes (issue 13, item 5): mount a slot's claimed volumes, never
two containers on one volume at once, and remove the data `volume rm` asked to go.

- A task of a service with `volumes:` starts only once every volume of its slot has a
  claim (`volumes/<service>/<slot>/<name>`, written by the leader) of its incarnation on
  this node; the container then mounts the claim's Docker volume, which the engine
  creates, labelled, the first time. A crash anywhere between the claim and the start
  leaves nothing half made: the next pass (of this agent, or of a restarted one) finds
  the claim and starts the container on the same volume.
- It starts only once no other container of the same service and slot is left on this
  node (`blocked`): a stop-first update, a restart of the task, the old container of a
  moved handoff, all first stop and remove the old container (`node.agent.stopper`), whose
  end wakes a pass. So old and new never run on a volume at once.
- A claim marked `removing` on this node: the Docker volume is removed (refused by the
  engine while a container uses it: tried again next pass), then the claim is deleted if
  it is still the one seen. Removal survives a crash: the mark stays until both are done.
- A claim that cannot be read (not JSON, a field of the wrong type) is logged and left
  out: its slot waits as without a claim, every other task and claim goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from node.model.domain import Assignment, UnreadableRecord, VolumeClaim, read_claim
from node.model.keys import Keys
from node.model.spec import ServiceSpec
from node.runtime.base import LABELS, Container, EngineError, NamedVolume, Runtime
from node.store import KV, Compare, Delete, Store, StoreError
from node.store.mirrors import mirror

log = logging.getLogger(__name__)


def blocked(task: Assignment, found: Sequence[Container]) -> str:
    """Why `task` may not start yet: another container of its slot is still on this node
    and not exited (an exited one kept for its logs, decision 71, runs nothing on the
    volume: Docker lets several containers share one, and it is never started again)."""
    for c in found:
        if c.state in ("exited", "dead"):
            continue
        labels = c.labels
        same = labels.get(LABELS.SERVICE) == task.service and labels.get(LABELS.SLOT) == str(task.slot)
        if same and labels.get(LABELS.TASK) != task.task_id:
            return f"waiting for {c.name} to stop: it uses this slot's volumes"
    return ""


class Volumes:
    def __init__(self, store: Store, keys: Keys, node: str, cluster: str, runtime: Runtime) -> None:
        self.store, self.keys, self.node, self.cluster, self.runtime = store, keys, node, cluster, runtime
        self.claims = mirror(store, keys.volumes, "agent-volumes")
        self._said: set[tuple[str, int]] = set()  # unreadable claims logged: (key, mod revision)

    def _read(self, kv: KV) -> VolumeClaim | None:
        """The claim of `kv`; None when it cannot be read (logged once per write of it):
        that claim is left out, the pass goes on with every other task and claim."""
        try:
            return read_claim(kv.value)
        except UnreadableRecord as exc:
            if (kv.key, kv.mod_revision) not in self._said:
                self._said.add((kv.key, kv.mod_revision))
                log.error("%s left out: %s", kv.key, exc)
            return None

    def claim(self, service: str, slot: int, name: str) -> VolumeClaim | None:
        kv = self.claims.items.get(self.keys.volume(service, slot, name))
        return None if kv is None else self._read(kv)

    def mounts(self, task: Assignment, spec: ServiceSpec) -> tuple[tuple[NamedVolume, ...], str]:
        """The volumes to mount, or why not yet (no claim here of this incarnation)."""
        out = []
        for v in spec.volumes or []:
            c = self.claim(task.service, task.slot, v.name)
            key = self.keys.volume(task.service, task.slot, v.name)
            if c is None and key in self.claims.items:
                return (), f"the claim of volume {v.name} ({key}) cannot be read: the daemon's log says why"
            if c is None or c.uid != task.uid or c.removing:
                return (), f"waiting for the claim of volume {v.name}"
            if c.node != self.node:
                return (), f"volume {v.name} of slot {task.slot} is claimed on node {c.node}"
            labels = {LABELS.CLUSTER: self.cluster, LABELS.NODE: self.node, LABELS.SERVICE: task.service}
            labels |= {LABELS.SLOT: str(task.slot), LABELS.UID: task.uid, LABELS.VOLUME: v.name}
            out.append(NamedVolume(c.docker_name, v.target, v.read_only, labels))
        return tuple(out), ""

    def removing(self) -> set[tuple[str, str]]:
        """(service, slot) of the claims marked `removing` on this node: their kept exited
        containers go first (the engine refuses to remove a volume any container holds)."""
        out = set()
        for kv in self.claims.values():
            c = self._read(kv)
            if c is not None and c.removing and c.node == self.node:
                out.add((c.service, str(c.slot)))
        return out

    async def sweep(self) -> int:
        """Remove the volumes marked `removing` on this node, then their claims; how many."""
        done = 0
        for kv in list(self.claims.values()):
            c = self._read(kv)
            if c is None or not c.removing or c.node != self.node:
                continue
            try:
                await self.runtime.remove_volume(c.docker_name)
                result = await self.store.txn(
                    [Compare(kv.key, "mod", "==", kv.mod_revision)], [Delete(kv.key)]
                )
            except (EngineError, StoreError) as exc:
                log.warning("volume %s not removed yet: %s", c.docker_name, exc)
                continue
            done += result.succeeded
        return done
