"""`on_disconnect`: when a node cut off from etcd stops a service's replicas. Pure.

A node knows when etcd last answered one of its lease renewals (`Session.answered`,
monotonic seconds). etcd cannot have extended the lease past that answer, so the lease
has certainly expired `ttl` seconds later: from then on the leader may have placed the
node's tasks elsewhere. `cut_off_for` is how long ago that was (<= 0: the lease may
still be alive). A service whose spec says `on_disconnect: {stop_after: S}` has its
replicas stopped, and none started, on a node cut off for more than S (`hold_back`);
others keep running (the default, as in Swarm: an etcd outage alone never stops
anything). Once etcd answers again the cut-off ends and the agent reconciles as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from node.agent.diff import Actions
from node.model.domain import Assignment
from node.model.spec import ServiceSpec
from node.runtime.base import Container


def stop_after(spec: ServiceSpec) -> float | None:
    """The spec's `on_disconnect.stop_after` in seconds; None when it has none."""
    return spec.on_disconnect.stop_after if spec.on_disconnect is not None else None


def cut_off_for(answered: float, ttl: float, now: float) -> float:
    """Seconds since the node's lease certainly expired in etcd (<= 0: not certain yet)."""
    return now - (answered + ttl)


def due(spec: ServiceSpec, cut_off: float) -> bool:
    """Whether a replica of `spec` must be stopped on a node cut off for `cut_off` s."""
    bound = stop_after(spec)
    return bound is not None and cut_off > bound


def hold_back(
    actions: Actions, specs: Mapping[str, ServiceSpec], cut_off: float
) -> tuple[Actions, list[tuple[Assignment, Container, str]]]:
    """`actions` without the tasks whose service stops on a node cut off for `cut_off` s,
    and the running replicas to stop, with why. `specs`: task id -> spec; a task whose
    spec is not there is left as it is. An exited one stays in `replace`, its exit decided,
    but is `held`: not restarted (a kept container, history, would be its current one
    after the stop, and was restarted, stopped, restarted while cut off)."""
    gone = {t for t, spec in specs.items() if due(spec, cut_off)}
    stops = []
    for task, c in actions.keep:
        if task.task_id in gone:
            bound = stop_after(specs[task.task_id])
            why = f"cut off from etcd, lease expired {cut_off:.0f}s ago (on_disconnect.stop_after {bound:g}s)"
            stops.append((task, c, why))
    kept = replace(
        actions,
        keep=[(t, c) for t, c in actions.keep if t.task_id not in gone],
        start=[t for t in actions.start if t.task_id not in gone],
        held=actions.held | gone,
    )
    return kept, stops
