"""Operator settings of a node from the client API: drain, pause, activate, labels.

They go to `nodespec/<node>` (`NodeSpec`), not to the node's own registry entry
(`nodes/<node>`, rewritten by the node from its config on every start, on its lease):
an operator's drain survives the node's restarts and outages (decisions 19). The
leader mirrors the prefix and acts on it at its next pass.

Guarantees, as for services: the request is checked before anything is written (a bad
availability or label is INVALID_ARGUMENT naming the field), a node the cluster does
not know is NOT_FOUND, and every write is a compare-and-swap on the key's mod
revision, so two operators labelling the same node at once never lose an update.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from node.model.config import NODE_ID
from node.model.constraints import LABEL_KEY
from node.model.domain import Availability, NodeInfo, NodeSpec, effective_labels
from node.model.errors import InvalidArgument, NotFound
from node.model.keys import Keys
from node.store import Compare, Put, Store
from node.store.retry import compare_and_swap

MAX_LABELS = 64
MAX_VALUE = 255


def check_node(node: str) -> str:
    if not NODE_ID.fullmatch(node):
        raise InvalidArgument(f"node: {node[:80]!r} is not a node id (1-63 of a-z, 0-9 and '-')")
    return node


def check_availability(text: str) -> str:
    allowed = [a.value for a in Availability]
    if text not in allowed:
        raise InvalidArgument(f"availability: {text[:40]!r} is not one of {', '.join(allowed)}")
    return text


def check_labels(set_: Mapping[str, str], remove: Sequence[str]) -> None:
    """Keys as node labels allow (what `node.labels.<key>` constraints can name); values
    printable, at most 255 characters, no spaces at either end (a constraint's value is
    trimmed, so such a value could never match)."""
    if not set_ and not remove:
        raise InvalidArgument("labels: nothing to set or remove (give key=value or key-)")
    if len(set_) + len(remove) > MAX_LABELS:
        raise InvalidArgument(f"labels: at most {MAX_LABELS} changes at once")
    for key in [*set_, *remove]:
        if not LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"labels: {key[:80]!r} is not a label key (1-63 of letters, digits, '.', '_', '-', "
                "starting and ending with a letter or digit)"
            )
    for key, value in set_.items():
        if len(value) > MAX_VALUE:
            raise InvalidArgument(f"labels.{key}: longer than {MAX_VALUE} characters")
        if value != value.strip() or not value.isprintable():
            raise InvalidArgument(
                f"labels.{key}: {value[:80]!r} must be printable, without spaces at either end"
            )
    both = set(set_) & set(remove)
    if both:
        raise InvalidArgument(f"labels.{sorted(both)[0]}: both set and removed; do one or the other")


class NodeSpecWriter:
    def __init__(self, store: Store, keys: Keys, node: str) -> None:
        self.store, self.keys, self.node = store, keys, node

    async def _known(self, node: str) -> NodeInfo | None:
        """The node's registry entry (None when it is down but has settings); NotFound when
        the cluster knows nothing of it."""
        kv = await self.store.get(self.keys.node(node))
        if kv is not None:
            return NodeInfo.from_json(kv.value)
        if await self.store.get(self.keys.nodespec(node)) is None:
            raise NotFound(f"node '{node[:80]}' not found; `shoal node ls` lists the nodes")
        return None

    async def _update(
        self, node: str, change: Callable[[NodeSpec], NodeSpec]
    ) -> tuple[NodeSpec, dict[str, str], bool]:
        """Apply `change` to the node's settings and write the result, unless it changes nothing.
        Returns the settings now in force, the labels constraints see, and whether it wrote."""
        info = await self._known(node) or NodeInfo(node, "", 0)
        key = self.keys.nodespec(node)

        async def attempt() -> tuple[NodeSpec, dict[str, str], bool] | None:
            kv = await self.store.get(key)
            current = NodeSpec.from_json(kv.value) if kv is not None else NodeSpec()
            wanted = change(current)
            if (current.availability, current.labels) == (wanted.availability, wanted.labels):
                return current, effective_labels(info, current), False
            record = replace(wanted, updated_at=time.time(), updated_by=self.node)
            result = await self.store.txn(
                [Compare(key, "mod", "==", kv.mod_revision if kv is not None else 0)],
                [Put(key, record.to_json())],
            )
            return (record, effective_labels(info, record), True) if result.succeeded else None

        return await compare_and_swap(attempt, f"node '{node}' is being changed concurrently; try again")

    async def set_availability(self, node: str, availability: str) -> tuple[NodeSpec, dict[str, str], bool]:
        check_availability(availability)
        return await self._update(node, lambda current: replace(current, availability=availability))

    async def label(
        self, node: str, set_: Mapping[str, str], remove: Sequence[str]
    ) -> tuple[NodeSpec, dict[str, str], bool]:
        """Set `set_` and remove `remove` (a removed key overlays None: it is gone even when it
        is one of the node's own labels, `node.model.domain.effective_labels`)."""
        check_labels(set_, remove)

        def change(current: NodeSpec) -> NodeSpec:
            labels: dict[str, str | None] = {**current.labels, **set_}
            labels.update(dict.fromkeys(remove))
            return replace(current, labels=labels)

        return await self._update(node, change)
