"""Virtual addresses in etcd: allocated, replaced and released in single transactions.

Any node may allocate (every node's names component does, for the services it sees
without a VIP of their current incarnation); what makes that safe is that each change
is ONE transaction compared on everything it read:

- `allocate(service)`: reads the service record, its `vips/` record, the claims
  (`vipaddrs/`) and the cursor; writes the new record, the new claim and the cursor,
  and deletes the claim of a stale record (an earlier incarnation's), compared on the
  service key's and the record's mod revisions, the new claim's absence and the
  cursor's mod revision. Of two nodes allocating at once, one wins; the other reads
  again and finds the address written. A process that dies before or after the
  transaction leaves either nothing or everything, never an address without its claim.
- `release(service)`: once the service key is gone, deletes its record and claim,
  compared on the service key's absence and the record's mod revision (a service
  re-created meanwhile keeps its new record).
- `sweep(address)`: a claim no record names (written by hand, or its record was
  unreadable and replaced) is deleted, compared on both keys.

A re-created service never gets the address of its earlier incarnation back in the same
write (that claim is still held when the new address is chosen), and the cursor hands
out released addresses last.
"""

from __future__ import annotations

import ipaddress
import json
import logging

from node.model.domain import ServiceRecord, UnreadableRecord
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.proxy.names import VipRecord, next_free
from node.store.base import KV, Compare, Delete, Op, Put, Store
from node.store.retry import compare_and_swap

log = logging.getLogger(__name__)


class VipRangeFull(FailedPrecondition):
    pass


def _claim(record: VipRecord) -> bytes:
    return json.dumps({"service": record.service, "uid": record.uid}).encode()


def _racing(service: str) -> str:
    return f"the virtual address of '{service}' is being written concurrently"


def _mod(kv: KV | None) -> int:
    return kv.mod_revision if kv is not None else 0


class VipStore:
    def __init__(self, store: Store, keys: Keys, net: ipaddress.IPv4Network) -> None:
        self.store, self.keys, self.net = store, keys, net

    async def allocate(self, service: str) -> VipRecord | None:
        """The VIP of `service`'s current incarnation, allocated if it has none; None when
        the service is gone. `Conflict` after repeated lost races, `VipRangeFull`."""

        async def attempt() -> tuple[VipRecord | None] | None:
            skv = await self.store.get(self.keys.service(service))
            if skv is None:
                return (None,)
            try:
                record = ServiceRecord.from_json(skv.value)
            except UnreadableRecord:
                return (None,)
            vkv = await self.store.get(self.keys.vip(service))
            old = VipRecord.from_json(vkv.value) if vkv is not None else None
            if old is not None and old.current(record.uid, self.net):
                return (old,)
            claims, _ = await self.store.range(self.keys.vipaddrs)
            taken = {self.keys.tail(kv.key, self.keys.vipaddrs) for kv in claims}
            if old is not None:
                taken.add(old.address)  # fresh: never the earlier incarnation's address
            ckv = await self.store.get(self.keys.vipcursor)
            address = next_free(self.net, taken, ckv.value.decode(errors="replace") if ckv else None)
            if address is None:
                raise VipRangeFull(
                    f"no virtual address left in vip_range {self.net} for service '{service}'; "
                    "remove services or set a larger vip_range on every node"
                )
            new = VipRecord(service, record.uid, address)
            compares = [
                Compare(self.keys.service(service), "mod", "==", skv.mod_revision),
                Compare(self.keys.vip(service), "mod", "==", _mod(vkv)),
                Compare(self.keys.vipaddr(address), "create", "==", 0),
                Compare(self.keys.vipcursor, "mod", "==", _mod(ckv)),
            ]
            ops: list[Op] = [
                Put(self.keys.vip(service), new.to_json()),
                Put(self.keys.vipaddr(address), _claim(new)),
                Put(self.keys.vipcursor, address.encode()),
            ]
            if old is not None:
                ops.append(Delete(self.keys.vipaddr(old.address)))  # the earlier incarnation's
            if (await self.store.txn(compares, ops)).succeeded:
                log.info("names: %s (uid %s) has virtual address %s", service, record.uid, address)
                return (new,)
            return None

        result = await compare_and_swap(
            attempt, f"the virtual address of '{service}' is being written concurrently"
        )
        return result[0]

    async def release(self, service: str) -> bool:
        """Delete the record and claim of a removed service; False if it exists again."""

        async def attempt() -> bool | None:
            if await self.store.get(self.keys.service(service)) is not None:
                return False
            vkv = await self.store.get(self.keys.vip(service))
            if vkv is None:
                return True
            ops: list[Op] = [Delete(self.keys.vip(service))]
            old = VipRecord.from_json(vkv.value)
            if old is not None:
                ops.append(Delete(self.keys.vipaddr(old.address)))
            compares = [
                Compare(self.keys.service(service), "create", "==", 0),
                Compare(self.keys.vip(service), "mod", "==", vkv.mod_revision),
            ]
            ok = (await self.store.txn(compares, ops)).succeeded
            if ok:
                log.info("names: released %s of removed service %s", old.address if old else "?", service)
            return True if ok else None

        return await compare_and_swap(
            attempt, f"the virtual address of '{service}' is being written concurrently"
        )

    async def sweep(self) -> int:
        """Delete claims that no record names; how many went."""
        claims, _ = await self.store.range(self.keys.vipaddrs)
        gone = 0
        for kv in claims:
            address = self.keys.tail(kv.key, self.keys.vipaddrs)
            try:
                service = str(json.loads(kv.value)["service"])
            except (ValueError, KeyError, TypeError):
                service = ""
            vkv = await self.store.get(self.keys.vip(service)) if service else None
            record = VipRecord.from_json(vkv.value) if vkv is not None else None
            if record is not None and record.address == address:
                continue
            compares = [
                Compare(kv.key, "mod", "==", kv.mod_revision),
                Compare(self.keys.vip(service or "-"), "mod", "==", _mod(vkv)),
            ]
            if (await self.store.txn(compares, [Delete(kv.key)])).succeeded:
                gone += 1
        return gone
