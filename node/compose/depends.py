"""`depends_on` conditions: is a dependency there yet, and how to say what is awaited.

Shared by the leader's gate (`leader.dependencies`), which holds back a service's first
tasks until its dependencies' conditions hold, and by `shoal stack ps`, which shows what a
service waits for, or a dependency that no longer meets its condition (shown only: a
running service is never stopped for it, as with Compose's depends_on).

- `started`: the dependency has at least one task running;
- `healthy`: it has at least one task running and routable (healthy, or without a check);
- `completed` (issue 18): it is a `kind: job` and its current run succeeded (Compose's
  `service_completed_successfully`: a migration before the web tier).

Pure: no grpc, docker or etcd.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DepState:
    """What is observed of a dependency."""

    exists: bool = False  # the service record is there
    running: int = 0  # tasks whose container runs
    healthy: int = 0  # of those, routable (health "" or "healthy")
    succeeded: bool = False  # a job whose record says succeeded


def met(condition: str, state: DepState) -> bool:
    if not state.exists:
        return False
    if condition == "completed":
        return state.succeeded
    return state.healthy > 0 if condition == "healthy" else state.running > 0


def short_name(service: str, stack: str | None) -> str:
    """`shop_db` -> `db` within stack `shop`; other names as they are."""
    return service[len(stack) + 1 :] if stack and service.startswith(stack + "_") else service


def unmet(
    depends_on: Mapping[str, str], states: Mapping[str, DepState], stack: str | None = None
) -> list[str]:
    """The conditions that do not hold, as `db (healthy)` (`db (healthy; not deployed)`)."""
    out = []
    for dep, condition in sorted(depends_on.items()):
        state = states.get(dep, DepState())
        if not met(condition, state):
            why = "" if state.exists else "; not deployed"
            out.append(f"{short_name(dep, stack)} ({condition}{why})")
    return out


def waiting_reason(
    depends_on: Mapping[str, str], states: Mapping[str, DepState], stack: str | None = None
) -> str:
    """ "waiting for db (healthy), cache (started)", or "" when every condition holds."""
    missing = unmet(depends_on, states, stack)
    return "waiting for " + ", ".join(missing) if missing else ""
