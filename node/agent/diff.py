"""The agent's pure core: assigned tasks vs containers found, into named buckets.

Level-triggered and idempotent: the same inputs always give the same actions, and
running the actions moves the node towards "exactly one running container per
assigned task, and nothing else running". Containers are matched to tasks by the task
label alone, which is what lets a restarted agent re-adopt its containers.

An exited container that is no task's current one (unassigned, or an older container of
a task that has a newer one) is `retired`: history, kept or removed by
`node.agent.history` (decision 71), never stopped or started again. A task's newest
container, when exited, is `replace`: the agent decides its restart. A paused (or
restarting) container is live (`Container.live`): kept, or stopped, never `replace`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from node.model.domain import Assignment, Desired
from node.runtime.base import LABELS, Container


@dataclass
class Actions:
    start: list[Assignment] = field(default_factory=list)  # no container yet
    keep: list[tuple[Assignment, Container]] = field(default_factory=list)  # live as assigned
    replace: list[tuple[Assignment, Container]] = field(default_factory=list)  # exited: remove, start anew
    stop: list[Container] = field(default_factory=list)  # running, not assigned (any more), or a duplicate
    retired: list[Container] = field(default_factory=list)  # exited, no task's current one (history)
    held: frozenset[str] = frozenset()  # not to start, from `replace` either (cut off, disconnect)

    @property
    def idle(self) -> bool:
        return not (self.start or self.replace or self.stop)


def _rank(c: Container) -> tuple[bool, bool, str]:
    """The container to keep among several for one task: running first, live, then newest."""
    return (c.running, c.live, c.started_at)


def diff(assigned: Mapping[str, Assignment], containers: Sequence[Container]) -> Actions:
    actions = Actions()
    by_task: dict[str, list[Container]] = {}
    for c in containers:
        label = c.labels.get(LABELS.TASK, "")
        match = assigned.get(label)
        if match is None or match.desired != Desired.RUNNING:
            (actions.stop if c.live else actions.retired).append(c)
        else:
            by_task.setdefault(label, []).append(c)
    for task_id in sorted(assigned):
        wanted = assigned[task_id]
        if wanted.desired != Desired.RUNNING:
            continue
        found = sorted(by_task.get(task_id, []), key=_rank, reverse=True)
        if not found:
            actions.start.append(wanted)
            continue
        primary, extras = found[0], found[1:]
        actions.stop.extend(c for c in extras if c.live)
        actions.retired.extend(c for c in extras if not c.live)
        if primary.live:
            actions.keep.append((wanted, primary))
        else:
            actions.replace.append((wanted, primary))
    return actions
