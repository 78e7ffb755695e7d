"""A write's size: a spec whose YAML aliases expand past what etcd takes in one request
is refused when parsed, and a write etcd would refuse for its size is INVALID_ARGUMENT
naming the service, never a "try again"."""

from __future__ import annotations

import pytest

from node.api.services import ServiceWriter
from node.model.errors import InvalidArgument
from node.model.keys import Keys
from node.store.memory import MemoryStore

KEYS = Keys()


def aliased(value: str, uses: int) -> str:
    """A spec with one env value used `uses` times more through a YAML alias."""
    lines = ["name: web", "image: shoal-demo/web:1", "env:", f"  V0: &big {value}"]
    return "\n".join([*lines, *(f"  V{i}: *big" for i in range(1, uses + 1))]) + "\n"


async def test_a_spec_whose_aliases_expand_past_the_limit_is_refused_with_nothing_written() -> None:
    """Before, a 253 KB spec of aliases expanded to 63 MB of env values and a 121 MiB
    transaction, which etcd refused and the API answered as "unavailable, try again"."""
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    before = store.revision
    with pytest.raises(InvalidArgument, match=r"too big: at most .* characters of text"):
        await writer.apply(aliased("x" * 250_000, 254), "web.yaml")
    assert store.revision == before


async def test_a_record_too_large_for_etcd_is_invalid_argument_naming_the_service() -> None:
    """Before, a spec under the parse limits whose stored record (twice: the service and its
    history) is more than etcd takes failed as a store refusal: "try again". Non-ASCII text
    is six bytes a character in the stored JSON, so 300,000 characters are 1.8 MB a copy."""
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    before = store.revision
    with pytest.raises(InvalidArgument, match=r"web: the write is [\d,]+ bytes, [\d,]+ more than etcd"):
        await writer.apply(aliased("é" * 100_000, 2), "web.yaml")
    assert store.revision == before
