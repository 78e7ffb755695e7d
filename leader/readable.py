"""The service records the leader acts on: ones that parse, check, and hold the right types.

`ServiceRecord.from_json` checks the spec (pydantic) but takes the record's own fields
(`name`, `version`, `uid`, ...) as the JSON holds them. A record written around the API,
by an old or hostile writer, with `"version": "three"` or `"name": 5` parsed, and then
failed every pass where the leader sorts or compares those fields, so no service at all
was reconciled (or its tasks were written with the wrong types). `service` refuses such
a record, and one stored under another service's key, as `UnreadableRecord`: the leader
leaves that service alone and logs it, as it does a record that does not parse, and the
other services go on (`leader.loop`).

Pure: no I/O.
"""

from __future__ import annotations

from typing import get_type_hints

from node.model.domain import ServiceRecord, UnreadableRecord

# the record's own scalar fields (the spec is checked by its model) -> their JSON type
_SCALARS: dict[str, type] = {
    name: hint for name, hint in get_type_hints(ServiceRecord).items() if hint in (str, int, float)
}


def service(name: str, raw: bytes) -> ServiceRecord:
    """The record stored under service `name`'s key; UnreadableRecord when it does not parse,
    does not check, has a field of the wrong type, or names another service."""
    record = ServiceRecord.from_json(raw)
    for field, hint in _SCALARS.items():
        value = getattr(record, field)
        wanted: tuple[type, ...] = (int, float) if hint is float else (hint,)
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise UnreadableRecord(
                f"the stored record of service {name!r} cannot be read: {field} should be "
                f"{_WORDS[hint]}, not {value!r}; rewrite the key with a valid record or remove it"
            )
    if record.name != name:
        raise UnreadableRecord(
            f"the stored record of service {name!r} cannot be read: it names service "
            f"{record.name!r}; rewrite the key with a valid record or remove it"
        )
    return record


_WORDS = {str: "a string", int: "an integer", float: "a number"}
