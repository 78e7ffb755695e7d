"""What one service asks of a node, read once per pass from its stored spec.

CPU is counted in integer millicores and memory in bytes, so that sums are exact and
"never overcommit" is a comparison of integers: a reservation is rounded up to the next
millicore, a node's capacity down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from node.model.constraints import Constraint, ConstraintError, parse_constraint, parse_label_attribute
from node.model.spec import ServiceSpec
from node.model.spec_launch import DEDICATED_LABEL, dedicated_pool

UNLIMITED = 1 << 62
SPREAD, BINPACK = "spread", "binpack"
STRATEGIES = (SPREAD, BINPACK)


def reservation_millicores(cpu: float) -> int:
    return math.ceil(round(cpu * 1000, 6)) if cpu > 0 else 0


def capacity_millicores(cpu: float) -> int:
    return math.floor(round(cpu * 1000, 6)) if cpu > 0 else 0


@lru_cache(maxsize=4096)
def _constraint(text: str) -> Constraint:
    return parse_constraint(text)


@dataclass(frozen=True)
class NotDedicated(Constraint):
    """The node is dedicated to no service (it has no `shoal.dedicated` label): every service
    but a dedicated one has it, so nothing else lands on a dedicated node (decision 68)."""

    def matches(self, node_id: str, labels: Mapping[str, str]) -> bool:
        return self.label not in labels

    def __str__(self) -> str:
        return "launch: dedicated (the node runs one task of another service)"


NOT_DEDICATED = NotDedicated(DEDICATED_LABEL, False, "*")


@dataclass(frozen=True)
class Requirements:
    cpu: int  # millicores reserved per replica
    memory: int  # bytes reserved per replica
    constraints: tuple[Constraint, ...]
    spread: str | None  # label key whose values replicas are spread evenly over
    max_per_node: int  # UNLIMITED when not set
    strategy: str  # spread | binpack
    global_mode: bool
    invalid: str = ""  # a stored spec the scheduler cannot read (never accepted by apply)
    dedicated: str | None = None  # launch: dedicated: the pool named ("" any); None: not dedicated


def requirements(spec: ServiceSpec, default_strategy: str = SPREAD) -> Requirements:
    resources = spec.resources
    placement = spec.placement
    cpu = reservation_millicores((resources.cpu if resources else None) or 0.0)
    memory = (resources.memory if resources else None) or 0
    invalid = ""
    constraints: list[Constraint] = []
    spread = None
    try:
        constraints = [_constraint(c) for c in (placement.constraints if placement else ())]
        if placement is not None and placement.spread:
            spread = parse_label_attribute(placement.spread)
    except ConstraintError as exc:
        invalid = f"the stored placement cannot be read: {exc}"
    strategy = (placement.strategy if placement else None) or default_strategy
    max_per_node = (placement.max_per_node if placement else None) or UNLIMITED
    dedicated = dedicated_pool(spec)
    if dedicated is None:
        constraints.append(NOT_DEDICATED)
    else:  # only on the nodes started for it, one replica each
        constraints.append(Constraint(DEDICATED_LABEL, True, spec.name))
        max_per_node = 1
    return Requirements(
        cpu=cpu,
        memory=memory,
        constraints=tuple(constraints),
        spread=spread,
        max_per_node=max_per_node,
        strategy=strategy if strategy in STRATEGIES else SPREAD,
        global_mode=spec.mode == "global",
        invalid=invalid,
        dedicated=dedicated,
    )
