"""Which exited containers a node keeps for their logs, and which it removes (decision 71).

A container that exited and is no task's current one (its task was replaced by an
update or a scale-down, or restarted in a new container, or unassigned) is *kept*:
stopped, never restarted, never counted as a replica, never published, holding no
resource the scheduler counts, so that `shoal task logs` still reads it. Per slot
(service incarnation and slot number) the newest `limit` kept containers stay, by the
time they exited; `prune` names the others, and every kept container of:

- a service that no longer exists, or exists as another incarnation (a service removed,
  `stack rm`): its history goes with it;
- a job (`kind: job`): a job's containers follow the job's own rules (decision 69: they
  stay while their task is assigned, the run records bound them), so one that is no
  longer its task's goes at once;
- any service when `limit` is 0 (the node keeps none, as before decision 71);
- a slot whose volumes `volume rm` is removing: Docker refuses to remove a volume that
  any container holds, an exited one too;
- a container that never started (`created`: a daemon killed between create and start):
  it has no logs, and a `created` one blocks its slot's volumes (`node.agent.volumes`).

`services` None means the services are not known yet (etcd's listing not in): then
nothing is removed for being of a removed service, only what is past the limit.

Pure: containers and a services map in, container ids out; no I/O, no clock. The agent
(`node.agent.agent`) calls it every pass; a removal that fails (the engine away) is
named again by the next pass, so a crash or an outage between two steps leaves at most
one more container than the limit per slot (the task's exited current container), and
never removes one that should stay.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from node.runtime.base import LABELS, Container

_FRACTION = re.compile(r"\.(\d+)")


@dataclass(frozen=True)
class Known:
    """What `prune` needs of a service that exists: its incarnation and whether it is a job."""

    uid: str
    job: bool = False


def finished_key(c: Container) -> tuple[str, str]:
    """Sort key by the time `c` exited: Docker's RFC 3339 with its fraction padded to 9
    digits (Docker drops trailing zeros, so the raw strings do not sort); never run ("")
    sorts first (oldest). The id breaks ties."""
    when = _FRACTION.sub(lambda m: "." + m.group(1).ljust(9, "0"), c.finished_at, count=1)
    if when and "." not in when:
        when = when.replace("Z", ".000000000Z", 1)
    return (when, c.id)


def slot_of(c: Container) -> tuple[str, str, str]:
    """(service, uid, slot) from the container's labels."""
    labels = c.labels
    return (labels.get(LABELS.SERVICE, ""), labels.get(LABELS.UID, ""), labels.get(LABELS.SLOT, ""))


def _gone(c: Container, services: Mapping[str, Known] | None) -> bool:
    if services is None:
        return False
    service, uid, _ = slot_of(c)
    known = services.get(service)
    return known is None or bool(uid and known.uid and uid != known.uid)


def _job(c: Container, services: Mapping[str, Known] | None) -> bool:
    known = (services or {}).get(slot_of(c)[0])
    return known is not None and known.job


def prune(
    kept: Sequence[Container],
    limit: int,
    services: Mapping[str, Known] | None,
    cleared: Collection[tuple[str, str]] = (),
) -> list[str]:
    """The ids of the kept containers to remove, oldest first within each slot.
    `cleared`: (service, slot) pairs whose volumes are being removed (`volume rm`): the
    engine refuses to remove a volume that a container, even an exited one, holds."""
    out: list[str] = []
    by_slot: dict[tuple[str, str, str], list[Container]] = {}
    for c in kept:
        service, _, slot = slot_of(c)
        never_ran = c.state == "created"  # no logs; kept, it would hold its slot's volumes
        if limit <= 0 or never_ran or _gone(c, services) or _job(c, services) or (service, slot) in cleared:
            out.append(c.id)
        else:
            by_slot.setdefault(slot_of(c), []).append(c)
    for key in sorted(by_slot):
        newest_first = sorted(by_slot[key], key=finished_key, reverse=True)
        out.extend(c.id for c in reversed(newest_first[limit:]))
    return out


def history_name(c: Container) -> str:
    """The name a kept container takes to free its task's name for the task's next
    container: `<name>.<first 12 of its id>` (once: a name that has it already stays)."""
    suffix = "." + c.id[:12]
    return c.name if c.name.endswith(suffix) else c.name + suffix
