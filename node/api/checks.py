"""Checks of the names a request carries, before they reach a key or an answer: a name
that cannot be one gets INVALID_ARGUMENT saying what one looks like, and is echoed at
most 80 characters long (a 4 MB name came back whole in a NOT_FOUND, past what gRPC's
metadata carries). Pure."""

from __future__ import annotations

import re

from node.model.errors import InvalidArgument
from node.model.spec_lifecycle import SERVICE_NAME_PATTERN

_NAME = re.compile(SERVICE_NAME_PATTERN)  # <stack>_<service> too
_TASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str, what: str = "name") -> str:
    if not name or len(name) > 63 or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{what}: {name[:80]!r} is not a service name (1-63 of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit; <stack>_<service> in a stack)"
        )
    return name


def check_task_id(task_id: str, what: str = "task") -> str:
    """A task id, or the start of one (`shoal service ps` lists them)."""
    if not _TASK.fullmatch(task_id):
        raise InvalidArgument(
            f"{what}: {task_id[:80]!r} is not a task id (letters, digits, '.', '_' and '-', at most 64)"
        )
    return task_id
