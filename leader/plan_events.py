"""The events a leader pass emits for its plans: one per placed or unassigned task, or
one summary per service when a plan moves many (split from `leader.loop`).

Pure: imports no grpc, docker or etcd.
"""

from collections.abc import Callable
from typing import Any

from leader.scheduler import Plan

Emit = Callable[..., Any]  # node.telemetry.events.EventLog.emit: (kind, message, **labels)


def plan_events(emit: Emit, plans: list[Plan], detail: int = 20) -> None:
    """An event per placed or unassigned task; one summary per service beyond `detail`."""
    for plan in plans:
        if len(plan.place) + len(plan.stop) > detail:
            nodes = len({t.node for t in plan.place})
            emit(
                "service.planned",
                f"{plan.service}: {len(plan.place)} task(s) placed on {nodes} node(s), "
                f"{len(plan.stop)} unassigned, {len(plan.moves)} replacing another",
                service=plan.service,
            )
            continue
        moved = {m.new.task_id: m for m in plan.moves}
        for task in plan.place:
            move = moved.get(task.task_id)
            why = f", replacing {move.old.task_id} on {move.old.node} ({move.why})" if move else ""
            emit(
                "task.placed",
                f"{task.service}.{task.slot} ({task.task_id}) placed on {task.node}{why}",
                service=task.service,
                task=task.task_id,
            )
        for task in plan.stop:
            emit(
                "task.unassigned",
                f"{task.service}.{task.slot} ({task.task_id}) unassigned from {task.node}",
                service=task.service,
                task=task.task_id,
            )
