"""What must always hold of the agent's per-task state (`node.agent.machine.Slots`). Pure.

`validate(slots)` raises `InvariantError` naming every broken rule. The unit tests
call it at the teardown of every test that made an agent (tests/unit/conftest.py), the
machine's property tests after every event, and the agent after every pass when
`SHOAL_AGENT_VALIDATE=1` (as dask's `validate_state`). The rules:

- a slot is known by its task's id, for a task of this node the last sweep kept: no
  state for a task the agent no longer owns;
- a slot holds a container exactly in a live phase (running, unhealthy, stopping),
  labelled with its own task; no container is held by two slots;
- a routable slot is running, on a running container, with a start-of-routability time;
- its status is its own task's, on this node; a terminal status only when the restart
  policy gave up; it never shows more restarts than were made;
- restart history and back-off never negative: restarts, streaks, failed starts and the
  earliest start time; the recent restart times in order.
"""

from __future__ import annotations

from node.agent.machine import LIVE, Phase, Slots
from node.runtime.base import LABELS


class InvariantError(AssertionError):
    pass


def problems(slots: Slots) -> list[str]:
    out: list[str] = []
    holders: dict[str, str] = {}
    for tid, s in slots.slots.items():
        at = f"task {tid}"
        if s.task.task_id != tid:
            out.append(f"{at}: slot holds task {s.task.task_id}")
        if s.task.node != slots.node:
            out.append(f"{at}: assigned to {s.task.node}, not this node {slots.node}")
        if tid not in slots.owned:
            out.append(f"{at}: state kept for a task no longer owned")
        c = s.container
        if (c is not None) != (s.phase in LIVE):
            out.append(f"{at}: phase {s.phase} with container {c.id if c else None}")
        if c is not None:
            if c.labels.get(LABELS.TASK, tid) != tid:
                out.append(f"{at}: holds container {c.id} of task {c.labels[LABELS.TASK]}")
            if c.id in holders:
                out.append(f"{at}: container {c.id} also held by task {holders[c.id]}")
            holders[c.id] = tid
        if s.routable and (s.phase != Phase.RUNNING or c is None or not c.running):
            out.append(f"{at}: routable in phase {s.phase} without a running container")
        if s.routable_since < 0:
            out.append(f"{at}: routable since {s.routable_since}")
        rs = s.restart
        if min(rs.restarts, rs.streak, rs.failed_starts) < 0 or rs.next_at < 0:
            out.append(f"{at}: negative restart history or back-off {rs}")
        if list(rs.times) != sorted(rs.times):
            out.append(f"{at}: restart times out of order {rs.times}")
        st = s.status
        if st is not None:
            if (st.task_id, st.node) != (tid, slots.node):
                out.append(f"{at}: status of task {st.task_id} on {st.node}")
            if st.terminal and not rs.terminal:
                out.append(f"{at}: terminal status while the restart policy has not given up")
            if st.restarts > rs.restarts:
                out.append(f"{at}: status shows {st.restarts} restarts, {rs.restarts} made")
    if slots.next_start is not None and slots.next_start < 0:
        out.append(f"next start at {slots.next_start}")
    if slots.gaps < 0:
        out.append(f"engine gaps {slots.gaps}")
    return out


def validate(slots: Slots) -> None:
    """Raise InvariantError listing every rule the state breaks."""
    broken = problems(slots)
    if broken:
        raise InvariantError("agent state invalid:\n  " + "\n  ".join(broken))
