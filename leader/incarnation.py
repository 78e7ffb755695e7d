"""Which assignments belong to an earlier incarnation of their service. Pure.

A service removed and applied again under the same name is a new incarnation with a uid
of its own (`ServiceRecord.uid`, set at create); its versions start at 1 again, so a
name and a version do not tell the two apart. An assignment keeps the uid of the
service it was made for: one that differs from its service's current uid is stale.
"""

from __future__ import annotations

from collections.abc import Mapping

from node.model.domain import Assignment, ServiceRecord


def stale_incarnation(
    services: Mapping[str, ServiceRecord], tasks: Mapping[tuple[str, int], Assignment]
) -> dict[tuple[str, int], Assignment]:
    """Tasks assigned for another incarnation of their service (`ServiceRecord.uid`): the
    service was removed and applied again before its old tasks were unassigned. They are
    never kept, updated or handed off from; their slots are placed anew from the new spec.
    (Tasks and services written before uids both have uid "", so they still match.)"""
    out = {}
    for key, task in tasks.items():
        record = services.get(task.service)
        if record is not None and task.uid != record.uid:
            out[key] = task
    return out
