"""Stored records with fields of the right types: the leader's reads, and the API's.

`Record.from_json` takes a record's fields as the JSON holds them. A record written
around the API, by an old or hostile writer, with `"version": "three"`, a task's
`"slot": "1"` or a node's `"cpu": [1]`, parsed, and then failed every pass where the
leader sorted, compared or added those fields, so nothing at all was reconciled (or
tasks were written with the wrong types). The readers here refuse such a record as
`UnreadableRecord`, naming the field:

- `service`: also one stored under another service's key. The leader leaves that
  service alone; `shoal service apply`, `scale` and `rollback` refuse to build on it.
- `task`: also one whose service or slot is not its key's. The leader leaves the
  key's service alone for the pass (its slot must not look empty: that would start a
  duplicate replica).
- `node`, `nodespec`: also a node record under another node's key. The leader keeps
  the node's tasks where they are and places nothing new there (decision 85).
- `job`: a job's progress (`jobs/<name>`, and an earlier run's `jobruns/<name>/<tick>`),
  its index entries too. The leader leaves that job alone (no start, no stop, no count)
  until the record is rewritten or removed.
- `run`: a scheduled job's tick (`runs/<name>/<tick>`), also one of another job or tick.
  The leader leaves that job alone too (no tick decided: it might fire twice).
- `pending`: why a service's replicas wait (`pending/<name>`), also another service's.
  The leader, its only writer, writes it anew from its plan (decision 97).

Pure: no I/O.
"""

from __future__ import annotations

import math
import types
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from node.model.domain import (
    Assignment,
    NodeInfo,
    NodeSpec,
    PendingRecord,
    Record,
    ServiceRecord,
    UnreadableRecord,
)
from node.model.jobs import JobRecord
from node.model.runs import RunRecord

R = TypeVar("R", bound=Record)
_FIX = "rewrite the key with a valid record or remove it"


def service(name: str, raw: bytes) -> ServiceRecord:
    """The record stored under service `name`'s key; UnreadableRecord when it does not parse,
    does not check, has a field of the wrong type, or names another service."""
    record = ServiceRecord.from_json(raw)
    what = f"the stored record of service {name!r} cannot be read"
    _check(record, what, skip=("spec",))  # the spec is checked by its model
    if record.name != name:
        raise UnreadableRecord(f"{what}: it names service {record.name!r}; {_FIX}")
    return record


def task(service_name: str, slot: str, raw: bytes) -> Assignment:
    """The record stored under `tasks/<service_name>/<slot>`; UnreadableRecord when it does
    not parse, has a field of the wrong type (its handoff's too), or is another slot's."""
    what = f"the task record of {service_name}/{slot} cannot be read"
    record = _parse(Assignment, raw, what)
    _check(record, what)
    if record.handoff:
        _check(_parse(Assignment, record.handoff, f"{what}: its handoff"), f"{what}: its handoff")
    if (record.service, str(record.slot)) != (service_name, slot):
        raise UnreadableRecord(f"{what}: it names slot {record.service}/{record.slot}; {_FIX}")
    return record


def node(node_id: str, raw: bytes) -> NodeInfo:
    """The record stored under `nodes/<node_id>`; UnreadableRecord when it does not parse,
    has a field of the wrong type, or names another node."""
    what = f"the node record of {node_id} cannot be read"
    record = _parse(NodeInfo, raw, what)
    _check(record, what)
    if record.id != node_id:
        raise UnreadableRecord(f"{what}: it names node {record.id!r}; {_FIX}")
    return record


def nodespec(node_id: str, raw: bytes) -> NodeSpec:
    """The operator's settings stored under `nodespec/<node_id>`, checked alike."""
    what = f"the settings (nodespec) of node {node_id} cannot be read"
    record = _parse(NodeSpec, raw, what)
    _check(record, what)
    return record


# an index entry of a job record (`JobRecord.indexes`): its keys -> their types
_INDEX_ENTRY: dict[str, Any] = {
    "state": str,
    "attempts": int,
    "task": str,
    "node": str,
    "exit_code": int,
    "retry_at": float,
    "message": str,
}


def job(name: str, raw: bytes) -> JobRecord:
    """A job's progress stored under `jobs/<name>`; UnreadableRecord when it does not parse,
    has a field of the wrong type (an index entry's too), or names another job."""
    what = f"the job record of {name} cannot be read"
    record = _parse(JobRecord, raw, what)
    _check(record, what)
    for index, entry in record.indexes.items():
        if not index.isascii() or not index.isdigit():
            raise UnreadableRecord(f"{what}: index {index[:20]!r} is not a number; {_FIX}")
        for key, value in entry.items():
            if key in _INDEX_ENTRY and not _fits(value, _INDEX_ENTRY[key]):
                raise UnreadableRecord(
                    f"{what}: index {index} {key} should be {_word(_INDEX_ENTRY[key])}, "
                    f"not {str(value)[:80]!r}; {_FIX}"
                )
    if record.service != name:
        raise UnreadableRecord(f"{what}: it names job {str(record.service)[:80]!r}; {_FIX}")
    return record


def run(name: str, tick: str, raw: bytes) -> RunRecord:
    """A scheduled job's tick stored under `runs/<name>/<tick>`; UnreadableRecord when it does
    not parse, has a field of the wrong type, or is another job's or another tick's."""
    what = f"the run record {name}/{tick} cannot be read"
    if not tick.isascii() or not tick.isdigit():
        raise UnreadableRecord(f"{what}: its tick {tick[:20]!r} is not a number; remove the key")
    record = _parse(RunRecord, raw, what)
    _check(record, what)
    if not math.isfinite(record.tick) or record.lane < 0:
        raise UnreadableRecord(f"{what}: tick {record.tick!r}, lane {record.lane!r}; {_FIX}")
    if (record.service, int(record.tick)) != (name, int(tick)):
        raise UnreadableRecord(f"{what}: it names run {str(record.service)[:80]!r}/{record.tick:.0f}; {_FIX}")
    return record


def pending(name: str, raw: bytes) -> PendingRecord:
    """Why service `name`'s replicas wait, stored under `pending/<name>`; UnreadableRecord when
    it does not parse, has a field of the wrong type, or names another service."""
    what = f"the pending reason of service {name!r} cannot be read"
    record = _parse(PendingRecord, raw, what)
    _check(record, what)
    if record.service != name:
        raise UnreadableRecord(f"{what}: it names service {str(record.service)[:80]!r}; {_FIX}")
    return record


def _parse(cls: type[R], raw: bytes | dict[str, Any], what: str) -> R:
    try:
        if isinstance(raw, dict):  # a record held in another (a handoff): unknown keys ignored
            return cls(**{k: v for k, v in raw.items() if k in _hints(cls)})
        return cls.from_json(raw)
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object, a field missing
        raise UnreadableRecord(f"{what}: {str(exc)[:200]}; {_FIX}") from None


def _check(record: Record, what: str, skip: tuple[str, ...] = ()) -> None:
    for field, hint in _hints(type(record)).items():
        value = getattr(record, field)
        if field not in skip and not _fits(value, hint):
            raise UnreadableRecord(
                f"{what}: {field} should be {_word(hint)}, not {str(value)[:80]!r}; {_FIX}"
            )


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The declared field types of `cls`, resolved once."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls)
    return hints


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type `hint` names (bool is no number; an int is a float)."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is dict:
        return isinstance(value, dict) and all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()
        )
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        wanted: tuple[type, ...] = (int, float) if hint is float else (int,)
        return isinstance(value, wanted) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # a field no reader here checks (a service's spec: its model does)


def _word(hint: Any) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if hint in words:
        return words[hint]
    origin = get_origin(hint)
    return {dict: "a map", list: "a list"}.get(origin, str(hint))
