"""`launch: dedicated` (issue 15 item 3, decision 68): each task gets a node of its own.

    launch: dedicated                      # a node from the first pool (by name) with room
    launch: {dedicated: {pool: burst}}     # a node from this pool only

Fargate's model on a node pool (`node.model.pools`): every replica of the service runs
alone on a node the pool's provider starts for it, sized to the replica's reservation
rounded UP to the first entry of `SIZES` (Fargate's table of vCPU and memory
combinations) that holds it; nothing else is placed on that node and the replica goes
nowhere else; when the replica goes, its node is given back at once.

The node carries the label `shoal.dedicated=<service>`: the scheduler reads it as a
constraint (`leader.placement.requirements`), the pool keeper as the node's owner.

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

DEDICATED_LABEL = "shoal.dedicated"  # on a dedicated node: the service it is for
GiB = 2**30
POOL_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?")  # as node.model.pools
_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


def _gib(*values: float) -> tuple[int, ...]:
    return tuple(int(v * GiB) for v in values)


# (vCPU, the memory sizes that go with it in bytes), smallest first: Fargate's Linux table.
TABLE: tuple[tuple[float, tuple[int, ...]], ...] = (
    (0.25, _gib(0.5, 1, 2)),
    (0.5, _gib(1, 2, 3, 4)),
    (1.0, _gib(*range(2, 9))),
    (2.0, _gib(*range(4, 17))),
    (4.0, _gib(*range(8, 31))),
    (8.0, _gib(*range(16, 61, 4))),
    (16.0, _gib(*range(32, 121, 8))),
)
SIZES: tuple[tuple[float, int], ...] = tuple((cpu, mem) for cpu, mems in TABLE for mem in mems)
LARGEST = SIZES[-1]


def size_for(cpu: float, memory: int) -> tuple[float, int] | None:
    """The smallest size (vCPU, bytes) holding `cpu` cores and `memory` bytes (0: none asked),
    the fewest vCPU first, then the least memory; None when even the largest is too small."""
    for size_cpu, size_mem in SIZES:
        if size_cpu + 1e-9 >= cpu and size_mem >= memory:
            return size_cpu, size_mem
    return None


def describe(size: tuple[float, int]) -> str:
    return f"{size[0]:g} vCPU {size[1] / GiB:g} GiB"


def _fail(message: str, at: tuple[Any, ...] = ()) -> PydanticCustomError:
    return PydanticCustomError("spec", "{msg}", {"msg": message, "at": at})


def _pool_name(v: str) -> str:
    if not POOL_NAME.fullmatch(v):
        raise _fail(f"must be a pool name (`shoal pool ls`: 1-24 of a-z, 0-9, '-'), got {v[:40]!r}")
    return v


class Dedicated(BaseModel):
    model_config = _STRICT
    pool: Annotated[str, AfterValidator(_pool_name)] | None = None  # None: the first pool with room


def _shorthand(v: Any) -> Any:
    if v == "dedicated":
        return {"dedicated": {}}
    if isinstance(v, str):
        raise _fail(f"must be 'dedicated' or {{dedicated: {{pool: NAME}}}}, got {v[:40]!r}")
    return v


class LaunchSpec(BaseModel):
    model_config = _STRICT
    dedicated: Dedicated  # the only launch type so far


Launch = Annotated[LaunchSpec, BeforeValidator(_shorthand)]


def dedicated_pool(spec: Any) -> str | None:
    """ "" for a dedicated service in any pool, the pool's name when it names one, None when
    the service is not dedicated."""
    launch: LaunchSpec | None = getattr(spec, "launch", None)
    if launch is None:
        return None
    return launch.dedicated.pool or ""


def dedicated_size(spec: Any) -> tuple[float, int] | None:
    """The node size of one replica of a dedicated service (None: not dedicated, or too big)."""
    if dedicated_pool(spec) is None:
        return None
    res = spec.resources
    return size_for((res.cpu if res else None) or 0.0, (res.memory if res else None) or 0)


def launch_fits(spec: Any) -> Any:
    """`ServiceSpec`'s rule for `launch`: a replicated service, without volumes (its node
    and their data go with the task), not a job, and no larger than the largest size."""
    if spec.launch is None:
        return spec
    if spec.mode == "global":
        raise _fail("dedicated runs a replicated service (a node per replica), not mode: global", ("launch",))
    if spec.kind == "job":
        raise _fail("dedicated is for services, not kind: job", ("launch",))
    if spec.volumes:
        raise _fail(
            "dedicated nodes are given back with their task: volumes would lose their data; "
            "remove volumes or launch",
            ("launch",),
        )
    if dedicated_size(spec) is None:
        raise _fail(
            f"resources are larger than the largest dedicated size ({describe(LARGEST)}); "
            "lower resources.cpu or resources.memory",
            ("launch",),
        )
    return spec
