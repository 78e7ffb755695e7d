"""How big a Compose file is with its YAML aliases expanded, checked before it is translated.

ruamel keeps an alias as one more reference to the anchored node, so a 1 KiB file of
nested aliases (`a1: &a1 [*a0, *a0, ...]`, nine levels: "billion laughs") stands for
10^9 values. The translator turns values into text (`str()` of a list) and the spec check
walks them, each in the time and memory of the expansion: the CLI hung, then ran out of
memory. `too_big` counts values and characters with every use of an alias counted, in
time linear in the file (each node's totals are computed once, by identity), and says
which limit is passed. The limits are far above what a file without aliases can hold
(`node.model.spec.MAX_SPEC_BYTES`, 256 KiB) and what shoal sends of it (at most 30
services of 10,000 values each).

Pure: no grpc, docker or etcd.
"""

from __future__ import annotations

from typing import Any

MAX_VALUES = 300_000  # keys, scalars, mappings and lists, each alias use counted
MAX_TEXT = 8 * 2**20  # characters of strings, keys too, each alias use counted
MAX_DEPTH = 64  # mappings and lists within each other (the loader stops near 100)


def too_big(data: Any) -> str | None:
    """What is too big in `data` (ruamel's objects), or None."""
    memo: dict[int, tuple[int, int]] = {}

    def size(node: Any, depth: int) -> tuple[int, int]:
        if isinstance(node, str):
            return 1, len(node)
        if not isinstance(node, dict | list):
            return 1, 0
        if (known := memo.get(id(node))) is not None:
            return known
        if depth > MAX_DEPTH:
            raise _Deep
        values, text = 1, 0
        for item in [*node.keys(), *node.values()] if isinstance(node, dict) else node:
            v, t = size(item, depth + 1)
            values, text = values + v, text + t
        memo[id(node)] = (values, text)
        return values, text

    try:
        values, text = size(data, 0)
    except _Deep:
        return f"nested more than {MAX_DEPTH} levels deep"
    what = "(an alias counts each time it is used)"
    if values > MAX_VALUES:
        return f"too big: {values} values with its aliases expanded, the limit is {MAX_VALUES} {what}"
    if text > MAX_TEXT:
        return f"too big: {text} characters with its aliases expanded, the limit is {MAX_TEXT} {what}"
    return None


class _Deep(Exception):
    pass
